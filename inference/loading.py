"""Load a base model directory (the starter model or any HF causal LM) for serving.

Weights must be safetensors: a ``pytorch_model.bin`` is a pickle and can run
code when loaded, so a directory that only has those is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .prompt import END, STOP_TOKENS
from .starter import MARKER_FILE

WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def bf16_is_fast() -> bool:
    """bf16 pays on CUDA and on CPUs with bf16 matrix units; elsewhere it is emulated and slower."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def weight_dtype(name: str) -> torch.dtype:
    """The base model's weights for a setting's value: ``auto`` is bfloat16 where that is fast."""
    if name == "auto":
        return torch.bfloat16 if bf16_is_fast() else torch.float32
    try:
        return WEIGHT_DTYPES[name]
    except KeyError:
        raise ValueError(f"weights must be auto, {' or '.join(WEIGHT_DTYPES)}, not {name!r}") from None


class ModelLoadError(Exception):
    """The directory is not a servable causal language model; the message says why."""


@dataclass(frozen=True)
class ModelInfo:
    path: str
    model_type: str
    architecture: str
    num_parameters: int
    vocab_size: int
    max_positions: int
    uses_chat_template: bool
    stop_token_ids: tuple[int, ...]
    voyager: dict[str, Any] | None = field(default=None)


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel (causal LM), eval mode
    tokenizer: Any  # a transformers tokenizer
    info: ModelInfo


def _check_directory(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ModelLoadError(f"model directory {path} does not exist (build one with `manage.py build_starter_model`)")
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model directory")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from exc
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.glob("*.bin"))
        hint = f" (found {', '.join(pickles)}: pickled weights are refused)" if pickles else ""
        raise ModelLoadError(f"{path} has no .safetensors weights{hint}")
    return config


def _stop_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    ids: set[int] = set()
    unk = getattr(tokenizer, "unk_token_id", None)
    for token in STOP_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != unk and tid >= 0:
            ids.add(tid)
    for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return tuple(sorted(ids))


def inference_device(name: str) -> torch.device:
    """Where the engine runs for a setting's value: ``auto`` is the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def load_base_model(
    path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    root = Path(path).resolve()
    raw_config = _check_directory(root)
    model_type = raw_config.get("model_type", "")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(f"{root}: model_type {model_type!r} is not a causal language model")
    try:
        config = AutoConfig.from_pretrained(root, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            root, config=config, dtype=dtype, use_safetensors=True, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
    except Exception as exc:  # transformers raises many types; the caller needs one
        raise ModelLoadError(f"could not load {root}: {type(exc).__name__}: {exc}") from exc
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        # Padding is only ever masked out, so any real token will do.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(0)
    voyager = None
    marker = root / MARKER_FILE
    if marker.is_file():
        voyager = json.loads(marker.read_text(encoding="utf-8"))
    info = ModelInfo(
        path=str(root),
        model_type=model_type,
        architecture=type(model).__name__,
        num_parameters=sum(p.numel() for p in model.parameters()),
        vocab_size=int(model.get_input_embeddings().weight.shape[0]),
        max_positions=int(getattr(config, "max_position_embeddings", 0) or 2048),
        uses_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        stop_token_ids=_stop_ids(model, tokenizer),
        voyager=voyager,
    )
    if not info.stop_token_ids:
        raise ModelLoadError(f"{root}: the tokenizer has no end-of-sequence token ({END} or eos)")
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)
