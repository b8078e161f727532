"""What an NPC may say and do. Every reply passes here before the mod sees it.

``check_reply`` runs every rule over one reply and returns a ``Verdict``: the
actions that may run, those a rule stopped (each with its rule), the text to
show (redacted when a text rule hit), every hit with its severity, and how long
to freeze the NPC when a hit was severe. It reads the rules' settings
(``PolicyRule`` rows, edited in the admin) and, given an NPC, its recent
exchanges (rate limit, loops); it writes nothing, so the training gate can call
it on sampled replies. ``agents_app.gateway.exchange_record`` stores the hits
as ``PolicyFlag`` rows and freezes the NPC.

The rules, by name (the ``rule`` of a flag or a blocked action):

- ``action_not_allowed``: the action is not on the persona's allowlist.
- ``arg_out_of_bounds``: a numeric argument past its bound (``move`` distance,
  ``give`` count), or not a number where one is needed.
- ``item_not_giveable``: ``give`` of an item not on the list.
- ``rate_limit``: more actions per minute than the NPC may take.
- ``action_loop``: the same action (name and arguments) repeated past a count.
- ``world_change``: ``dig``, ``place`` and other destructive actions, allowed
  only when the persona's allowlist names them and the NPC (and the target) is
  known to stand outside every protected area.
- ``blocked_term``, ``personal_data``: terms and data-like patterns (e-mail
  addresses, phone numbers) are replaced in the text.
- ``breaking_character``: "as an AI", "language model", ...: the whole reply is
  replaced by an in-character line.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

ACTION_NOT_ALLOWED = "action_not_allowed"
ARG_OUT_OF_BOUNDS = "arg_out_of_bounds"
ITEM_NOT_GIVEABLE = "item_not_giveable"
RATE_LIMIT = "rate_limit"
ACTION_LOOP = "action_loop"
WORLD_CHANGE = "world_change"
BLOCKED_TERM = "blocked_term"
PERSONAL_DATA = "personal_data"
BREAKING_CHARACTER = "breaking_character"

INFO, WARNING, SEVERE = "info", "warning", "severe"

EMAIL_RE = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
# Digit groups as people write phone numbers; a match needs ``min_digits`` digits, so coordinates and
# counts ("at 120, -40, 300", "16 torches") pass.
PHONE_RE = r"(?<![\w.-])\+?\(?\d{1,4}\)?(?:[\s.-]?\(?\d{2,5}\)?){1,4}(?!\w)"

# Each rule's default severity and settings, used where no PolicyRule row says otherwise.
DEFAULTS: dict[str, dict[str, Any]] = {
    ACTION_NOT_ALLOWED: {"severity": INFO, "params": {}},
    ARG_OUT_OF_BOUNDS: {"severity": WARNING, "params": {"limits": {"move": 8, "give": 16}}},
    ITEM_NOT_GIVEABLE: {
        "severity": WARNING,
        "params": {"items": ["default:apple", "default:bread", "farming:bread", "default:torch", "default:stick"]},
    },
    RATE_LIMIT: {"severity": WARNING, "params": {"per_minute": 20}},
    ACTION_LOOP: {"severity": WARNING, "params": {"max_repeats": 3, "window_seconds": 300}},
    WORLD_CHANGE: {
        "severity": WARNING,
        "params": {
            "actions": [
                "dig",
                "place",
                "place_node",
                "set_node",
                "remove_node",
                "break",
                "build",
                "fill",
                "explode",
                "ignite",
                "burn",
                "destroy",
                "grief",
                "punch_node",
            ]
        },
    },
    BLOCKED_TERM: {"severity": SEVERE, "params": {"terms": ["kill yourself", "kys"], "replacement": "***"}},
    PERSONAL_DATA: {
        "severity": SEVERE,
        "params": {"patterns": {"email": EMAIL_RE, "phone": PHONE_RE}, "replacement": "[hidden]", "min_digits": 10},
    },
    BREAKING_CHARACTER: {
        "severity": WARNING,
        "params": {
            "phrases": [
                "as an ai",
                "i am an ai",
                "i'm an ai",
                "an ai model",
                "ai language model",
                "language model",
                "large language model",
                "i am a chatbot",
                "openai",
                "chatgpt",
            ],
            "replacement": "Hm, where was I? Let's talk about this world instead.",
        },
    },
}
RULES = tuple(DEFAULTS)


@dataclass(frozen=True)
class Hit:
    rule: str
    severity: str
    detail: str
    action: dict[str, Any] | None = None
    freeze_seconds: float = 0.0


@dataclass(frozen=True)
class Verdict:
    allowed: list[dict[str, Any]]
    blocked: list[dict[str, Any]]  # each {name, args, rule}
    text: str | None = None  # the text to show, redacted where a text rule hit
    hits: tuple[Hit, ...] = ()
    freeze_seconds: float = 0.0  # > 0: a severe hit; freeze the NPC this long
    frozen_until: Any = None  # set by the gateway once it froze the NPC

    @property
    def severe(self) -> bool:
        return any(h.severity == SEVERE for h in self.hits)

    @property
    def ok(self) -> bool:
        return not self.hits


@dataclass
class RuleSet:
    """The rules' effective settings for one persona: defaults, then global rows, then the persona's."""

    enabled: dict[str, bool] = field(default_factory=dict)
    severity: dict[str, str] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    freeze: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def defaults(cls) -> RuleSet:
        return cls(
            enabled={r: True for r in RULES},
            severity={r: d["severity"] for r, d in DEFAULTS.items()},
            params={r: dict(d["params"]) for r, d in DEFAULTS.items()},
            freeze={r: None for r in RULES},
        )

    @classmethod
    def for_persona(cls, persona) -> RuleSet:
        """The persona's rules, read at most every ``RULES_TTL`` seconds per process.

        Every reply runs the policy, so the rows are not read for each one: a change made in
        the admin clears this process's copy at once (``forget_rules``) and reaches other
        processes within ``RULES_TTL``. Treat the result as read-only.
        """
        key = getattr(persona, "pk", None)
        stamp, rules = _rules_cache.get(key, (0.0, None))
        if rules is None or time.monotonic() - stamp > RULES_TTL:
            rules = cls.read(persona)
            _rules_cache[key] = (time.monotonic(), rules)
        return rules

    @classmethod
    def read(cls, persona) -> RuleSet:
        from django.db.models import Q

        from agents_app.models import PolicyRule

        rows = PolicyRule.objects.filter(Q(persona__isnull=True) | Q(persona_id=getattr(persona, "pk", None)))
        return cls.from_rows(rows)

    @classmethod
    def read_many(cls, persona_ids) -> dict[Any, RuleSet]:
        """``read`` for several personas in one query (a page of exchanges): persona id → its rules."""
        from django.db.models import Q

        from agents_app.models import PolicyRule

        ids = set(persona_ids)
        rows = list(PolicyRule.objects.filter(Q(persona__isnull=True) | Q(persona_id__in=ids)))
        return {pk: cls.from_rows(r for r in rows if r.persona_id in (None, pk)) for pk in ids}

    @classmethod
    def from_rows(cls, rows) -> RuleSet:
        rules = cls.defaults()
        # Global rows first, so a persona's row wins.
        for row in sorted(rows, key=lambda r: r.persona_id is not None):
            if row.rule not in rules.enabled:
                continue
            rules.enabled[row.rule] = row.enabled
            if row.severity:
                rules.severity[row.rule] = row.severity
            if isinstance(row.params, dict):
                rules.params[row.rule] = {**rules.params[row.rule], **row.params}
            if row.freeze_seconds is not None:
                rules.freeze[row.rule] = row.freeze_seconds
        return rules

    def hit(self, rule: str, detail: str, action: dict[str, Any] | None = None) -> Hit:
        severity = self.severity[rule]
        freeze = 0.0
        if severity == SEVERE:
            from django.conf import settings

            configured = self.freeze.get(rule)
            freeze = float(configured if configured is not None else settings.VOYAGER_POLICY_FREEZE_SECONDS)
        return Hit(rule=rule, severity=severity, detail=detail, action=action, freeze_seconds=freeze)


RULES_TTL = 2.0
_rules_cache: dict[Any, tuple[float, RuleSet]] = {}


def forget_rules(**_kwargs) -> None:
    """Drop this process's copies of the rules (a ``PolicyRule`` was saved or deleted)."""
    _rules_cache.clear()


