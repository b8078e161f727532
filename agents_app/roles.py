"""Roles are Groups with permissions, created after every migrate so a fresh database has them.

player: rates replies and votes between two. modder: also creates personas and uploads adapters.
moderator: also approves adapters and reviews exchanges, flags and training runs.
"""

from __future__ import annotations

PLAYER, MODDER, MODERATOR = "player", "modder", "moderator"

_PLAYER_PERMS = [
    "add_rating",
    "change_rating",
    "add_pairwisevote",
    "change_pairwisevote",
    "add_correction",
    "change_correction",
]
_MODDER_PERMS = [*_PLAYER_PERMS, "add_persona", "change_persona", "add_adapterversion"]
_MODERATOR_PERMS = [
    *_MODDER_PERMS,
    "change_adapterversion",
    "view_adapterversion",
    "change_exchange",
    "view_exchange",
    "change_policyflag",
    "view_policyflag",
    "view_trainingrun",
    "change_npc",
    "view_npc",
    "view_persona",
    "view_personashare",
    "view_gameserver",
    # the policy's settings and the policy-audit queue (agents_app.admin.PolicyFlagAdmin)
    "add_policyrule",
    "change_policyrule",
    "view_policyrule",
    "add_protectedarea",
    "change_protectedarea",
    "delete_protectedarea",
    "view_protectedarea",
    # raters marked as spammers (their ratings stay out of training): agents_app.admin.RaterBlockAdmin
    "add_raterblock",
    "change_raterblock",
    "delete_raterblock",
    "view_raterblock",
    # players asking for the modder role from their profile: agents_app.admin.ModderRequestAdmin
    "change_modderrequest",
    "view_modderrequest",
    # corrections (moderated like ratings) and arena battles: agents_app.admin
    "view_correction",
    "view_battle",
]
ROLE_PERMISSIONS = {PLAYER: _PLAYER_PERMS, MODDER: _MODDER_PERMS, MODERATOR: _MODERATOR_PERMS}

# What a role lets a user do, asked by permission so a superuser passes too.
CAN_UPLOAD = "agents_app.add_adapterversion"
CAN_APPROVE = "agents_app.change_adapterversion"
CAN_CREATE_PERSONA = "agents_app.add_persona"
CAN_MODERATE = "agents_app.view_trainingrun"


def ensure_roles(**_kwargs) -> None:
    """Create the role groups and give them exactly their permissions (idempotent)."""
    from django.contrib.auth.models import Group, Permission

    wanted = {codename for perms in ROLE_PERMISSIONS.values() for codename in perms}
    by_codename = {
        p.codename: p for p in Permission.objects.filter(content_type__app_label="agents_app", codename__in=wanted)
    }
    if len(by_codename) < len(wanted):
        return  # agents_app's permissions are not created yet; the next post_migrate will do it
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.set([by_codename[c] for c in codenames])


def role_names(user) -> list[str]:
    if not user.is_authenticated:
        return []
    return sorted(user.groups.values_list("name", flat=True))
