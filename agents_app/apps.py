from django.apps import AppConfig


class AgentsAppConfig(AppConfig):
    name = "agents_app"
    verbose_name = "NPCs and personas"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from agents_app import policy
        from agents_app.models import PolicyRule

        post_save.connect(policy.forget_rules, sender=PolicyRule, dispatch_uid="voyager-forget-rules-save")
        post_delete.connect(policy.forget_rules, sender=PolicyRule, dispatch_uid="voyager-forget-rules-delete")
