"""Train a persona's LoRA adapter with TRL: a short SFT on liked replies, then KTO (or DPO).

What ships is what ``benchmarks/rlhf.py`` measured on the starter model (the
README's RLHF section has the table):

- SFT alone moves the hidden-rule rate a lot but collapses the persona: at
  4 epochs × 1e-3 nearly every reply became "See you, <name>." (distinct-2
  0.25 → 0.16). Gentle SFT (1-2 epochs at 5e-4, each reply kept at most 3
  times) keeps the persona, and moves the rate a little (1 epoch) or enough
  with some loss of diversity (2 epochs).
- KTO alone (docs FINDINGS "Learning loop") turns the language into word salad:
  very "diverse", and the base model's log-probability of the replies falls
  from −0.66 to −2.4 nats per token.
- A short SFT, then KTO on the thumbs up and down with the model *before*
  training as the reference, reaches the rate of the longer SFT with more of
  the persona's variety: the default.

DPO replaces KTO when there are enough same-prompt preference pairs. Either
stage can be switched off in the config.

This module does not import Django: it takes plain lists and paths.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from inference.loading import bf16_is_fast
from inference.prompt import SPECIAL_TOKENS
from inference.token_guard import ForgedControlToken, guard_for

log = logging.getLogger("voyager.training")

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainConfig:
    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = LORA_TARGETS
    seed: int = 0
    max_length: int = 512
    batch_size: int = 8  # examples per optimiser step
    # Examples per forward pass (the rest of the batch is gradient accumulation): activations and
    # full-vocabulary logits scale with it, and batch_size at once held 8.6 GB on the real model.
    micro_batch_size: int = 2
    # Stage 1: a short SFT on liked replies (longer or bolder collapses the persona).
    sft_epochs: float = 1.0
    sft_lr: float = 5e-4
    sft_min_examples: int = 4
    # Stage 2: preference optimisation on the thumbs (KTO) or pairs (DPO).
    pref_epochs: float = 1.0
    pref_lr: float = 1e-4
    pref_beta: float = 0.1
    # The preference stage's reference: "start" (the model before training, as the active version
    # players rated: the stage's implicit KL keeps the persona near it) or "sft" (the model after
    # stage 1: the stage only sharpens what SFT learned).
    pref_reference: str = "start"
    # KTO: scales the dataset's balanced desirable/undesirable weights.
    desirable_scale: float = 1.0
    undesirable_scale: float = 1.0
    min_dpo_pairs: int = 16
    min_kto_examples: int = 16
    max_steps_cap: int = 2000
    # The dataset keeps at most this many copies of one reply (player names masked) on each side:
    # 47 liked "See you, <name>." taught the model to say nothing else (0 keeps every copy).
    max_copies_per_reply: int = 3
    # bf16 autocast where it is fast (CUDA, CPUs with AMX or AVX-512 BF16); the weights stay fp32.
    # Elsewhere it is emulated and slower, so it is left off there whatever this says.
    bf16: bool = True
    # The learning rate over a stage: constant (the nightly runs' gentle steps) or "cosine" (a long SFT).
    lr_schedule: str = "constant_with_warmup"
    warmup_steps: int = 0
    # SFT on one flat sequence per batch (attention kept within each example): no compute on padding.
    padding_free: bool = False
    # A live progress bar with its estimate of the time left (for a person at a terminal).
    progress_bar: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target_modules"] = list(self.target_modules)
        return out


@dataclass
class TrainingData:
    """What the dataset builder hands the trainer (already split and weighted)."""

    sft: list[dict[str, str]] = field(default_factory=list)  # {prompt, completion}
    kto: list[dict[str, Any]] = field(default_factory=list)  # {prompt, completion, label: bool}
    dpo: list[dict[str, str]] = field(default_factory=list)  # {prompt, chosen, rejected}
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


@dataclass
class TrainResult:
    method: str  # "sft", "dpo" or "kto": the last stage that ran
    stages: list[str]
    loss_curve: list[dict[str, Any]]
    seconds: float


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def lora_config(model, config, *, task_type: str):
    """A fresh LoRA (peft ``LoraConfig``) of ``config``'s rank and alpha on the target modules this
    model has (``q_proj``/``v_proj`` when it has none of them)."""
    from peft import LoraConfig

    present = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    targets = [t for t in config.target_modules if t in present] or ["q_proj", "v_proj"]
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        task_type=task_type,
    )


def load_policy(
    base_model_path: str | os.PathLike[str], init_adapter: str | os.PathLike[str] | None, config: TrainConfig
):
    """Base model with a trainable LoRA: the persona's active adapter if any, else a fresh one."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(
        base_model_path, dtype=torch.float32, use_safetensors=True, local_files_only=True
    )
    if init_adapter:
        model = PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True)
    else:
        model = get_peft_model(base, lora_config(base, config, task_type="CAUSAL_LM"))
    return model.to(device()), tokenizer


