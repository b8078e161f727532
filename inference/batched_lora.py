"""Many LoRA adapters in one forward pass: gather + bmm, one adapter per batch row.

Each targeted ``nn.Linear`` is replaced by ``BatchedLoraLinear``, which keeps
stacked adapter weights ``A: (slots + 1, in, R)`` and ``B: (slots + 1, R, out)``.
Before every forward the engine sets, once for all layers, which slot each
batch row uses; the wrapper then adds ``(x @ A[slot]) @ B[slot]`` per row.
Slot 0 is all zeros and means "no adapter". Adapters of smaller rank are
zero-padded to R and modules an adapter does not target stay zero for its
slot: both add exact zeros, so the math equals running each adapter alone.
PEFT's mixed batches loop over adapters in Python per layer; here the cost is
two batched matmuls per layer whatever the mix.
"""

from __future__ import annotations

import torch
from torch import nn

from .lora import LoadedAdapter


class LoraBatchState:
    """The per-forward routing shared by every wrapper of one model.

    Two layouts: ``slots`` gives one slot per batch row (decode: one token per
    row); ``ranges`` lists, for a packed single-row batch holding many
    prompts end to end (prefill), which token span uses which slot.
    """

    def __init__(self) -> None:
        self.slots: torch.Tensor | None = None  # (batch,) long
        self.ranges: list[tuple[int, int, int]] | None = None  # (slot, start, end) token spans
        # Bumped whenever routing or adapter weights change: wrappers cache their gathered A/B per version.
        self.version = 0

    def set(self, slots: torch.Tensor | None, *, changed: bool = True) -> None:
        """Per-row slots; None when no row has an adapter (the LoRA path is skipped).

        ``changed=False`` promises the rows map to the same slots as in the
        last call, so wrappers may reuse the weights they gathered then.
        """
        self.slots, self.ranges = slots, None
        if changed:
            self.version += 1

    def set_packed(self, ranges: list[tuple[int, int, int]] | None) -> None:
        """Token spans of a packed (1, tokens, features) batch and their slots; slot-0 spans omitted."""
        self.slots, self.ranges = None, ranges or None
        self.version += 1


class BatchedLoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, state: LoraBatchState, num_slots: int, rank: int) -> None:
        super().__init__()
        self.base = base
        self.state = state
        # LoRA weights stay in full precision whatever the base weights are: they are small, and a
        # persona's adapter should act as it was trained.
        device = base.weight.device
        self.A = torch.zeros(num_slots + 1, base.in_features, rank, dtype=torch.float32, device=device)
        self.B = torch.zeros(num_slots + 1, rank, base.out_features, dtype=torch.float32, device=device)
        self._gathered: tuple[int, torch.Tensor, torch.Tensor] | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # some model code reads .weight.dtype
        return self.base.weight

    def grow_rank(self, rank: int) -> None:
        extra = rank - self.A.shape[2]
        if extra > 0:
            self._gathered = None
            self.A = torch.nn.functional.pad(self.A, (0, extra))
            self.B = torch.nn.functional.pad(self.B, (0, 0, 0, extra))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        self.add_delta(x, y)
        return y

    def add_delta(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """Add this layer's LoRA term for the current routing to ``out`` in place.

        ``out`` may be a slice of a fused projection (the runner fuses q/k/v).
        """
        state = self.state
        if state.slots is not None:
            # x: (batch, seq, in). One gathered (in, R) and (R, out) per row.
            cached = self._gathered
            if cached is None or cached[0] != state.version:
                slots = state.slots.to(self.A.device)
                cached = (state.version, self.A.index_select(0, slots), self.B.index_select(0, slots))
                self._gathered = cached
            out.add_(torch.bmm(torch.bmm(x.float(), cached[1]), cached[2]).to(out.dtype))
        elif state.ranges is not None:
            # Packed (1, tokens, in): each span goes through its slot's A and B (views, no gather).
            for slot, start, end in state.ranges:
                out[0, start:end].add_(((x[0, start:end].float() @ self.A[slot]) @ self.B[slot]).to(out.dtype))


class LoraBank:
    """Owns the wrappers of one model and the adapter weights in each slot."""

    def __init__(self, model: nn.Module, num_slots: int) -> None:
        self.model = model
        self.num_slots = num_slots
        self.rank = 0
        self.state = LoraBatchState()
        self.wrappers: dict[str, BatchedLoraLinear] = {}
        self._slot_modules: list[set[str]] = [set() for _ in range(num_slots + 1)]

    def _wrap(self, name: str) -> BatchedLoraLinear:
        wrapper = self.wrappers.get(name)
        if wrapper is not None:
            return wrapper
        parent_name, _, child = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        base = getattr(parent, child)
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{name} is {type(base).__name__}, not Linear")
        wrapper = BatchedLoraLinear(base, self.state, self.num_slots, max(self.rank, 1))
        setattr(parent, child, wrapper)
        self.wrappers[name] = wrapper
        return wrapper

    def _grow(self, rank: int) -> None:
        for wrapper in self.wrappers.values():
            wrapper.grow_rank(rank)
        self.rank = rank

    def clear(self, slot: int) -> None:
        self.state.version += 1
        for name in self._slot_modules[slot]:
            self.wrappers[name].A[slot].zero_()
            self.wrappers[name].B[slot].zero_()
        self._slot_modules[slot] = set()

    def write(self, slot: int, adapter: LoadedAdapter) -> None:
        if not 1 <= slot <= self.num_slots:
            raise ValueError(f"slot {slot} out of range 1..{self.num_slots}")
        self.state.version += 1
        self.clear(slot)
        if adapter.rank > self.rank:
            self._grow(adapter.rank)
        for name, (a, b) in adapter.modules.items():
            wrapper = self._wrap(name)
            wrapper.grow_rank(self.rank)
            r = a.shape[1]
            wrapper.A[slot, :, :r] = a
            wrapper.B[slot, :r, :] = b
        self._slot_modules[slot] = set(adapter.modules)
