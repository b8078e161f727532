"""The prompt cache: a follow-up turn prefills only what is new, and nothing else may change."""

from __future__ import annotations

import torch

from inference.engine import AdapterRef, Result
from inference.prompt import PersonaSpec, Turn
from inference.prompt_cache import BLOCK, PromptCache

from .helpers import GREEDY, Collector, request

LAYERS, HEADS, DIM = 2, 3, 4


class FakeRows:
    """KV a prompt leaves in an engine row: position p holds the value p (easy to check after a copy)."""

    def __init__(self, tokens: list[int]) -> None:
        n = len(tokens)
        self.keys = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1).expand(LAYERS, HEADS, n, DIM).contiguous()
        self.values = -self.keys
        self.reads: list[tuple[int, int]] = []

    def read(self, start: int, end: int):
        self.reads.append((start, end))
        return self.keys[:, :, start:end].clone(), self.values[:, :, start:end].clone()


def stored(cache: PromptCache, adapter, tokens: list[int]) -> FakeRows:
    rows = FakeRows(tokens)
    cache.store(adapter, tokens, rows.read)
    return rows


def test_a_lookup_finds_the_longest_cached_prefix_in_whole_blocks_and_leaves_a_token_to_run():
    cache = PromptCache(max_bytes=2**30)
    prompt = list(range(50))  # three whole blocks and two tokens
    stored(cache, None, prompt)

    hit = cache.lookup(None, prompt + [99])
    assert hit.length == 3 * BLOCK
    assert torch.equal(hit.keys[0, 0, :, 0], torch.arange(48, dtype=torch.float32))
    assert torch.equal(hit.values, -hit.keys)
    assert cache.lookup(None, prompt[:48]).length == 2 * BLOCK  # the last token must still be run
    assert cache.lookup(None, prompt[:20] + [7] * 30).length == BLOCK  # diverges in the second block
    assert cache.lookup(None, [7] + prompt[1:]) is None
    assert cache.lookup(None, prompt[:BLOCK]) is None
    assert cache.stats()["prompt_cache_hits"] == 3 and cache.stats()["prompt_cache_tokens_saved"] == 6 * BLOCK


def test_kv_is_never_served_across_adapter_versions():
    cache = PromptCache(max_bytes=2**30)
    prompt = list(range(40))
    stored(cache, (5, 1), prompt)
    assert cache.lookup((5, 2), prompt) is None  # the same adapter's next version
    assert cache.lookup(None, prompt) is None  # the base model alone
    assert cache.lookup((6, 1), prompt) is None
    assert cache.lookup((5, 1), prompt).length == 2 * BLOCK


def test_a_shared_prefix_is_held_once_and_a_longer_prompt_only_adds_its_new_blocks():
    cache = PromptCache(max_bytes=2**30)
    header = list(range(2 * BLOCK))
    stored(cache, None, header + [100 + i for i in range(BLOCK)])
    second = stored(cache, None, header + [200 + i for i in range(2 * BLOCK)])
    assert second.reads == [(2 * BLOCK, 3 * BLOCK), (3 * BLOCK, 4 * BLOCK)]  # the header was not copied again
    assert cache.stats()["prompt_cache_blocks"] == 2 + 1 + 2
    follow_up = header + [100 + i for i in range(BLOCK)] + [300 + i for i in range(BLOCK + 3)]
    later = stored(cache, None, follow_up)
    assert later.reads == [(3 * BLOCK, 4 * BLOCK)]
    assert cache.lookup(None, follow_up).length == 4 * BLOCK


def test_memory_is_bounded_and_the_least_recently_used_prompts_go_first():
    block_bytes = 2 * LAYERS * HEADS * BLOCK * DIM * 4
    cache = PromptCache(max_bytes=5 * block_bytes)
    kept = [1000 + i for i in range(2 * BLOCK)]
    old = [2000 + i for i in range(2 * BLOCK)]
    stored(cache, None, kept)
    stored(cache, None, old)
    assert cache.lookup(None, kept + [1]).length == 2 * BLOCK  # kept is now the most recently used
    stored(cache, None, [3000 + i for i in range(2 * BLOCK)])
    assert cache.bytes == 5 * block_bytes
    assert cache.lookup(None, kept + [1]).length == 2 * BLOCK
    # old's leaf went first; its first block stays while it is not the least recently used leaf.
    assert cache.lookup(None, old + [1]).length == BLOCK


