"""Read PEFT LoRA adapter directories safely and map them onto a base model.

An adapter is untrusted upload data. We read only ``adapter_config.json`` and
``adapter_model.safetensors`` (safetensors never runs code; a ``.bin`` pickle
is refused), check every tensor name and shape against the base model, and
return plain tensors: ``A`` as (in, r) and ``B`` as (r, out) with the LoRA
scale already folded into ``B``, ready for the engine's batched matmul.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILES = ("adapter_model.bin", "pytorch_model.bin")
# A LoRA for a small NPC model is megabytes; this bounds what a bad upload can cost.
MAX_WEIGHTS_BYTES = 1 << 30
# PEFT's saved tensor names: "[base_model.model.]<module>.lora_<A|B>[.<adapter name>].weight".
# The one grammar for adapter tensors: the upload check (portal.adapters) parses names with it too, and
# accepts only the form PEFT itself loads ("base_model.model.<module>.lora_<A|B>.weight").
LORA_KEY_RE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
# PEFT's LoraConfig defaults: a config that leaves r or lora_alpha out means these to PEFT (training, the
# gate), so it means them to the engine too.
PEFT_DEFAULT_R = 8
PEFT_DEFAULT_ALPHA = 8
# Options under which PEFT builds something other than plain LoRA on Linear layers: the engine serves none.
UNSUPPORTED_OPTIONS = (
    ("use_dora", "DoRA"),
    ("lora_bias", "LoRA bias"),
    ("fan_in_fan_out", "fan_in_fan_out"),
    ("layer_replication", "layer_replication"),
    ("target_parameters", "target_parameters"),
    ("trainable_token_indices", "trainable_token_indices"),
)


class AdapterError(Exception):
    """The adapter cannot be used; the message names the file, tensor or module at fault."""


@dataclass(frozen=True)
class LoadedAdapter:
    path: str
    sha256: str
    rank: int  # the largest rank over its modules
    # module name in the base model -> (A: (in, r), B: (r, out) * scale)
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_adapter_config(root: Path) -> dict[str, Any]:
    config_path = root / CONFIG_FILE
    if not config_path.is_file():
        raise AdapterError(f"{root}: missing {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path}: expected a JSON object")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"{config_path}: peft_type {config.get('peft_type')!r} is not LORA")
    for flag, what in UNSUPPORTED_OPTIONS:
        if config.get(flag):
            raise AdapterError(f"{config_path}: {what} adapters are not supported")
    if config.get("modules_to_save"):
        raise AdapterError(
            f"{config_path}: modules_to_save {config['modules_to_save']} is not supported (LoRA weights only)"
        )
    return config


def _pattern_value(patterns: dict[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern: a key matches a module name suffix (regex)."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def module_rank(config: dict[str, Any], module: str) -> int:
    """The rank the config gives ``module``, as PEFT reads it (``rank_pattern``, else ``r``)."""
    return int(_pattern_value(config.get("rank_pattern"), module, config.get("r", PEFT_DEFAULT_R)))


def module_scale(config: dict[str, Any], module: str, rank: int) -> float:
    """The factor the engine folds into ``B`` for ``module``: alpha / r (alpha / sqrt(r) with rsLoRA)."""
    alpha = float(_pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", PEFT_DEFAULT_ALPHA)))
    return alpha / (rank**0.5) if config.get("use_rslora") else alpha / rank


def _read_tensors(weights: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    size = weights.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise AdapterError(f"{weights}: {size} bytes is over the {MAX_WEIGHTS_BYTES} byte limit")
    try:
        # safe_open parses and checks the header before any tensor is read.
        with safe_open(str(weights), framework="pt") as fh:
            return {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:  # SafetensorError, OSError, ValueError...
        raise AdapterError(f"{weights}: corrupt safetensors file ({exc})") from exc


def _linear_dims(model: nn.Module, name: str) -> tuple[int, int]:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise AdapterError(f"unknown module {name!r}: the base model has no such module") from None
    base = getattr(module, "base", module)  # the engine wraps targeted linears
    if not isinstance(base, nn.Linear):
        raise AdapterError(f"module {name!r} is a {type(base).__name__}, only Linear layers can take LoRA here")
    return base.in_features, base.out_features


def load_adapter(
    path: str | Path, base_model: nn.Module, *, expected_sha256: str | None = None, dtype: torch.dtype = torch.float32
) -> LoadedAdapter:
    root = Path(path)
    if not root.is_dir():
        raise AdapterError(f"adapter directory {root} does not exist")
    config = read_adapter_config(root)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        pickles = [name for name in PICKLE_FILES if (root / name).exists()]
        if pickles:
            raise AdapterError(f"{root}: only pickled weights ({pickles[0]}); refusing to unpickle, upload safetensors")
        raise AdapterError(f"{root}: missing {WEIGHTS_FILE}")
    digest = file_sha256(weights)
    if expected_sha256 and digest != expected_sha256.lower():
        raise AdapterError(f"{weights}: sha256 {digest[:12]}… does not match the registered {expected_sha256[:12]}…")
    tensors = _read_tensors(weights)
    if not tensors:
        raise AdapterError(f"{weights}: contains no tensors")

    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = LORA_KEY_RE.match(key)
        if match is None:
            raise AdapterError(f"{weights}: unexpected tensor {key!r} (only lora_A/lora_B weights are supported)")
        parts.setdefault(match["module"], {})[match["part"]] = tensor

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, pair in sorted(parts.items()):
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{weights}: module {name!r} has lora_{''.join(pair)} but not both lora_A and lora_B")
        a, b = pair["A"], pair["B"]
        in_features, out_features = _linear_dims(base_model, name)
        r = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or a.shape != (r, in_features) or b.shape != (out_features, r):
            raise AdapterError(
                f"{weights}: wrong shape for {name!r}: lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)}; "
                f"the base layer needs ({r}, {in_features}) and ({out_features}, {r})"
            )
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterError(f"{weights}: non-finite values in {name!r}")
        declared_r = module_rank(config, name)
        if declared_r != r:
            raise AdapterError(f"{weights}: {name!r} has rank {r} but the config says {declared_r}")
        scale = module_scale(config, name, r)
        modules[name] = (a.to(dtype).t().contiguous(), (b.to(dtype).t() * scale).contiguous())
    return LoadedAdapter(
        path=str(root), sha256=digest, rank=max(a.shape[1] for a, _ in modules.values()), modules=modules
    )


def merge_adapter(model: nn.Module, adapter: LoadedAdapter) -> None:
    """Fold a loaded adapter into the model's own Linear weights, in place: W += (A @ B)ᵀ.

    The model then answers as the adapter would through the engine (y = xWᵀ + xAB), with no
    wrapper modules: for one-off checks on a private copy of the base model, never on the
    model an engine is serving.
    """
    with torch.no_grad():
        for name, (a, b) in adapter.modules.items():
            linear = model.get_submodule(name)
            delta = (a @ b).t()
            linear.weight.add_(delta.to(device=linear.weight.device, dtype=linear.weight.dtype))
