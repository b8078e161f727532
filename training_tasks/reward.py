"""A reward model learned from the persona's ratings (TRL's ``RewardTrainer``), for the evaluation gate.

The reward model is the base model with a one-output score head and a LoRA
(``AutoModelForSequenceClassification``, ``num_labels=1``, PEFT ``SEQ_CLS``),
trained with the Bradley–Terry loss on pairs from the same training split the
policy learns from (the dataset snapshot): the same-prompt preference pairs
first, then liked × disliked replies across prompts, sampled and capped so that
training stays short. The held-out split is never trained on; the model's AUC
on it (liked above disliked) says how well it learned the players' taste.

With ``GateConfig.reward_model = "on"`` the gate scores the replies the active
version and the candidate write on the held-out prompts, and refuses a
candidate whose mean reward (``rm_reward``) does not rise. A reward model only
knows what the ratings showed it, so it rewards whatever scored well there,
including one reply said to everyone or greeting words in word salad:
``benchmarks/gate.py`` measures it against the log-probability gate.

This module does not import Django: it takes plain lists and paths.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from training_tasks.trainers import (
    LORA_TARGETS,
    TrainConfig,
    TrainingData,
    _common_args,
    _LossRecorder,
    device,
    lora_config,
)

if TYPE_CHECKING:
    from training_tasks.dataset import HeldOut

log = logging.getLogger("voyager.training")


@dataclass(frozen=True)
class RewardModelConfig:
    lora_r: int = 8
    lora_alpha: int = 16
    target_modules: tuple[str, ...] = LORA_TARGETS
    learning_rate: float = 5e-4
    epochs: float = 1.0
    # 8 pairs (16 sequences) a step: at 16, the attention of the starter model's long prompts took
    # about 1 GB of activations.
    batch_size: int = 8
    # Pairs trained on: every same-prompt pair (up to this cap), then liked × disliked across prompts.
    # On the starter model's ratings, 1,024 pairs took 107 s on two CPU cores and the training
    # accuracy passed 0.95 halfway through: 512 is enough.
    max_pairs: int = 512
    max_length: int = 512
    seed: int = 0


@dataclass
class RewardModel:
    model: Any  # a PEFT-wrapped AutoModelForSequenceClassification, eval mode
    tokenizer: Any
    pairs: int
    seconds: float
    loss_curve: list[dict[str, Any]] = field(default_factory=list)


def reward_pairs(data: TrainingData, *, max_pairs: int, seed: int = 0) -> list[dict[str, str]]:
    """``{chosen, rejected}`` texts (prompt included: the implicit-prompt format) to train on.

    Same-prompt pairs (``data.dpo``) first; the rest of the budget goes to liked × disliked replies
    across prompts (``data.kto``), sampled without repeats.
    """
    rng = random.Random(seed)
    same = [{"chosen": p["prompt"] + p["chosen"], "rejected": p["prompt"] + p["rejected"]} for p in data.dpo]
    if len(same) > max_pairs:
        same = rng.sample(same, max_pairs)
    liked = [r["prompt"] + r["completion"] for r in data.kto if r["label"]]
    disliked = [r["prompt"] + r["completion"] for r in data.kto if not r["label"]]
    budget = max(0, max_pairs - len(same))
    total = len(liked) * len(disliked)
    picks = range(total) if total <= budget else rng.sample(range(total), budget)
    cross = [{"chosen": liked[i // len(disliked)], "rejected": disliked[i % len(disliked)]} for i in picks]
    pairs = same + cross
    rng.shuffle(pairs)
    return pairs


def load_reward_base(base_model_path: str | os.PathLike[str], config: RewardModelConfig):
    """The base model with a fresh one-output score head and a trainable LoRA (PEFT ``SEQ_CLS``)."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        # The score is read at the last token that is not padding: padding must be a real token id.
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(config.seed)  # the score head starts random
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model_path, num_labels=1, dtype=torch.float32, use_safetensors=True, local_files_only=True
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    # SEQ_CLS keeps the score head trainable (modules_to_save).
    return get_peft_model(model, lora_config(model, config, task_type="SEQ_CLS")).to(device()), tokenizer


def train_reward_model(
    *,
    base_model_path: str | os.PathLike[str],
    data: TrainingData,
    config: RewardModelConfig | None = None,
    on_log: Callable[[str], None] = lambda _m: None,
) -> RewardModel:
    """Train a reward model on the training split's pairs; it stays in memory (nothing is saved)."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    config = config or RewardModelConfig()
    started = time.monotonic()
    pairs = reward_pairs(data, max_pairs=config.max_pairs, seed=config.seed)
    if not pairs:
        raise ValueError("no pairs to train a reward model on: it needs both liked and disliked replies")
    model, tokenizer = load_reward_base(base_model_path, config)
    common = TrainConfig(batch_size=config.batch_size, seed=config.seed, max_length=config.max_length)
    curve: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trl-reward-") as scratch:
        args = RewardConfig(
            **_common_args(common, scratch, config.epochs, config.learning_rate, len(pairs)),
            max_length=config.max_length,
            dataset_num_proc=None,
        )
        on_log(f"reward model: {len(pairs)} pairs, {args.max_steps} steps, lr {config.learning_rate}")
        RewardTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(pairs),
            processing_class=tokenizer,
            callbacks=[_LossRecorder("reward", curve, on_log).callback],
        ).train()
    model.eval()
    return RewardModel(model, tokenizer, len(pairs), time.monotonic() - started, curve)


def reward_scores(
    model, tokenizer, items: Sequence[tuple[str, str]], batch_size: int = 16, max_length: int = 512
) -> list[float]:
    """The reward of each ``completion`` after ``prompt``, tokenized as ``RewardTrainer`` trains.

    (Its text gets the eos token appended, then the tokenizer's default encoding; a text longer than
    ``max_length`` keeps its end, the reply.)
    """
    eos = tokenizer.eos_token or ""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(items), batch_size):
        seqs = []
        for prompt, completion in items[start : start + batch_size]:
            text = prompt + completion
            if eos and not text.endswith(eos):
                text += eos
            seqs.append(tokenizer(text)["input_ids"][-max_length:])
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(dev), attention_mask=mask.to(dev)).logits
        out.extend(float(x) for x in logits[:, 0].float())
    return out


def reward_heldout_metrics(reward_model: RewardModel, heldout: HeldOut) -> dict[str, Any]:
    """The reward model's ranking of the held-out split: ``rm_heldout_auc`` (liked above disliked)."""
    from training_tasks.dataset import heldout_ranking

    ranking = heldout_ranking(lambda items: reward_scores(reward_model.model, reward_model.tokenizer, items), heldout)
    liked, disliked = ranking["liked"], ranking["disliked"]
    metrics: dict[str, Any] = {"rm_heldout_auc": ranking["auc"], "rm_pairs": reward_model.pairs}
    if ranking["pair_accuracy"] is not None:
        metrics["rm_pair_accuracy"] = ranking["pair_accuracy"]
    if liked and disliked:
        metrics["rm_liked"] = round(sum(liked) / len(liked), 4)
        metrics["rm_disliked"] = round(sum(disliked) / len(disliked), 4)
    metrics["rm_train_seconds"] = round(reward_model.seconds, 2)
    return metrics