def _number(arg: Any) -> float | None:
    try:
        value = float(arg)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None


def _bounds_problem(name: str, args: list[str], limits: dict[str, Any]) -> str | None:
    limit = _number(limits.get(name))
    if limit is None:
        return None
    if name == "give":
        count = _number(args[1]) if len(args) > 1 else 1.0
        if count is None or count != int(count) or not 1 <= count <= limit:
            return f"give count {args[1] if len(args) > 1 else 1!r} is not a whole number from 1 to {limit:g}"
        return None
    for arg in args:
        value = _number(arg)
        if value is None:
            return f"{name} argument {arg!r} is not a number"
        if abs(value) > limit:
            return f"{name} argument {arg} is past the bound of {limit:g}"
    return None


def _target(pos, args: list[str]):
    """Where a world-changing action lands: the NPC's position plus a numeric offset, if any."""
    offsets = [_number(a) for a in args[:3]]
    if len(offsets) == 3 and all(o is not None for o in offsets):
        return tuple(p + o for p, o in zip(pos, offsets, strict=True))
    return tuple(pos)


def _position(context: dict | None):
    pos = (context or {}).get("pos")
    if isinstance(pos, list | tuple) and len(pos) == 3 and all(_number(p) is not None for p in pos):
        return tuple(float(p) for p in pos)
    return None


