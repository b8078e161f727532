"""Domain adaptation: a LoRA that teaches a base model to be an NPC of this world.

The corpus (``inference.corpus``) is rendered through the same prompt builder
the engine serves with (``inference.prompt.build_prompt``: the model's own
chat template, the persona header, memory and context), and the replies are
what an NPC should say: short, in character, answering what was asked, with
``[[ACTION:...]]`` markup where the player asks for an action. One shared
"world" adapter is trained on every corpus role under many names (the cast),
so it serves any persona whose header names it, the demo persona included.

``ensure_world_adapter`` caches the result next to the base model, keyed by
the base model, the corpus and the training settings: a second call (or a
second ``bin/voyager run``) finds it and trains nothing.

This module does not import Django.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inference.corpus import corpus_digest, generate_dialogues
from inference.prompt import build_prompt
from inference.starter import _replace_dir as replace_dir

from .trainers import TrainConfig, TrainingData, train_adapter

MARKER = "voyager-adapter.json"


@dataclass(frozen=True)
class DomainConfig:
    examples: int = 880
    seed: int = 0
    lora_r: int = 16
    lora_alpha: int = 32
    lr: float = 1.5e-3
    epochs: float = 1.0
    batch_size: int = 8
    # What the engine leaves a prompt by default (its max_seq_len 512 less a reply's tokens).
    max_prompt_tokens: int = 448
    bf16: bool = True

    def key(self, base_model_id: str) -> str:
        blob = json.dumps({"base": base_model_id, "corpus": corpus_digest(), **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def domain_examples(tokenizer: Any, n: int, seed: int, max_prompt_tokens: int) -> list[dict[str, str]]:
    """``n`` SFT examples, ``{prompt, completion}``, rendered exactly as the engine renders an ask."""
    out = []
    for d in generate_dialogues(n, seed, cast=True):
        prompt = build_prompt(tokenizer, d.persona, d.memory, d.context, d.player, d.text, max_prompt_tokens)
        out.append({"prompt": prompt.text, "completion": d.reply})
    return out


def base_model_identity(base_model_dir: str | os.PathLike[str]) -> str:
    """What the adapter is bound to: the converted model's id and source hash, else the directory's config."""
    root = Path(base_model_dir)
    marker = root / "voyager.json"
    if marker.is_file():
        meta = json.loads(marker.read_text(encoding="utf-8"))
        return f"{meta.get('model_id') or meta.get('format')}:{meta.get('source_sha256') or meta.get('corpus_sha256')}"
    return hashlib.sha256((root / "config.json").read_bytes()).hexdigest()


def train_world_adapter(
    base_model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config: DomainConfig | None = None,
    progress_bar: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Train the world adapter into ``out_dir``, atomically (a temporary sibling renamed at the end)."""
    from transformers import AutoTokenizer

    config = config or DomainConfig()
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.training-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir, local_files_only=True)
    examples = domain_examples(tokenizer, config.examples, config.seed, config.max_prompt_tokens)
    tokens = sum(len(tokenizer.encode(e["prompt"] + e["completion"], add_special_tokens=False)) for e in examples)
    log(f"domain adapter: {len(examples)} dialogues ({tokens} tokens), LoRA r={config.lora_r}, lr {config.lr}")
    train_config = TrainConfig(
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        seed=config.seed,
        max_length=config.max_prompt_tokens + 64,
        batch_size=config.batch_size,
        micro_batch_size=config.batch_size,  # padding-free: one flat sequence per step, as measured
        sft_epochs=config.epochs,
        sft_lr=config.lr,
        sft_min_examples=1,
        pref_epochs=0,
        max_copies_per_reply=0,
        lr_schedule="cosine",
        warmup_steps=5,
        bf16=config.bf16,
        padding_free=True,
        progress_bar=progress_bar,
    )
    try:
        result = train_adapter(
            base_model_path=base_model_dir,
            init_adapter=None,
            data=TrainingData(sft=examples),
            out_dir=tmp,
            config=train_config,
            on_log=log,
        )
        meta = {
            "kind": "world",
            "base_model": base_model_identity(base_model_dir),
            "corpus_sha256": corpus_digest(),
            "config": asdict(config),
            "examples": len(examples),
            "tokens": tokens,
            "train_seconds": round(result.seconds, 1),
            "seconds": round(time.monotonic() - started, 1),
            "final_loss": result.loss_curve[-1]["loss"] if result.loss_curve else None,
        }
        (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"domain adapter written to {out} in {time.monotonic() - started:.0f} s")
    return out


def world_adapter_dir(base_model_dir: str | os.PathLike[str], config: DomainConfig | None = None) -> Path:
    """Where the cached adapter for this base model, corpus and config lives (beside the base model)."""
    config = config or DomainConfig()
    base = Path(base_model_dir).resolve()
    return base.parent / "adapters" / f"{base.name}-world-{config.key(base_model_identity(base))}"


def ensure_world_adapter(
    base_model_dir: str | os.PathLike[str],
    *,
    config: DomainConfig | None = None,
    progress_bar: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """The cached world adapter for this base model, trained first if there is none."""
    out = world_adapter_dir(base_model_dir, config)
    if (out / MARKER).is_file() and (out / "adapter_model.safetensors").is_file():
        return out
    return train_world_adapter(base_model_dir, out, config=config, progress_bar=progress_bar, log=log)
