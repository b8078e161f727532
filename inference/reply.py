"""From the tokens a model writes to the reply a player reads.

``ReplyShaper`` decodes a growing reply and releases it a whole sentence at a
time (the mod shows chat a sentence at a time anyway), which is what lets a
reply end well without ever taking back text that was already streamed:

- a sentence that repeats an earlier one of the same reply ends the reply
  before it (a looping model stops at its first loop);
- a new line that opens another speaker's turn (``alice: ...``) ends it too;
- a reply that runs out of tokens ends on its last whole sentence;
- a leading speaker prefix (``Bram: ...``, ``alice: ...``) is removed.

Action markup is parsed from the raw text as before (``inference.actions``);
a sentence boundary inside ``[[ACTION:...]]`` is not a boundary, and an
action after the point where the reply was cut was never said.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from .actions import MARKUP_CLOSE, MARKUP_OPEN, Action, parse_actions

# Sentence-final punctuation, closing quotes or brackets after it, then white space: "3.5" and
# "e.g.x" do not end a sentence, "Aye." followed by a space or a new line does.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)")
_WORDS = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
ELLIPSIS = "…"


def _masked(raw: str) -> tuple[str, int]:
    """``raw`` with complete markup blanked out, and where an unterminated markup starts (or its length)."""
    out = []
    pos = 0
    while True:
        start = raw.find(MARKUP_OPEN, pos)
        if start < 0:
            out.append(raw[pos:])
            return "".join(out), len(raw)
        close = raw.find(MARKUP_CLOSE, start + len(MARKUP_OPEN))
        if close < 0:
            out.append(raw[pos:start])
            return "".join(out), start
        end = close + len(MARKUP_CLOSE)
        out.append(raw[pos:start] + " " * (end - start))
        pos = end


def _normal(text: str) -> str:
    return " ".join(w.lower() for w in _WORDS.findall(text))


class ReplyShaper:
    """One reply in the making. ``push`` each token; ``stopped`` says the reply should end now."""

    def __init__(self, decode: Callable[[list[int]], str], speakers: Sequence[str] = ()) -> None:
        self._decode = decode
        names = {n.strip() for s in speakers if s and s.strip() for n in (s, s.split()[0])}
        alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        self._prefix = re.compile(rf"^\s*(?:{alternatives})\s*:\s*", re.IGNORECASE) if names else None
        self._turn = re.compile(rf"\n\s*(?:{alternatives})\s*:", re.IGNORECASE) if names else None
        self.tokens: list[int] = []
        self.shown = ""  # what the player has been sent: always a prefix of the final text
        self.stopped = False
        self._raw = ""
        self._cut = 0  # raw[:cut] is released: whole sentences only
        self._sentences: set[str] = set()

    def push(self, token: int) -> str:
        """Add one token; return the text to stream now ("" until a sentence completes)."""
        self.tokens.append(token)
        if self.stopped:
            return ""  # past the end (a benchmark's ignore_eos): nothing more is said
        raw = self._decode(self.tokens)
        if raw.endswith("\ufffd"):
            return ""  # an incomplete multi-byte character: wait for its other bytes
        self._raw = raw
        masked, open_at = _masked(raw)
        if self._turn is not None and (turn := self._turn.search(masked, self._cut)) is not None:
            masked, open_at, self.stopped = masked[: turn.start()], min(open_at, turn.start()), True
        for end in _SENTENCE_END.finditer(masked, self._cut):
            if end.end() > open_at:
                break
            sentence = _normal(parse_actions(raw[self._cut : end.end()])[0])
            if sentence and sentence in self._sentences:
                self.stopped = True
                break
            if sentence:
                self._sentences.add(sentence)
            self._cut = end.end()
        return self._release(self._visible(raw[: self._cut]))

    def finish(self, reason: str) -> tuple[str, str, list[Action], str]:
        """The final reply: (text, raw text, actions, the rest of the text not yet streamed).

        ``reason`` is the engine's finish reason: "stop" (the model ended its turn) keeps
        everything, unless the shaper stopped it; "length" ends on the last whole sentence.
        """
        raw = self._raw
        if self.stopped or (reason == "length" and self._cut):
            raw = raw[: self._cut]
        text, actions = parse_actions(raw)
        text = self._strip_prefix(text)
        if reason == "length" and not self._cut and text and text[-1] not in ".!?…":
            # Not one whole sentence in the whole budget: end on a whole word.
            text = (text.rsplit(" ", 1)[0] if " " in text else text).rstrip(",;:-") + ELLIPSIS
        return text, raw, actions, self._release(text)

    def _visible(self, raw: str) -> str:
        return self._strip_prefix(parse_actions(raw)[0])

    def _strip_prefix(self, text: str) -> str:
        if self._prefix is None:
            return text
        return self._prefix.sub("", text, count=1)

    def _release(self, visible: str) -> str:
        if len(visible) > len(self.shown) and visible.startswith(self.shown):
            delta, self.shown = visible[len(self.shown) :], visible
            return delta
        return ""
