"""What an NPC may do in the world. Every action passes here before the mod sees it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ACTION_NOT_ALLOWED = "action_not_allowed"


@dataclass(frozen=True)
class Verdict:
    allowed: list[dict[str, Any]]
    blocked: list[dict[str, Any]]  # each {name, args, rule}


def check_actions(persona, actions: list[dict[str, Any]]) -> Verdict:
    """Split the model's actions into those that may run and those a rule stopped."""
    allowlist = set(persona.allowed_actions or [])
    allowed, blocked = [], []
    for action in actions:
        name, args = action.get("name", ""), list(action.get("args", []))
        if name in allowlist:
            allowed.append({"name": name, "args": args})
        else:
            blocked.append({"name": name, "args": args, "rule": ACTION_NOT_ALLOWED})
    return Verdict(allowed, blocked)
