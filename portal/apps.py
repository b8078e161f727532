from django.apps import AppConfig
from django.db.models.signals import post_migrate


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Community portal"

    def ready(self) -> None:
        from portal import checks  # noqa: F401  (registers the system checks)
        from portal.roles import ensure_roles

        # After every app's migrate (agents_app's permissions exist only once it has migrated).
        post_migrate.connect(ensure_roles, dispatch_uid="portal.ensure_roles")
