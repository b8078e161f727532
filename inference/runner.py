"""A lean forward pass for Llama-family decoders over a preallocated KV cache.

Why not ``model(...)``: on a small model on CPU, transformers' generic
forward (mask construction, cache objects, output dataclasses, one module call
per projection) costs more than the matmuls. This runner reads the model's own
weights and submodules, so the numerics are the model's, and only the
orchestration is ours:

- q/k/v and gate/up projections run as one fused matmul each (weights
  concatenated once at start); LoRA deltas from ``BatchedLoraLinear`` wrappers
  are added to their slice of the fused output;
- RoPE cos/sin come from a table computed once by the model's rotary module;
- the KV cache is one tensor per layer, ``(max_batch, kv_heads, max_len, head_dim)``,
  allocated once; batch row i belongs to the i-th running request and the
  engine keeps running rows packed at the front;
- ``prefill`` packs new prompts end to end (no padding in the matmuls) and
  runs attention per prompt; ``decode`` advances every running row by one
  token at its own position.

Supported: Llama, Mistral, Qwen2 and Qwen3 (the same block structure).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .batched_lora import BatchedLoraLinear, LoraBatchState

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


class UnsupportedModel(Exception):
    pass


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _base(linear: nn.Module) -> nn.Linear:
    return linear.base if isinstance(linear, BatchedLoraLinear) else linear  # type: ignore[return-value]


def _fuse(linears: list[nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate projections that read the same input into one weight (and bias).

    The original parameters are re-pointed at slices of the fused tensor, so
    the model keeps working unchanged and no weight is held twice.
    """
    bases = [_base(m) for m in linears]
    weight = torch.cat([b.weight for b in bases], dim=0).contiguous()
    offset = 0
    for b in bases:
        b.weight.data = weight[offset : offset + b.out_features]
        offset += b.out_features
    if all(b.bias is None for b in bases):
        return weight, None
    bias = torch.cat([b.bias if b.bias is not None else weight.new_zeros(b.out_features) for b in bases])
    offset = 0
    for b in bases:
        if b.bias is not None:
            b.bias.data = bias[offset : offset + b.out_features]
        offset += b.out_features
    return weight, bias


def _add_lora(out: torch.Tensor, linear: nn.Module, x: torch.Tensor) -> None:
    if isinstance(linear, BatchedLoraLinear):
        linear.add_delta(x, out)


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None or type(norm).__name__ not in _PLAIN_RMS_NORMS:
        return norm(x)
    return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)


# RMSNorm classes computing weight * x * rsqrt(mean(x^2) + eps), which F.rms_norm matches bit for bit.
_PLAIN_RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})


@dataclass
class _Fused:
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor | None
    gate_up_weight: torch.Tensor
    q_size: int
    kv_size: int
    inter: int