def _zone_problem(pos, args: list[str], server) -> str | None:
    from django.db.models import Q

    from agents_app.models import ProtectedArea

    if pos is None:
        return "the NPC's position is unknown, so it may be in a protected area"
    areas = ProtectedArea.objects.filter(enabled=True)
    areas = areas.filter(Q(game_server__isnull=True) | Q(game_server=server)) if server else areas
    target = _target(pos, args)
    for area in areas:
        if area.contains(pos) or area.contains(target):
            return f"inside the protected area {area.name!r}"
    return None


def _recent_actions(npc, window_seconds: float) -> list[tuple[Any, dict[str, Any]]]:
    """The NPC's actions that ran in the last ``window_seconds``, oldest first, with their time."""
    from django.utils import timezone

    from agents_app.models import Exchange

    since = timezone.now() - timedelta(seconds=window_seconds)
    rows = (
        Exchange.objects.filter(npc=npc, created_at__gte=since)
        .order_by("-created_at")
        .values_list("created_at", "actions")[:200]
    )
    out = []
    for created_at, actions in reversed(list(rows)):
        out.extend((created_at, a) for a in actions or [] if isinstance(a, dict))
    return out


def _check_action(action, *, persona, rules: RuleSet, pos, server, history, minute_count) -> Hit | None:
    name, args = action["name"], action["args"]
    on = rules.enabled
    world_changing = name in set(rules.params[WORLD_CHANGE].get("actions", []))
    if on[ACTION_NOT_ALLOWED] and name not in set(persona.allowed_actions or []):
        return rules.hit(ACTION_NOT_ALLOWED, f"{name} is not allowed for {persona.slug}", action)
    if world_changing and on[WORLD_CHANGE]:
        problem = _zone_problem(pos, args, server)
        if problem:
            return rules.hit(WORLD_CHANGE, f"{name} changes the world: {problem}", action)
    if on[ARG_OUT_OF_BOUNDS]:
        problem = _bounds_problem(name, args, rules.params[ARG_OUT_OF_BOUNDS].get("limits", {}))
        if problem:
            return rules.hit(ARG_OUT_OF_BOUNDS, problem, action)
    if name == "give" and on[ITEM_NOT_GIVEABLE]:
        item = args[0] if args else ""
        if item not in set(rules.params[ITEM_NOT_GIVEABLE].get("items", [])):
            return rules.hit(ITEM_NOT_GIVEABLE, f"{item or 'nothing'} may not be given", action)
    if on[RATE_LIMIT]:
        per_minute = _number(rules.params[RATE_LIMIT].get("per_minute"))
        if per_minute is not None and minute_count >= per_minute:
            return rules.hit(RATE_LIMIT, f"more than {per_minute:g} actions in a minute", action)
    if on[ACTION_LOOP]:
        repeats = int(_number(rules.params[ACTION_LOOP].get("max_repeats")) or 0)
        tail = history[-repeats:] if repeats else []
        if repeats and len(tail) == repeats and all(a == action for a in tail):
            return rules.hit(ACTION_LOOP, f"{name} repeated more than {repeats} times in a row", action)
    return None


