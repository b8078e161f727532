from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Community portal"

    def ready(self) -> None:
        from portal import checks, pending_votes  # noqa: F401  (register the system checks, the login hook)