class DecoderRunner:
    def __init__(self, model: Any, max_batch: int, max_len: int) -> None:
        config = model.config
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModel(
                f"the engine supports {sorted(SUPPORTED_MODEL_TYPES)} decoders, not {config.model_type!r}"
            )
        inner = model.model
        for attr in ("embed_tokens", "layers", "norm", "rotary_emb"):
            if not hasattr(inner, attr):
                raise UnsupportedModel(f"{type(model).__name__} has no model.{attr}")
        self.model = model
        self.embed = inner.embed_tokens
        self.layers = list(inner.layers)
        self.norm = inner.norm
        self.lm_head = model.lm_head
        attn0 = self.layers[0].self_attn
        self.head_dim = attn0.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.gqa = self.num_heads != self.num_kv_heads
        self.scaling = attn0.scaling
        # Sliding-window attention equals full attention while sequences are shorter than the window.
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        if window:
            max_len = min(max_len, int(window))
        self.max_len = min(max_len, int(getattr(config, "max_position_embeddings", max_len)))
        self.max_batch = max_batch
        dtype = self.embed.weight.dtype
        # Everything lives where the model does (CPU or a GPU); logits come back to the CPU for sampling.
        self.device = device = self.embed.weight.device
        shape = (max_batch, self.num_kv_heads, self.max_len, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        self._arange = torch.arange(max(max_batch * self.num_kv_heads, self.max_len), device=device)
        self._kv_heads = torch.arange(self.num_kv_heads, device=device)
        self.lora_state: LoraBatchState | None = None  # set by the engine: routes LoRA slots for packed prefill
        with torch.no_grad():
            self._fused = [self._fuse_layer(layer) for layer in self.layers]
            probe = torch.zeros(1, 1, dtype=dtype, device=device)
            cos, sin = inner.rotary_emb(probe, self._arange[: self.max_len].unsqueeze(0))
            self._cos, self._sin = cos[0].contiguous(), sin[0].contiguous()  # (max_len, head_dim)

    def _fuse_layer(self, layer: Any) -> _Fused:
        attn, mlp = layer.self_attn, layer.mlp
        qkv_w, qkv_b = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        gate_up_w, gate_up_b = _fuse([mlp.gate_proj, mlp.up_proj])
        if gate_up_b is not None:
            raise UnsupportedModel("MLP projections with bias are not supported")
        return _Fused(
            qkv_weight=qkv_w,
            qkv_bias=qkv_b,
            gate_up_weight=gate_up_w,
            q_size=self.num_heads * self.head_dim,
            kv_size=self.num_kv_heads * self.head_dim,
            inter=_base(mlp.gate_proj).out_features,
        )

    def _qkv(self, index: int, layer: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Hidden states -> q, k (with RoPE), v, each (batch, heads, seq, head_dim)."""
        fused, attn = self._fused[index], layer.self_attn
        b, t, _ = h.shape
        x = _rms_norm(layer.input_layernorm, h)
        qkv = F.linear(x, fused.qkv_weight, fused.qkv_bias)
        q, k, v = qkv.split([fused.q_size, fused.kv_size, fused.kv_size], dim=-1)
        _add_lora(q, attn.q_proj, x)
        _add_lora(k, attn.k_proj, x)
        _add_lora(v, attn.v_proj, x)
        v = v.view(b, t, -1, self.head_dim).transpose(1, 2)
        if hasattr(attn, "q_norm"):  # Qwen3 normalises per head before RoPE
            q = attn.q_norm(q.view(b, t, -1, self.head_dim)).transpose(1, 2)
            k = attn.k_norm(k.view(b, t, -1, self.head_dim)).transpose(1, 2)
            return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v
        # q and k sit side by side in the fused output: one RoPE pass covers both.
        qk = qkv[..., : fused.q_size + fused.kv_size].view(b, t, -1, self.head_dim).transpose(1, 2)
        qk = qk * cos + _rotate_half(qk) * sin
        return qk[:, : self.num_heads], qk[:, self.num_heads :], v

    def _finish_block(self, index: int, layer: Any, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """attn_out (batch, seq, heads * head_dim) -> output projection, residual, MLP."""
        fused, mlp = self._fused[index], layer.mlp
        h = h + layer.self_attn.o_proj(attn_out)
        x = _rms_norm(layer.post_attention_layernorm, h)
        gate_up = F.linear(x, fused.gate_up_weight)
        gate, up = gate_up.split([fused.inter, fused.inter], dim=-1)
        _add_lora(gate, mlp.gate_proj, x)
        _add_lora(up, mlp.up_proj, x)
        return h + mlp.down_proj(mlp.act_fn(gate) * up)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(_rms_norm(self.norm, h))

    def prefill(
        self,
        rows: int | Sequence[int],
        prompts: list[list[int]],
        slots: list[int] | None = None,
        cached: list[int] | None = None,
    ) -> torch.Tensor:
        """Run prompts into cache rows ``rows`` (or ``rows..`` from a first row); return last-position
        logits (m, vocab).

        ``slots`` gives each prompt's LoRA slot (0: none). ``cached[j]`` leading tokens of prompt
        j already have their KV in its row (``load_prefix``, or an earlier chunk): only the rest is run.
        """
        m = len(prompts)
        rows = range(rows, rows + m) if isinstance(rows, int) else rows
        done = cached or [0] * m
        lens = [len(p) - c for p, c in zip(prompts, done)]
        starts = [0]
        for n in lens:
            starts.append(starts[-1] + n)
        total = starts[-1]
        ids = torch.tensor([t for p, c in zip(prompts, done) for t in p[c:]], dtype=torch.long, device=self.device)
        ids = ids.unsqueeze(0)
        positions = torch.cat([self._arange[c : c + n] for c, n in zip(done, lens)])
        cos = self._cos.index_select(0, positions).view(1, 1, total, -1)
        sin = self._sin.index_select(0, positions).view(1, 1, total, -1)
        self._route_packed(slots, starts)
        h = self.embed(ids)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(i, layer, h, cos, sin)
            out = torch.empty(1, total, self.num_heads, self.head_dim, dtype=h.dtype, device=self.device)
            for j in range(m):
                a, z, c = starts[j], starts[j + 1], done[j]
                row = rows[j]
                self.k_cache[i][row, :, c : c + lens[j]] = k[0, :, a:z]
                self.v_cache[i][row, :, c : c + lens[j]] = v[0, :, a:z]
                if c == 0:
                    keys, values, visible = k[:, :, a:z], v[:, :, a:z], None
                else:  # the new tokens see the cached prefix and, causally, each other
                    end = c + lens[j]
                    keys, values = self.k_cache[i][row : row + 1, :, :end], self.v_cache[i][row : row + 1, :, :end]
                    visible = self._arange[:end].unsqueeze(0) <= self._arange[c:end].unsqueeze(1)
                o = F.scaled_dot_product_attention(
                    q[:, :, a:z],
                    keys,
                    values,
                    attn_mask=visible,
                    is_causal=visible is None,
                    scale=self.scaling,
                    enable_gqa=self.gqa,
                )
                out[0, a:z] = o[0].transpose(0, 1)
            h = self._finish_block(i, layer, h, out.view(1, total, -1))
        last = torch.tensor(starts[1:], device=self.device) - 1
        return self._logits(h[0, last]).cpu()

    def load_prefix(self, row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Put a cached prefix's KV (layers, kv_heads, length, head_dim) at the start of ``row``."""
        length = keys.shape[2]
        for layer, (kc, vc) in enumerate(zip(self.k_cache, self.v_cache)):
            kc[row, :, :length] = keys[layer]
            vc[row, :, :length] = values[layer]

    def read_kv(self, row: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of ``row``'s KV at positions ``start..end``, as (layers, kv_heads, end - start, head_dim)."""
        return (
            torch.stack([kc[row, :, start:end] for kc in self.k_cache]),
            torch.stack([vc[row, :, start:end] for vc in self.v_cache]),
        )

    def _route_packed(self, slots: list[int] | None, starts: list[int]) -> None:
        state = self.lora_state
        if state is None:
            return
        if not slots or not any(slots):
            state.set(None)
            return
        # Neighbouring prompts on the same slot share one span (the engine sorts them so).
        ranges: list[tuple[int, int, int]] = []
        for j, slot in enumerate(slots):
            if not slot:
                continue
            if ranges and ranges[-1][0] == slot and ranges[-1][2] == starts[j]:
                ranges[-1] = (slot, ranges[-1][1], starts[j + 1])
            else:
                ranges.append((slot, starts[j], starts[j + 1]))
        state.set_packed(ranges)

    def decode(self, n: int, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token for rows 0..n-1: ``tokens[i]`` goes at ``positions[i]``; return logits (n, vocab).

        Attention is plain matmuls: with one query per row that beats the
        fused CPU kernel, and grouped-query heads need no copies.
        """
        tokens, positions = tokens.to(self.device), positions.to(self.device)
        h = self.embed(tokens.view(n, 1))
        cos = self._cos.index_select(0, positions).view(n, 1, 1, -1)
        sin = self._sin.index_select(0, positions).view(n, 1, 1, -1)
        span = int(positions.max()) + 1
        groups = self.num_heads // self.num_kv_heads
        # Where each row's new key goes in a (rows * kv_heads * max_len, head_dim) view of the cache.
        slot_rows = (self._arange[:n].unsqueeze(1) * self.num_kv_heads + self._kv_heads).mul_(self.max_len)
        flat = slot_rows.add_(positions.unsqueeze(1)).view(-1)
        # Additive mask (n, 1, 1, span): a row sees only its own filled positions.
        mask = torch.zeros(n, 1, 1, span, dtype=h.dtype, device=self.device).masked_fill_(
            (self._arange[:span].unsqueeze(0) > positions.unsqueeze(1)).view(n, 1, 1, span), float("-inf")
        )
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(i, layer, h, cos, sin)
            kc, vc = self.k_cache[i], self.v_cache[i]
            kc.view(-1, self.head_dim).index_copy_(0, flat, k.reshape(-1, self.head_dim))
            vc.view(-1, self.head_dim).index_copy_(0, flat, v.reshape(-1, self.head_dim))
            keys, values = kc[:n, :, :span], vc[:n, :, :span]
            # (n, kv_heads, groups, d) x (n, kv_heads, d, span): heads sharing a kv head go together.
            qg = q.reshape(n, self.num_kv_heads, groups, self.head_dim)
            scores = torch.matmul(qg, keys.transpose(-1, -2)).mul_(self.scaling).add_(mask)
            out = torch.matmul(torch.softmax(scores, dim=-1), values).view(n, 1, -1)
            h = self._finish_block(i, layer, h, out)
        return self._logits(h[:, 0]).cpu()

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy a request's cache from row ``src`` to ``dst`` (keeps running rows packed)."""
        for k, v in zip(self.k_cache, self.v_cache):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]
