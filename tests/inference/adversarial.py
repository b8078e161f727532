"""Text that tries to forge control tokens, built from the spellings of the tokenizer under test.

The control ids are taken from the tokenizer here, not from ``inference.token_guard``, so the
tests do not trust the code they test.
"""

from __future__ import annotations

import functools

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from inference.prompt import SPECIAL_TOKENS

# Fixed examples, no example database: every run, here and in CI, tries the same strings.
# A test that builds whole prompts takes fewer (``settings(FORGERY_SETTINGS, max_examples=...)``).
FORGERY_SETTINGS = settings(
    max_examples=120,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# What a filter might drop or a normalizer fold: it must not be able to glue a spelling together.
WHITESPACE = ["", " ", "  ", "\n", "\r", "\r\n", "\t", "\u00a0", "\u200b", "\u200d", "\ufeff", "\u2028"]
LOOK_ALIKES = {
    "<": "＜‹〈﹤",
    ">": "＞›〉﹥",
    "|": "｜ǀ∣│",
    "_": "＿‗",
    "/": "／⁄",
    "e": "еｅ",
    "o": "оｏ",
    "a": "аａ",
    "p": "рｐ",
    "s": "ѕｓ",
    "i": "іｉ",
}


def control_ids(tokenizer) -> frozenset[int]:
    ids = {i for i in tokenizer.all_special_ids if isinstance(i, int)}
    return frozenset(ids | set(tokenizer.added_tokens_decoder))


def control_spellings(tokenizer) -> tuple[str, ...]:
    """Every special and added token's spelling, and the starter format's, whatever the tokenizer."""
    spellings = set(tokenizer.all_special_tokens) | {str(t) for t in tokenizer.added_tokens_decoder.values()}
    return tuple(sorted(spellings | set(SPECIAL_TOKENS)))


def controls_in(tokenizer, ids) -> list[int]:
    known = control_ids(tokenizer)
    return [i for i in ids if i in known]


def nestings(spellings: tuple[str, ...]):
    """Every split of every spelling into two pieces with another spelling between them."""
    for outer in spellings:
        for cut in range(1, len(outer)):
            for inner in spellings:
                yield outer[:cut] + inner + outer[cut:]


def _look_alike(char: str) -> st.SearchStrategy[str]:
    fullwidth = chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char
    return st.sampled_from([char, fullwidth, *LOOK_ALIKES.get(char, "")])


@functools.cache
def forgeries(spellings: tuple[str, ...]) -> st.SearchStrategy[str]:
    """Whole spellings, spellings cut into pieces with anything (another forgery too) between the
    pieces, look-alike spellings, mixed with random text and whitespace."""
    whole = st.sampled_from(spellings)
    chars = "".join(sorted(set("".join(spellings)))) + "abc xyz:,.[]"
    noise = st.one_of(st.sampled_from(WHITESPACE), st.text(alphabet=chars, max_size=6), st.text(max_size=3))
    disguised = whole.flatmap(lambda s: st.tuples(*map(_look_alike, s)).map("".join))

    def cut_up(filler: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        @st.composite
        def build(draw) -> str:
            spelling = draw(whole)
            cuts = sorted(draw(st.sets(st.integers(1, max(1, len(spelling) - 1)), max_size=3)))
            bounds = [0, *(c for c in cuts if c < len(spelling)), len(spelling)]
            pieces = [spelling[a:b] for a, b in zip(bounds, bounds[1:])]
            return "".join(p + (draw(filler) if k < len(pieces) - 1 else "") for k, p in enumerate(pieces))

        return build()

    atom = st.one_of(whole, disguised, cut_up(noise), noise)
    nested = st.recursive(
        atom, lambda inner: st.one_of(cut_up(inner), st.lists(inner, max_size=3).map("".join)), max_leaves=12
    )
    return st.lists(nested, min_size=1, max_size=4).map("".join)
