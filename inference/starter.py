"""Build the starter base model: corpus -> byte-level BPE -> small Llama, deterministic per seed.

The starter model exists so the platform runs with no download: it is small
enough to train on a laptop CPU in a few minutes and learns only the prompt
format and the NPC reply style (including ``[[ACTION:...]]`` markup). The
``tiny`` size is for tests.

Determinism: the corpus comes from ``random.Random(seed)``, the tokenizer
trainer is deterministic for the same input, and weights and batch order come
from ``torch.manual_seed(seed)``; the same seed on the same machine and torch
build gives the same weights.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .corpus import corpus_digest, generate_dialogues, render_training_text
from .prompt import END, PAD, SPECIAL_TOKENS

FORMAT = "voyager-starter-v1"
MARKER_FILE = "voyager.json"


@dataclass(frozen=True)
class SizeSpec:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_positions: int
    dialogues: int
    block_size: int
    batch_size: int
    steps: int
    lr: float


SIZES: dict[str, SizeSpec] = {
    # ~3.7M parameters; about 2.5 minutes on 2 idle CPU cores.
    "starter": SizeSpec(
        vocab_size=2048,
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=4,
        intermediate_size=688,
        max_positions=1024,
        dialogues=6000,
        block_size=256,
        batch_size=8,
        steps=240,
        lr=2.5e-3,
    ),
    # For tests: seconds to build, grouped-query attention so that path is exercised.
    "tiny": SizeSpec(
        vocab_size=384,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=128,
        max_positions=512,
        dialogues=400,
        block_size=128,
        batch_size=8,
        steps=120,
        lr=1e-2,
    ),
}


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (every byte is a token, so any text encodes) with our role tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    # The trainer would count role tokens as text; they are whole tokens anyway.
    plain = [_strip_specials(t) for t in texts]
    tok.train_from_iterator(plain, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END,
        pad_token=PAD,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (END, PAD)],
        clean_up_tokenization_spaces=False,
    )


def _strip_specials(text: str) -> str:
    for special in SPECIAL_TOKENS:
        text = text.replace(special, "\n")
    return text


def make_config(spec: SizeSpec, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(END),
        bos_token_id=None,
    )


def _blocks(token_ids: list[int], block_size: int) -> torch.Tensor:
    """Pack the token stream into fixed blocks: no padding, every position trains."""
    n = len(token_ids) // block_size
    return torch.tensor(token_ids[: n * block_size], dtype=torch.long).view(n, block_size)


def _lr_at(step: int, spec: SizeSpec) -> float:
    warmup = max(1, spec.steps // 15)
    if step < warmup:
        return spec.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, spec.steps - warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_model(spec: SizeSpec, tokenizer, texts: list[str], seed: int, log: Callable[[str], None]):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(make_config(spec, tokenizer))
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.encode(text, add_special_tokens=False))
    blocks = _blocks(ids, spec.block_size)
    log(f"training on {len(ids)} tokens ({blocks.shape[0]} blocks), {spec.steps} steps")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(blocks.shape[0], generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.95))
    model.train()
    loss_value = float("nan")
    cursor = 0
    for step in range(spec.steps):
        if cursor + spec.batch_size > len(order):
            order, cursor = torch.randperm(blocks.shape[0], generator=gen), 0
        batch = blocks[order[cursor : cursor + spec.batch_size]]
        cursor += spec.batch_size
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, spec)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if step % 50 == 0 or step == spec.steps - 1:
            log(f"step {step + 1}/{spec.steps} loss {loss_value:.3f}")
    model.eval()
    return model, len(ids), loss_value


def build_starter_model(
    out_dir: str | os.PathLike[str],
    *,
    size: str = "starter",
    seed: int = 0,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> Path:
    """Build a starter model into ``out_dir`` atomically and return its path.

    Everything is written to a temporary sibling directory first and renamed
    into place at the end, so a crash never leaves a half-written model where
    the loader will look.
    """
    import transformers

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    spec = SIZES[size]
    out = Path(out_dir).resolve()
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists (use force=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = out.parent / f".{out.name}.building-{uuid.uuid4().hex[:8]}"
    try:
        dialogues = generate_dialogues(spec.dialogues, seed)
        texts = [render_training_text(d) for d in dialogues]
        tokenizer = train_tokenizer(texts, spec.vocab_size)
        tokenizer.model_max_length = spec.max_positions
        log(f"tokenizer: {len(tokenizer)} tokens from {len(texts)} dialogues")
        model, n_tokens, final_loss = train_model(spec, tokenizer, texts, seed, log)
        end_id = tokenizer.convert_tokens_to_ids(END)
        model.generation_config.eos_token_id = end_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = None
        tmp.mkdir()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = {
            "format": FORMAT,
            "size": size,
            "seed": seed,
            "spec": asdict(spec),
            "parameters": sum(p.numel() for p in model.parameters()),
            "training_tokens": n_tokens,
            "final_loss": round(final_loss, 4),
            "corpus_sha256": corpus_digest(),
            "build_seconds": round(time.monotonic() - started, 1),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
        (tmp / MARKER_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"starter model ({size}, seed {seed}) written to {out} in {time.monotonic() - started:.1f}s")
    return out


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is swapped out, then removed."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
