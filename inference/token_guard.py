"""Untrusted text never reaches the model as a control token, whatever the tokenizer.

A player's name and words, memory (the NPC's own earlier replies too: they are model
output), nearby entries and persona fields are untrusted. If any of them encoded to a
special or added token id, a player could close their own turn and write the system's
or the NPC's, actions included. Two checks, each made by the tokenizer itself:

- ``TokenGuard.clean`` removes every control spelling until none is left (removing one
  can join its neighbours into another: ``<|sys<|end|>tem|>``), then encodes the text: if
  it still yields a control id (a normalizer that folds look-alikes, say), those ids are
  dropped and the rest decoded, a bounded number of times;
- ``TokenGuard.verify`` checks a whole prompt: its control ids, in order, must be the ones
  the template alone puts there, so nothing at the edge of a field formed one either.

This module knows tokenizers, not prompts (``inference.prompt`` renders them).
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

# A clean that still finds control ids after this many decode rounds gives up (a hostile tokenizer).
MAX_CLEAN_ROUNDS = 4


class ForgedControlToken(ValueError):
    """Untrusted text would reach the model as a control token: the request is refused as invalid."""


class SpellingGuard:
    """Control tokens known by spelling alone: what holds when the served model's tokenizer is not
    at hand (an OpenAI-compatible server's). It cannot see ids, so a normalizer that folds
    look-alikes into a control token, or a control token it was not told of, gets through."""

    def __init__(self, spellings: Iterable[str]) -> None:
        self.spellings = tuple(sorted({str(s) for s in spellings if s}, key=len, reverse=True))
        self._any = re.compile("|".join(map(re.escape, self.spellings))) if self.spellings else None
        # For the one-pass strip: the characters that end a spelling, and the spellings each ends.
        ending: dict[str, list[str]] = {}
        for spelling in self.spellings:
            ending.setdefault(spelling[-1], []).append(spelling)
        self._ending = {char: tuple(spellings) for char, spellings in ending.items()}
        self._ends = re.compile("[" + "".join(map(re.escape, self._ending)) + "]") if self._ending else None
        self._longest = len(self.spellings[0]) if self.spellings else 0

    def strip(self, text: str) -> str:
        """``text`` with every control spelling removed, those that a removal forms included."""
        if self._any is None or self._ends is None or not self._any.search(text):
            return text
        # The kept characters are a stack: a spelling is popped as soon as its last character
        # arrives, so what is left holds none, in one pass (a replace loop is quadratic on nesting).
        kept: list[str] = []
        start = 0
        for end in self._ends.finditer(text):
            kept.extend(text[start : end.end()])
            start = end.end()
            tail = "".join(kept[-self._longest :])
            candidates = self._ending[end.group()]
            if tail.endswith(candidates):
                spelling = next(s for s in candidates if tail.endswith(s))
                del kept[-len(spelling) :]
        kept.extend(text[start:])
        return "".join(kept)

    def clean(self, text: str) -> str:
        """``text`` with no control spelling left."""
        return self.strip(_plain(text))


class TokenGuard(SpellingGuard):
    """Every control token of one tokenizer, by spelling and by id."""

    def __init__(self, tokenizer: Any, extra_spellings: Iterable[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = _length(tokenizer)
        self.extra_spellings = tuple(extra_spellings)
        spellings: set[str] = set()
        ids: set[int] = set()
        for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            ids.add(int(token_id))
            spellings.add(str(token))
        for token_id in getattr(tokenizer, "all_special_ids", None) or ():
            if isinstance(token_id, int):
                ids.add(token_id)
        for spelling in (*(getattr(tokenizer, "all_special_tokens", None) or ()), *self.extra_spellings):
            spellings.add(str(spelling))
            token_id = _token_id(tokenizer, str(spelling))
            if token_id is not None:
                ids.add(token_id)
        self.ids = frozenset(ids)
        super().__init__(spellings)

    def clean(self, text: str) -> str:
        """``text`` with no control spelling left and, as the tokenizer encodes it, no control id."""
        text = self.strip(_plain(text))
        for _ in range(MAX_CLEAN_ROUNDS):
            ids = self.encode(text) if text else []
            if self.ids.isdisjoint(ids):
                return text
            text = self.strip(_plain(self.tokenizer.decode([i for i in ids if i not in self.ids])))
        raise ForgedControlToken("untrusted text still encodes to a control token after cleaning")

    def encode(self, text: str) -> list[int]:
        """The prompt's own encoding (``build_prompt`` encodes with exactly this call)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def control_ids(self, ids: Iterable[int]) -> list[int]:
        return [i for i in ids if i in self.ids]

    def verify(self, ids: Sequence[int], template_ids: Sequence[int]) -> None:
        """Refuse a prompt whose control tokens are not exactly its template's."""
        if self.control_ids(ids) != self.control_ids(template_ids):
            raise ForgedControlToken("the message would forge a control token in the prompt")


_guards: weakref.WeakKeyDictionary[Any, TokenGuard] = weakref.WeakKeyDictionary()
_guards_lock = threading.Lock()


def guard_for(tokenizer: Any, extra_spellings: Iterable[str] = ()) -> TokenGuard:
    """The tokenizer's guard, built once; again only if tokens were added to it since."""
    extra = tuple(extra_spellings)
    try:
        with _guards_lock:
            guard = _guards.get(tokenizer)
    except TypeError:  # neither hashable nor weakly referenceable: no cache
        return TokenGuard(tokenizer, extra)
    if guard is None or guard.vocab_size != _length(tokenizer) or guard.extra_spellings != extra:
        guard = TokenGuard(tokenizer, extra)
        with _guards_lock:
            _guards[tokenizer] = guard
    return guard


def _plain(text: str) -> str:
    # A carriage return is dropped before stripping, or "<|sys\rtem|>" would come back whole.
    return str(text).replace("\r", "")


def _length(tokenizer: Any) -> int | None:
    try:
        return len(tokenizer)
    except (TypeError, NotImplementedError):
        return None


def _token_id(tokenizer: Any, spelling: str) -> int | None:
    """The spelling's id if it is one token; a spelling the vocabulary lacks maps to nothing (not to unk)."""
    try:
        token_id = tokenizer.convert_tokens_to_ids(spelling)
        if isinstance(token_id, int) and tokenizer.convert_ids_to_tokens(token_id) == spelling:
            return token_id
    except (KeyError, IndexError, TypeError, ValueError):
        pass
    return None