class _LossRecorder:
    """A TrainerCallback (built lazily so importing this module stays cheap)."""

    def __init__(self, stage: str, sink: list[dict[str, Any]], on_log: Callable[[str], None]):
        from transformers import TrainerCallback

        recorder = self

        class Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    point = {"stage": stage, "step": state.global_step, "loss": round(float(logs["loss"]), 5)}
                    for key in ("rewards/margins", "rewards/chosen", "rewards/rejected", "kl"):
                        if key in logs:
                            point[key] = round(float(logs[key]), 5)
                    recorder.sink.append(point)
                    recorder.on_log(f"{stage} step {state.global_step} loss {point['loss']}")

        self.sink, self.on_log, self.callback = sink, on_log, Callback()


def _progress_callback(index: int, count: int, on_progress: Callable[[float], None]):
    """A TrainerCallback that reports the share of all ``count`` stages done, this being stage ``index``."""
    from transformers import TrainerCallback

    class Callback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            on_progress((index + state.global_step / max(1, state.max_steps)) / count)

    return Callback()


def _common_args(config: TrainConfig, out: str, epochs: float, lr: float, n: int) -> dict[str, Any]:
    steps_per_epoch = max(1, -(-n // config.batch_size))
    # The largest forward pass within micro_batch_size that divides the batch evenly.
    micro = max(1, min(config.micro_batch_size, config.batch_size))
    while config.batch_size % micro:
        micro -= 1
    accumulation = config.batch_size // micro
    return {
        "output_dir": out,
        "learning_rate": lr,
        "num_train_epochs": epochs,
        "max_steps": min(config.max_steps_cap, max(1, int(steps_per_epoch * epochs))),
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": accumulation,
        "logging_steps": max(1, steps_per_epoch // 4),
        "save_strategy": "no",
        "report_to": [],
        "seed": config.seed,
        "data_seed": config.seed,
        "lr_scheduler_type": config.lr_schedule,
        "warmup_steps": config.warmup_steps,
        "dataloader_num_workers": 0,
        "disable_tqdm": not config.progress_bar,
        "use_cpu": device() == "cpu",
        "bf16": config.bf16 and bf16_is_fast(),
        "fp16": False,
        # TRL turns it on by default; a small LoRA model has the memory, and recomputing costs time.
        "activation_checkpointing": False,
        "remove_unused_columns": False,
    }


def _frozen_copy(model):
    """The current policy merged into a plain model: the reference for the preference stage."""
    ref = copy.deepcopy(model).merge_and_unload()
    ref.eval()
    ref.requires_grad_(False)
    return ref


def train_adapter(
    *,
    base_model_path: str | os.PathLike[str],
    init_adapter: str | os.PathLike[str] | None,
    data: TrainingData,
    out_dir: str | os.PathLike[str],
    config: TrainConfig | None = None,
    on_log: Callable[[str], None] = lambda _m: None,
    on_progress: Callable[[float], None] = lambda _f: None,
) -> TrainResult:
    """Train and ``save_pretrained`` the adapter (safetensors) into ``out_dir``. ``on_progress`` hears
    the share of the training done (0 to 1, over all stages) after every optimiser step."""
    import time

    from datasets import Dataset

    config = config or TrainConfig()
    started = time.monotonic()
    torch.manual_seed(config.seed)
    model, tokenizer = load_policy(base_model_path, init_adapter, config)
    data = without_control_tokens(data, tokenizer, on_log)
    curve: list[dict[str, Any]] = []
    stages: list[str] = []
    use_dpo = len(data.dpo) >= config.min_dpo_pairs
    use_kto = not use_dpo and len(data.kto) >= config.min_kto_examples and _has_both_labels(data.kto)
    use_pref = config.pref_epochs > 0 and (use_dpo or use_kto)
    use_sft = config.sft_epochs > 0 and len(data.sft) >= config.sft_min_examples
    stage_count = max(1, use_sft + use_pref)
    if config.pref_reference not in ("sft", "start"):
        raise ValueError(f"pref_reference: {config.pref_reference!r} is not 'sft' or 'start'")
    ref = _frozen_copy(model) if use_pref and config.pref_reference == "start" else None
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    # Scratch lives inside out_dir: whoever cleans up after a dead run removes it too.
    with tempfile.TemporaryDirectory(prefix="trl-", dir=out_dir) as scratch:
        if use_sft:
            from trl import SFTConfig, SFTTrainer

            args = SFTConfig(
                **_common_args(config, scratch, config.sft_epochs, config.sft_lr, len(data.sft)),
                # Padding-free batches are not truncated: the caller's prompts must already fit.
                max_length=None if config.padding_free else config.max_length,
                completion_only_loss=True,
                packing=False,
                padding_free=config.padding_free,
                dataset_num_proc=None,
            )
            recorder = _LossRecorder("sft", curve, on_log)
            on_log(f"sft: {len(data.sft)} liked replies, {args.max_steps} steps, lr {config.sft_lr}")
            SFTTrainer(
                model=model,
                args=args,
                train_dataset=Dataset.from_list(data.sft),
                processing_class=tokenizer,
                callbacks=[recorder.callback, _progress_callback(0, stage_count, on_progress)],
            ).train()
            stages.append("sft")
        if use_pref:
            ref = ref if ref is not None else _frozen_copy(model)
            if use_dpo:
                from trl import DPOConfig, DPOTrainer

                args = DPOConfig(
                    **_common_args(config, scratch, config.pref_epochs, config.pref_lr, len(data.dpo)),
                    max_length=config.max_length,
                    beta=config.pref_beta,
                    dataset_num_proc=None,
                )
                trainer_cls, dataset, stage = DPOTrainer, data.dpo, "dpo"
            else:
                from trl import KTOConfig, KTOTrainer

                args = KTOConfig(
                    **_common_args(config, scratch, config.pref_epochs, config.pref_lr, len(data.kto)),
                    max_length=config.max_length,
                    beta=config.pref_beta,
                    desirable_weight=data.desirable_weight * config.desirable_scale,
                    undesirable_weight=data.undesirable_weight * config.undesirable_scale,
                    dataset_num_proc=None,
                )
                trainer_cls, dataset, stage = KTOTrainer, data.kto, "kto"
            on_log(
                f"{stage}: {len(dataset)} examples, {args.max_steps} steps, lr {config.pref_lr}, "
                f"beta {config.pref_beta}, reference: the {config.pref_reference} model"
            )
            recorder = _LossRecorder(stage, curve, on_log)
            trainer_cls(
                model=model,
                ref_model=ref,
                args=args,
                train_dataset=Dataset.from_list(dataset),
                processing_class=tokenizer,
                callbacks=[recorder.callback, _progress_callback(len(stages), stage_count, on_progress)],
            ).train()
            stages.append(stage)
            del ref
    if not stages:
        raise ValueError("nothing to train on: no liked replies for SFT and too little preference data")
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return TrainResult(method=stages[-1], stages=stages, loss_curve=curve, seconds=time.monotonic() - started)


def without_control_tokens(data: TrainingData, tokenizer, on_log: Callable[[str], None]) -> TrainingData:
    """The replies as plain text: a player's correction that spells "<|im_end|>" must not teach the
    model to write a control token. (Prompts are the engine's, guarded when they were rendered.)"""
    guard = guard_for(tokenizer, SPECIAL_TOKENS)
    dropped = 0

    def cleaned(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
        nonlocal dropped
        out = []
        for row in rows:
            try:
                texts = {key: guard.clean(row[key]) for key in keys}
            except ForgedControlToken:
                texts = {}
            if texts and all(text.strip() for text in texts.values()):
                out.append({**row, **texts})
            else:
                dropped += 1
        return out

    clean = replace(
        data,
        sft=cleaned(data.sft, ("completion",)),
        kto=cleaned(data.kto, ("completion",)),
        dpo=cleaned(data.dpo, ("chosen", "rejected")),
    )
    if dropped:
        on_log(f"dropped {dropped} examples that were nothing but control tokens")
    return clean


def _has_both_labels(rows: list[dict[str, Any]]) -> bool:
    labels = {bool(r["label"]) for r in rows}
    return labels == {True, False}