def test_a_cache_of_size_zero_is_off():
    cache = PromptCache(max_bytes=0)
    stored(cache, None, list(range(40)))
    assert cache.lookup(None, list(range(41))) is None and cache.stats()["prompt_cache_blocks"] == 0


# --- through the engine ----------------------------------------------------------------------------

TALKER = PersonaSpec(
    slug="talker",
    name="Talker",
    system_prompt=(
        "You keep the old mill by the river, you know every path in the valley and every family in "
        "the village, and you speak plainly and briefly to anyone who asks for help."
    ),
    traits=("calm", "helpful", "plain-spoken"),
    actions=("follow", "wait", "give"),
    sampling=GREEDY,
)
LINES = ["hi there", "where is the mill?", "can you show me the way?", "thanks, wait here for me"]


def converse(engine, ref, tag: str, turns=LINES, *, swap_at: int | None = None, swap_to=None) -> list[Result]:
    """One player's conversation with an NPC, each turn carrying the earlier ones as memory."""
    memory: list[Turn] = []
    results = []
    for i, text in enumerate(turns):
        adapter = swap_to if swap_at is not None and i >= swap_at else ref
        collector = Collector()
        rid = f"{tag}-{i}"
        engine.submit(
            request(rid, text, persona=TALKER, adapter=adapter, memory=list(memory), max_tokens=8, ignore_eos=True),
            collector,
        )
        result = collector.wait([rid])[rid]
        assert isinstance(result, Result), result
        results.append(result)
        memory.append(Turn("alice", text, result.text or "Hm."))
    return results


def test_follow_up_turns_reuse_the_prompt_and_give_the_same_tokens(make_engine, adapter_factory):
    ref = AdapterRef(id=1, version=1, path=str(adapter_factory("chat", seed=31)))
    cached, plain = make_engine(), make_engine(prompt_cache_mb=0)
    for adapter in (None, ref):
        with_cache = converse(cached, adapter, f"c{adapter is None}")
        without = converse(plain, adapter, f"p{adapter is None}")
        assert [r.token_ids for r in with_cache] == [r.token_ids for r in without]
        assert [r.prompt_text for r in with_cache] == [r.prompt_text for r in without]
    stats = cached.stats()
    assert stats["prompt_cache_hits"] >= 6  # turns 2-4 of both conversations
    assert stats["prompt_cache_tokens_saved"] >= 6 * BLOCK
    assert plain.stats()["prompt_cache_hits"] == 0


def test_a_hot_swap_mid_conversation_is_never_served_the_old_versions_kv(make_engine, adapter_factory):
    v1 = AdapterRef(id=7, version=1, path=str(adapter_factory("swap1", seed=41)))
    v2 = AdapterRef(id=7, version=2, path=str(adapter_factory("swap2", seed=42)))
    cached, plain = make_engine(), make_engine(prompt_cache_mb=0)
    before = converse(cached, v1, "warm", LINES[:2])
    hits = cached.stats()["prompt_cache_hits"]
    swapped = converse(cached, v1, "swap", LINES[:3], swap_at=2, swap_to=v2)
    reference = converse(plain, v1, "ref", LINES[:3], swap_at=2, swap_to=v2)
    assert [r.token_ids for r in swapped] == [r.token_ids for r in reference]
    assert [r.token_ids for r in swapped[:2]] == [r.token_ids for r in before]
    assert swapped[2].adapter_version == 2
    # Turns 1-2 hit v1's entries; turn 3 (v2) found nothing of v1's to reuse.
    assert cached.stats()["prompt_cache_hits"] == hits + 2


def test_on_the_real_model_a_cached_conversation_is_token_identical(make_engine, real_model_dir):
    cached, plain = make_engine(real_model_dir), make_engine(real_model_dir, prompt_cache_mb=0)
    with_cache, without = converse(cached, None, "real-c"), converse(plain, None, "real-p")
    assert [r.token_ids for r in with_cache] == [r.token_ids for r in without]
    saved = cached.stats()["prompt_cache_tokens_saved"]
    # Turns 2-4 reuse most of their prompt: the header and the memory before the newest line.
    assert saved >= sum(r.prompt_tokens for r in with_cache[:-1]) // 2
