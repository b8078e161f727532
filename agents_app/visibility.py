"""Who may use a persona: the one rule, for game servers and for people.

A public persona serves every game server, and everyone sees it on the portal. A private one
serves its owner's game servers and the servers its owner shares it with (``PersonaShare``); on
the portal only its owner and moderators see it (a share lets a server use it, nobody see it).

Each rule is a filter (a ``Q``) so that it joins the query that reads the persona: the gateway's
read of an NPC stays one query with the rule in it. ``via`` reaches the persona from another
model, e.g. ``"persona__"`` from an NPC or an exchange.
"""

from __future__ import annotations

from django.db.models import Exists, OuterRef, Q

from agents_app.models import GameServer, PersonaShare
from agents_app.roles import CAN_MODERATE


def usable_by_server(server: GameServer, *, via: str = "") -> Q:
    """The personas ``server`` may use: public ones, its owner's, and those shared with it."""
    shared = Exists(PersonaShare.objects.filter(persona=OuterRef(via.removesuffix("__") or "pk"), game_server=server))
    return Q(**{f"{via}is_public": True}) | Q(**{f"{via}owner_id": server.owner_id}) | Q(shared)


def visible_to_user(user, *, via: str = "") -> Q:
    """The personas ``user`` may see and talk to in the playground: public ones, their own, every one
    for a moderator."""
    if user is None or not user.is_authenticated:
        return Q(**{f"{via}is_public": True})
    if user.has_perm(CAN_MODERATE):
        return Q()
    return Q(**{f"{via}is_public": True}) | Q(**{f"{via}owner": user})


def usable_by(*, server: GameServer | None = None, user=None, via: str = "") -> Q:
    """The personas an ask may name: a game server's (``usable_by_server``), or, for an NPC of no
    server (the playground), the person's (``visible_to_user``). One of the two must be given."""
    if server is not None:
        return usable_by_server(server, via=via)
    if user is not None:
        return visible_to_user(user, via=via)
    raise TypeError("usable_by: name the game server or the person who asks")
