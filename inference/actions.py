"""Parse ``[[ACTION:name arg ...]]`` markup out of model text.

The model writes actions inline; players must never see the markup, and the
gateway needs them as ``{"name": str, "args": [str, ...]}``. Rules:

- A complete ``[[ACTION:name arg ...]]`` is removed and parsed; args split on
  whitespace. A name that is not an identifier makes the markup malformed:
  it is removed but not parsed.
- Markup that is never closed (no ``]]`` before the next ``[[`` or the end of
  the text) is removed up to that point and not parsed: a half-written action
  is never run.
- ``[[`` not followed by ``ACTION:`` is ordinary text.
- Whitespace left behind is collapsed to single spaces and the result stripped,
  so "Here [[ACTION:jump]] you go" reads "Here you go".
"""

from __future__ import annotations

import re
from typing import TypedDict

MARKUP_OPEN = "[[ACTION:"
MARKUP_CLOSE = "]]"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SPACES_RE = re.compile(r"[ \t]{2,}")
# Action arguments are short tokens (item names, numbers); a cap keeps a
# runaway model from producing a megabyte "argument".
MAX_ARGS = 8
MAX_ARG_CHARS = 64


class Action(TypedDict):
    name: str
    args: list[str]


def _parse_body(body: str) -> Action | None:
    parts = body.split()
    if not parts or not _NAME_RE.match(parts[0]):
        return None
    args = parts[1:]
    if len(args) > MAX_ARGS or any(len(a) > MAX_ARG_CHARS for a in args):
        return None
    return {"name": parts[0], "args": args}


def _split(text: str) -> tuple[list[str], list[Action]]:
    """Return the text pieces outside markup and the parsed actions."""
    pieces: list[str] = []
    actions: list[Action] = []
    pos = 0
    while True:
        start = text.find(MARKUP_OPEN, pos)
        if start < 0:
            pieces.append(text[pos:])
            return pieces, actions
        pieces.append(text[pos:start])
        body_start = start + len(MARKUP_OPEN)
        close = text.find(MARKUP_CLOSE, body_start)
        reopen = text.find("[[", body_start)
        if close < 0 or (0 <= reopen < close):
            # Unterminated: drop it up to the next markup (or the end), unparsed.
            pos = reopen if reopen >= 0 else len(text)
            continue
        action = _parse_body(text[body_start:close])
        if action is not None:
            actions.append(action)
        pos = close + len(MARKUP_CLOSE)


def _tidy(text: str) -> str:
    lines = [_SPACES_RE.sub(" ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines)
    # Punctuation that followed removed markup should not float after a space.
    text = re.sub(r" ([,.!?;:])", r"\1", text)
    return text.strip()


def parse_actions(text: str) -> tuple[str, list[Action]]:
    """Remove action markup from ``text``; return (clean text, actions)."""
    pieces, actions = _split(text)
    return _tidy("".join(pieces)), actions
