"""The KV of prompts already prefilled, so a follow-up turn only prefills what is new.

An NPC's next prompt starts with its previous one (persona header, the same
memory, then one more turn), and NPCs of one persona share the header. The
cache is a tree of blocks of ``BLOCK`` tokens: a block's node holds the keys
and values of its tokens, given every token before it (its parents), so a
prefix shared by many prompts is held once. A lookup returns the longest
cached prefix of a new prompt.

The cache belongs to one engine (one base model), and every block is keyed by
the adapter version that computed it: a new version or a hot swap can never
be served another version's KV. Memory is bounded; the least recently used
leaves go first.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

BLOCK = 16
AdapterKey = tuple[int, int] | None  # (adapter id, version), None for the base model alone
KV = tuple[torch.Tensor, torch.Tensor]  # keys and values, each (layers, kv_heads, tokens, head_dim)


@dataclass(eq=False)
class _Block:
    parent: _Block | None
    tokens: tuple[int, ...]
    keys: torch.Tensor  # (layers, kv_heads, BLOCK, head_dim)
    values: torch.Tensor
    key: tuple
    children: int = 0

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes


@dataclass(frozen=True)
class Hit:
    length: int  # leading tokens of the prompt whose KV this holds
    keys: torch.Tensor  # (layers, kv_heads, length, head_dim)
    values: torch.Tensor


@dataclass
class PromptCache:
    max_bytes: int
    bytes: int = 0
    lookups: int = 0
    hits: int = 0
    tokens_saved: int = 0
    # (adapter, parent block or None, block tokens) -> block; insertion order is recency (LRU first).
    _blocks: collections.OrderedDict = field(default_factory=collections.OrderedDict)

    def _path(self, adapter: AdapterKey, tokens: list[int], limit: int) -> list[_Block]:
        path: list[_Block] = []
        parent = None
        for end in range(BLOCK, limit + 1, BLOCK):
            block = self._blocks.get((adapter, id(parent), tuple(tokens[end - BLOCK : end])))
            if block is None or block.parent is not parent:
                break
            path.append(block)
            parent = block
        return path

    def lookup(self, adapter: AdapterKey, tokens: list[int]) -> Hit | None:
        """The longest cached prefix of ``tokens``, leaving at least one token to prefill (for its logits)."""
        if self.max_bytes <= 0:
            return None
        self.lookups += 1
        path = self._path(adapter, tokens, len(tokens) - 1)
        if not path:
            return None
        for block in path:
            self._blocks.move_to_end(block.key)
        self.hits += 1
        self.tokens_saved += len(path) * BLOCK
        return Hit(
            length=len(path) * BLOCK,
            keys=torch.cat([b.keys for b in path], dim=2),
            values=torch.cat([b.values for b in path], dim=2),
        )

    def store(self, adapter: AdapterKey, tokens: list[int], read: Callable[[int, int], KV]) -> None:
        """Keep the KV of ``tokens``' whole blocks; ``read(start, end)`` copies it out of the engine's cache."""
        if self.max_bytes <= 0:
            return
        path = self._path(adapter, tokens, len(tokens))
        parent = path[-1] if path else None
        for block in path:
            self._blocks.move_to_end(block.key)
        for start in range(len(path) * BLOCK, len(tokens) - BLOCK + 1, BLOCK):
            chunk = tuple(tokens[start : start + BLOCK])
            key = (adapter, id(parent), chunk)
            block = _Block(parent, chunk, *read(start, start + BLOCK), key)
            self._blocks[key] = block
            self.bytes += block.nbytes
            if parent is not None:
                parent.children += 1
            parent = block
        self._evict()

    def _evict(self) -> None:
        while self.bytes > self.max_bytes and self._blocks:
            # The least recently used leaf (a parent stays while any prompt below it is kept).
            victim = next((b for b in self._blocks.values() if b.children == 0), None)
            if victim is None:
                return
            del self._blocks[victim.key]
            self.bytes -= victim.nbytes
            if victim.parent is not None:
                victim.parent.children -= 1

    def clear(self) -> None:
        """Forget every block (the engine thread owns the cache: only while nothing runs)."""
        self._blocks.clear()
        self.bytes = 0

    def stats(self) -> dict[str, int]:
        return {
            "prompt_cache_lookups": self.lookups,
            "prompt_cache_hits": self.hits,
            "prompt_cache_tokens_saved": self.tokens_saved,
            "prompt_cache_blocks": len(self._blocks),
            "prompt_cache_bytes": self.bytes,
        }