def _check_text(text: str, rules: RuleSet) -> tuple[str, list[Hit]]:
    hits: list[Hit] = []
    on, params = rules.enabled, rules.params
    if on[BREAKING_CHARACTER]:
        lowered = text.lower()
        said = [p for p in params[BREAKING_CHARACTER].get("phrases", []) if p and p.lower() in lowered]
        if said:
            hits.append(rules.hit(BREAKING_CHARACTER, f"out of character: {', '.join(said)}"))
            text = params[BREAKING_CHARACTER].get("replacement", "")
    if on[BLOCKED_TERM]:
        replacement = params[BLOCKED_TERM].get("replacement", "***")
        found = []
        for term in params[BLOCKED_TERM].get("terms", []):
            if not term:
                continue
            pattern = re.compile(r"(?<!\w)" + re.escape(term) + r"(?!\w)", re.IGNORECASE)
            text, n = pattern.subn(replacement, text)
            if n:
                found.append(term)
        if found:
            hits.append(rules.hit(BLOCKED_TERM, f"blocked terms: {', '.join(found)}"))
    if on[PERSONAL_DATA]:
        text, kinds = _redact_personal_data(text, params[PERSONAL_DATA])
        if kinds:
            hits.append(rules.hit(PERSONAL_DATA, f"personal data: {', '.join(kinds)}"))
    return text, hits


def _redact_personal_data(text: str, params: dict[str, Any]) -> tuple[str, list[str]]:
    """The text with every personal-data match replaced, and the kinds that matched."""
    replacement = params.get("replacement", "[hidden]")
    min_digits = int(_number(params.get("min_digits")) or 0)
    kinds = []
    for kind, regex in params.get("patterns", {}).items():
        found = 0

        def redact(match, kind=kind):
            nonlocal found
            if kind == "phone" and sum(c.isdigit() for c in match.group(0)) < min_digits:
                return match.group(0)
            found += 1
            return replacement

        try:
            text = re.sub(regex, redact, text)
        except re.error:
            continue  # a bad pattern typed in the admin must not stop every reply
        if found:
            kinds.append(kind)
    return text, kinds


def redact_personal_data(text: str, rules: RuleSet) -> str:
    """Personal data in words shown to others (a player's own lines, on the portal and the API), hidden
    by the same ``personal_data`` rule as an NPC's replies. The stored text stays whole, for moderators."""
    if not text or not rules.enabled[PERSONAL_DATA]:
        return text
    return _redact_personal_data(text, rules.params[PERSONAL_DATA])[0]


def check_reply(
    persona,
    text: str,
    actions: list[dict[str, Any]],
    npc=None,
    *,
    context: dict | None = None,
    server=None,
    rules: RuleSet | None = None,
) -> Verdict:
    """Run every rule over one reply. Reads settings and the NPC's history; writes nothing."""
    rules = rules or RuleSet.for_persona(persona)
    if server is None and npc is not None:
        server = npc.game_server if npc.game_server_id else None
    pos = _position(context)
    history: list[dict[str, Any]] = []
    minute_count = 0
    # History matters only to the rate and loop rules, and only when there are actions to check.
    wants_history = actions and (rules.enabled[RATE_LIMIT] or rules.enabled[ACTION_LOOP])
    if wants_history and npc is not None and getattr(npc, "pk", None):
        from django.utils import timezone

        window = max(60.0, _number(rules.params[ACTION_LOOP].get("window_seconds")) or 0.0)
        recent = _recent_actions(npc, window)
        minute_ago = timezone.now() - timedelta(seconds=60)
        history = [a for _, a in recent]
        minute_count = sum(1 for at, _ in recent if at >= minute_ago)
    allowed, blocked, hits = [], [], []
    for raw in actions:
        action = {"name": str(raw.get("name", "")), "args": [str(a) for a in raw.get("args", [])]}
        hit = _check_action(
            action, persona=persona, rules=rules, pos=pos, server=server, history=history, minute_count=minute_count
        )
        if hit is None:
            allowed.append(action)
            history.append(action)
            minute_count += 1
        else:
            blocked.append({**action, "rule": hit.rule})
            hits.append(hit)
    shown, text_hits = _check_text(text or "", rules)
    hits.extend(text_hits)
    freeze = max((h.freeze_seconds for h in hits), default=0.0)
    return Verdict(allowed=allowed, blocked=blocked, text=shown, hits=tuple(hits), freeze_seconds=freeze)


def check_actions(persona, actions: list[dict[str, Any]], npc=None, *, context: dict | None = None) -> Verdict:
    """The action rules alone (the training gate's behaviour check, the game server's check endpoint)."""
    return check_reply(persona, "", actions, npc, context=context)
