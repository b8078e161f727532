from django.apps import AppConfig


class AgentsAppConfig(AppConfig):
    name = "agents_app"
    verbose_name = "NPCs and personas"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_migrate, post_save, pre_save

        from agents_app import gateway, policy
        from agents_app.models import GameServer, PolicyRule
        from agents_app.roles import ensure_roles

        # After every app's migrate (agents_app's permissions exist only once it has migrated).
        post_migrate.connect(ensure_roles, dispatch_uid="voyager-ensure-roles")
        post_save.connect(policy.forget_rules, sender=PolicyRule, dispatch_uid="voyager-forget-rules-save")
        post_delete.connect(policy.forget_rules, sender=PolicyRule, dispatch_uid="voyager-forget-rules-delete")
        # A new token, a revoked or a deleted server: its open gateway connections close (4401).
        pre_save.connect(gateway._token_before, sender=GameServer, dispatch_uid="voyager-token-before")
        post_save.connect(gateway._token_changed, sender=GameServer, dispatch_uid="voyager-token-changed")
        post_delete.connect(gateway._token_changed, sender=GameServer, dispatch_uid="voyager-server-deleted")
