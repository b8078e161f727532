"""A smoke generation: does the base model with this adapter still say something sensible-shaped?

Structural checks (names, shapes, ranks) cannot see the values. An adapter whose weights are
NaN, infinite, or so large they overflow the activations passes them and then ruins every reply
it serves. This loads a private copy of the base model (``loading.load_base_model``), reads the
adapter with the serving loader (``lora.load_adapter``: the same parsing, checks and scale as the
engine) and folds it into the copy's weights (``lora.merge_adapter``), then decodes greedily from a
fixed prompt, checking at every step that the logits are finite. It passes when at least
``min_tokens`` tokens come out before an end token.

Faults of the adapter raise ``SmokeFailed`` with a reason fit to show its author; a base model
that cannot load raises ``loading.ModelLoadError`` (the server's fault, not the adapter's).
This module does not import Django.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .loading import load_base_model
from .lora import AdapterError, load_adapter, merge_adapter
from .prompt import PersonaSpec, Sampling, build_prompt

PERSONA = PersonaSpec(
    slug="smoke-test",
    name="Tester",
    system_prompt="You are a friendly villager in a voxel world. Answer briefly.",
    traits=("friendly",),
    sampling=Sampling(temperature=0.0),
)
PLAYER, TEXT = "visitor", "Hello! Who are you, and what do you do here?"
MAX_TOKENS = 8
MIN_TOKENS = 2


class SmokeFailed(Exception):
    """The adapter breaks the model; the message says how, without server paths."""


@dataclass(frozen=True)
class SmokeResult:
    tokens: int  # generated before an end token (at most max_tokens)
    text: str
    max_abs_logit: float
    seconds: float
    device: str

    def to_dict(self) -> dict:
        return asdict(self)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _adapter_fault(exc: AdapterError, root: Path) -> SmokeFailed:
    # The loader names files by their full path; the author knows them by their names.
    message = str(exc).replace(str(root) + os.sep, "").replace(str(root), "the adapter")
    return SmokeFailed(message)


def smoke_generate(
    base_model_path: str | os.PathLike[str],
    adapter_path: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
    max_tokens: int = MAX_TOKENS,
    min_tokens: int = MIN_TOKENS,
    device: str | None = None,
) -> SmokeResult:
    started = time.monotonic()
    device = device or _device()
    loaded = load_base_model(base_model_path)
    model, tokenizer = loaded.model, loaded.tokenizer
    root = Path(adapter_path)
    try:
        adapter = load_adapter(root, model, expected_sha256=expected_sha256)
    except AdapterError as exc:
        raise _adapter_fault(exc, root) from None
    merge_adapter(model, adapter)
    model.to(device)
    prompt = build_prompt(tokenizer, PERSONA, [], None, PLAYER, TEXT, max(16, loaded.info.max_positions - max_tokens))
    ids = torch.tensor([prompt.input_ids], dtype=torch.long, device=device)
    stops = set(loaded.info.stop_token_ids)
    out: list[int] = []
    peak = 0.0
    with torch.no_grad():
        for step in range(max_tokens):
            logits = model(input_ids=ids).logits.float()
            # The whole sequence on the first step (the prompt's positions too), then the new one.
            checked = logits if step == 0 else logits[:, -1]
            if not torch.isfinite(checked).all():
                where = "reading the prompt" if step == 0 else f"at generated token {step + 1}"
                raise SmokeFailed(f"the model's output became NaN or infinite {where}: the adapter's weights break it")
            peak = max(peak, float(checked.abs().max()))
            token = int(logits[0, -1].argmax())
            if token in stops:
                break
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
    if len(out) < min_tokens:
        raise SmokeFailed(
            f"the model said {len(out)} token(s) before ending its reply to a greeting; "
            f"a usable adapter says at least {min_tokens}"
        )
    text = tokenizer.decode(out, skip_special_tokens=True)
    return SmokeResult(
        tokens=len(out),
        text=text[:200],
        max_abs_logit=round(peak, 3),
        seconds=round(time.monotonic() - started, 3),
        device=device,
    )
