"""Adapter uploads from modders: untrusted bytes in, a validated AdapterVersion out, or nothing at all.

Every check runs before anything is stored as usable, and a failure leaves no file behind:

- only ``adapter_config.json`` + ``adapter_model.safetensors`` (loose, or in a zip) are accepted;
  pickled weights (``.bin``, ``.pt``, ``.pkl``...) are refused by name and never opened;
- zip entries: no absolute paths, no ``..``, no links, no encryption, at most a few entries, total and
  per-entry sizes and compression ratios capped (a zip bomb stops before it is inflated); an entry
  whose data is damaged (bad CRC, corrupt compressed data, a size that lies) is refused by name;
- the safetensors header is parsed by hand (8-byte length + JSON) without loading any tensor:
  dtypes known, offsets contiguous and matching the file size, shapes consistent with the bytes;
- every tensor name maps to a Linear module of the base model with the right (r, in) / (out, r)
  shapes (the base model is built on PyTorch's meta device from its config: no weights read);
- the config is a LoRA (``inference.lora.read_adapter_config``), names the same base model, and
  its rank is within the limit;
- the config and the weights agree: PEFT (training, the gate) builds the adapter from the config,
  the engine serves the tensors it finds, so the modules PEFT would give LoRA to (``target_modules``,
  ``exclude_modules``, ``layers_to_transform``...), the tensor names it would load, their ranks
  (``r``, ``rank_pattern``) and every module's scale (``lora_alpha``, ``alpha_pattern``, rsLoRA) must
  be the same both ways. PEFT itself is asked, on the meta-device base model.

The files are fsynced and moved from a staging directory (same filesystem) into
``MEDIA_ROOT/adapters/<persona>/upload-v<n>``, and the version row is created (status ``uploaded``)
in the same transaction that numbers it. A refused upload leaves neither files nor a row.

Then the values, which no header shows: after the commit a Celery task (``portal.tasks``) runs a
smoke generation in the worker (``inference.smoke``: the base model with the adapter folded in,
a few greedy tokens from a fixed prompt, every logit finite). It passes: ``validated``, with the
summary in ``metrics["smoke"]``, ready for a moderator. It fails: ``rejected``, the reason in
``validation_error`` for the modder, and the weights removed from disk.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import lzma
import math
import os
import re
import shutil
import stat
import struct
import uuid
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload

from agents_app import adapters as lifecycle
from agents_app.models import AdapterVersion
from agents_app.services import ServiceError
from inference.lora import (
    CONFIG_FILE,
    LORA_KEY_RE,  # the loader's own grammar of tensor names: what passes here, the engine can read
    PEFT_DEFAULT_ALPHA,
    PEFT_DEFAULT_R,
    WEIGHTS_FILE,
    AdapterError,
    file_sha256,
    module_rank,
    module_scale,
    read_adapter_config,
)
from portal import access

log = logging.getLogger("voyager.adapters")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
MAX_HEADER_BYTES = 1 << 20
MAX_ZIP_ENTRIES = 8
MAX_ZIP_RATIO = 50  # safetensors of random-ish floats barely compress; 50x is a bomb
MAX_CARD_CHARS = 20_000
STAGING = ".staging"
ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
# What zipfile raises on a damaged entry: a bad CRC or header (BadZipFile), corrupt compressed data
# (zlib.error, OSError from bz2, LZMAError), data that ends early (EOFError).
ZIP_DAMAGE = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError, struct.error)


def max_rank() -> int:
    return getattr(settings, "VOYAGER_MAX_ADAPTER_RANK", 64)


def max_bytes() -> int:
    return settings.VOYAGER_MAX_UPLOAD_BYTES


class UploadError(ServiceError):
    code = "invalid"


# --- the request body ---------------------------------------------------------------------------


class UploadLimitHandler(FileUploadHandler):
    """First in the handler chain: refuses a body over the limit before any of it is kept.

    ``handle_raw_input`` sees the declared Content-Length before a byte is read; chunked or
    lying clients are cut off in ``receive_data_chunk`` as soon as they pass the limit.
    """

    def __init__(self, request=None, limit: int | None = None):
        super().__init__(request)
        self.limit = limit or max_bytes()
        self.received = 0
        self.too_large = False

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):  # noqa: N803
        if content_length and content_length > self.limit:
            self.too_large = True
            raise StopUpload(connection_reset=True)

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            self.too_large = True
            raise StopUpload(connection_reset=True)
        return raw_data

    def file_complete(self, file_size):
        return None


def body_too_large(request) -> bool:
    length = request.META.get("CONTENT_LENGTH") or "0"
    try:
        return int(length) > max_bytes()
    except ValueError:
        return True


# --- staging --------------------------------------------------------------------------------------


def _copy_capped(chunks: Iterable[bytes], dest: Path, budget: int, what: str) -> int:
    written = 0
    with dest.open("xb") as out:
        for chunk in chunks:
            written += len(chunk)
            if written > budget:
                raise UploadError(f"{what}: larger than the {max_bytes()} byte upload limit")
            out.write(chunk)
    return written


def _read_chunks(src: BinaryIO) -> Iterator[bytes]:
    while chunk := src.read(1 << 20):
        yield chunk


def _refuse_pickle(name: str) -> None:
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise UploadError(f"{name}: pickled weights are refused (they can run code); save with safetensors")


def _zip_damage(exc: Exception) -> str:
    if isinstance(exc, EOFError):
        return "its data ends before the size the archive declares"
    if isinstance(exc, zlib.error | lzma.LZMAError):
        return f"its compressed data is corrupt ({exc})"
    return str(exc) or type(exc).__name__


def _extract_zip(archive: BinaryIO, staging: Path) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (*ZIP_DAMAGE, NotImplementedError) as exc:
        raise UploadError(f"archive: not a valid zip file ({exc})") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if len(zf.infolist()) > MAX_ZIP_ENTRIES:
            raise UploadError(f"archive: {len(zf.infolist())} entries; an adapter zip holds at most {MAX_ZIP_ENTRIES}")
        total = 0
        wanted = {}
        for info in infos:
            name = info.filename
            parts = Path(name).parts
            if name.startswith(("/", "\\")) or ".." in parts or "\\" in name or ":" in name:
                raise UploadError(f"archive: entry {name!r} points outside the adapter directory")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UploadError(f"archive: entry {name!r} is a link; links are refused")
            _refuse_pickle(name)
            if info.flag_bits & 0x1:
                raise UploadError(f"archive: entry {name!r} is encrypted; zip the adapter without a password")
            if info.compress_type not in ZIP_METHODS:
                raise UploadError(
                    f"archive: entry {name!r} uses compression method {info.compress_type}; "
                    f"use one of {', '.join(ZIP_METHODS.values())}"
                )
            total += info.file_size
            if total > max_bytes():
                raise UploadError(f"archive: unpacks to more than the {max_bytes()} byte upload limit")
            if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO and info.file_size > 1 << 16:
                raise UploadError(f"archive: entry {name!r} is compressed {info.file_size // info.compress_size}x")
            base = parts[-1]
            if base in (CONFIG_FILE, WEIGHTS_FILE, "README.md"):
                if base in wanted:
                    raise UploadError(f"archive: two files named {base}")
                wanted[base] = info
        for base, info in wanted.items():
            budget = min(info.file_size, max_bytes())
            _copy_capped(_entry_chunks(zf, info), staging / base, budget, f"archive: entry {info.filename!r}")


def _entry_chunks(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """An entry's bytes; damage found while reading (only reading: not a full disk) is refused naming the entry."""
    try:
        with zf.open(info) as src:  # zipfile stops at the declared size and checks the CRC at the end
            yield from _read_chunks(src)
    except ZIP_DAMAGE as exc:
        raise UploadError(
            f"archive: entry {info.filename!r} is damaged: {_zip_damage(exc)}; zip the adapter again"
        ) from None


# --- safetensors header ----------------------------------------------------------------------------


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file, checked against the file size; no tensor is read."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise UploadError(f"{WEIGHTS_FILE}: too short to be safetensors")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or length > size - 8:
            raise UploadError(f"{WEIGHTS_FILE}: header length {length} is not plausible; not a safetensors file")
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except ValueError:
        raise UploadError(f"{WEIGHTS_FILE}: the header is not JSON; not a safetensors file") from None
    if not isinstance(header, dict):
        raise UploadError(f"{WEIGHTS_FILE}: the header is not a JSON object")
    header.pop("__metadata__", None)
    if not header:
        raise UploadError(f"{WEIGHTS_FILE}: contains no tensors")
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise UploadError(f"{WEIGHTS_FILE}: tensor {name!r} has a malformed header entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise UploadError(f"{WEIGHTS_FILE}: tensor {name!r} has dtype {dtype}; use F32, F16 or BF16")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise UploadError(f"{WEIGHTS_FILE}: tensor {name!r} has a malformed shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise UploadError(f"{WEIGHTS_FILE}: tensor {name!r} has malformed data offsets")
        count = 1
        for d in shape:
            count *= d
        if offsets[1] - offsets[0] != count * DTYPE_BYTES[dtype] or offsets[0] < 0:
            raise UploadError(f"{WEIGHTS_FILE}: tensor {name!r} offsets do not match its shape {shape}")
        spans.append(offsets)
    spans.sort()
    cursor = 0
    for begin, end in spans:
        if begin != cursor:
            raise UploadError(f"{WEIGHTS_FILE}: tensor data overlaps or leaves gaps; the file is corrupt")
        cursor = end
    if 8 + length + cursor != size:
        raise UploadError(f"{WEIGHTS_FILE}: {size} bytes, but the header describes {8 + length + cursor}")
    return header


# --- the base model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseModelShape:
    model_id: str
    linears: dict[str, tuple[int, int]]  # module name -> (in_features, out_features)
    model: Any = field(default=None, compare=False, repr=False)  # on the meta device; copy it before changing it


@functools.lru_cache(maxsize=4)
def _base_shape(path: str, mtime: float) -> BaseModelShape:
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModelForCausalLM

    root = Path(path)
    config = AutoConfig.from_pretrained(root, local_files_only=True)
    with torch.device("meta"):  # the module tree and shapes, no weights
        model = AutoModelForCausalLM.from_config(config)
    linears = {name: (m.in_features, m.out_features) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    meta = {}
    marker = root / "voyager.json"
    if marker.is_file():
        meta = json.loads(marker.read_text(encoding="utf-8"))
    model_id = str(meta.get("model_id") or meta.get("name") or root.resolve().name)  # as inference.service names it
    return BaseModelShape(model_id=model_id, linears=linears, model=model)


def base_model_shape() -> BaseModelShape:
    path = Path(settings.VOYAGER_BASE_MODEL)
    config = path / "config.json"
    if not config.is_file():
        raise UploadError(f"the server has no base model at {path}; uploads cannot be checked", code="unavailable")
    return _base_shape(str(path.resolve()), config.stat().st_mtime)


def _same_base_model(named: str, base: BaseModelShape) -> bool:
    named = (named or "").rstrip("/")
    return bool(named) and (named == base.model_id or Path(named).name == base.model_id)


# --- validation ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    rank: int
    target_modules: list[str]
    base_model_id: str


def _whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_config_values(config: dict) -> int:
    """The values PEFT and the engine both read, typed as PEFT types them; returns ``r``."""
    rank = config.get("r", PEFT_DEFAULT_R)
    if not _whole_number(rank):
        raise UploadError(f"{CONFIG_FILE}: r {rank!r} is not a whole number")
    if not 1 <= rank <= max_rank():
        raise UploadError(f"{CONFIG_FILE}: rank r={rank} is outside 1..{max_rank()}")
    alpha = config.get("lora_alpha", PEFT_DEFAULT_ALPHA)
    if not _real_number(alpha) or alpha <= 0:
        raise UploadError(f"{CONFIG_FILE}: lora_alpha {alpha!r} is not a positive number")
    targets = config.get("target_modules")
    if not (isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise UploadError(
            f"{CONFIG_FILE}: target_modules {targets!r} must name the modules to adapt "
            "(a list of module names or name suffixes, or one regular expression)"
        )
    for key, ok, what in (
        ("rank_pattern", lambda v: _whole_number(v) and 1 <= v <= max_rank(), f"a rank in 1..{max_rank()}"),
        ("alpha_pattern", lambda v: _real_number(v) and v > 0, "a positive number"),
    ):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            raise UploadError(f"{CONFIG_FILE}: {key} must map module name patterns to values")
        for pattern, value in patterns.items():
            if not ok(value):
                raise UploadError(f"{CONFIG_FILE}: {key}[{pattern!r}] is {value!r}, not {what}")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise UploadError(
                    f"{CONFIG_FILE}: {key} pattern {pattern!r} is not a regular expression ({exc})"
                ) from None
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as exc:
            raise UploadError(
                f"{CONFIG_FILE}: target_modules {targets!r} is not a regular expression ({exc})"
            ) from None
    return rank


def _names(modules, limit: int = 6) -> str:
    modules = sorted(modules)
    shown = ", ".join(modules[:limit])
    return shown + (f" and {len(modules) - limit} more" if len(modules) > limit else "")


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _selection(config: dict) -> str:
    """The config's words for which modules get LoRA, as the modder wrote them."""
    said = [f"target_modules {config.get('target_modules')!r}"]
    for key in ("exclude_modules", "layers_to_transform", "layers_pattern"):
        if config.get(key) not in (None, [], ""):
            said.append(f"{key} {config[key]!r}")
    return ", ".join(said)


def _check_peft_agrees(staging: Path, config: dict, header: dict[str, dict], base: BaseModelShape) -> None:
    """PEFT, reading the config as training and the gate do, must build exactly the adapter the engine serves.

    PEFT gives LoRA to the modules its config selects and loads only the tensors named for those; the
    engine serves whatever tensors the file holds. Both are asked here, on a copy of the meta-device
    base model (no weights), and every difference is refused naming both files.
    """
    import torch
    from peft import LoraConfig, PeftConfig, get_peft_model, get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    both = f"{CONFIG_FILE} and {WEIGHTS_FILE} disagree"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_config = PeftConfig.from_pretrained(str(staging))
    except Exception as exc:  # KeyError (an unknown peft_type), TypeError, ValueError from its own checks...
        raise UploadError(f"{CONFIG_FILE}: PEFT cannot read it ({_short(exc)})") from None
    if not isinstance(peft_config, LoraConfig):
        raise UploadError(f"{CONFIG_FILE}: PEFT reads it as a {type(peft_config).__name__}; set peft_type to LORA")
    if peft_config.task_type not in (None, "CAUSAL_LM"):
        raise UploadError(f"{CONFIG_FILE}: task_type {peft_config.task_type!r}; a persona adapter is CAUSAL_LM")
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(copy.deepcopy(base.model), peft_config, low_cpu_mem_usage=True)
            expected = {key: list(t.shape) for key, t in get_peft_model_state_dict(model).items()}
    except Exception as exc:  # nothing matched, a module PEFT cannot adapt, a value of the wrong type...
        raise UploadError(f"{CONFIG_FILE}: PEFT cannot apply it to the base model ({_short(exc)})") from None

    def modules(keys) -> set[str]:
        return {m["module"] for m in map(LORA_KEY_RE.match, keys) if m}

    peft_modules, file_modules = modules(expected), modules(header)
    if extra := sorted(set(expected) - {k for k in expected if LORA_KEY_RE.match(k)}):
        raise UploadError(f"{both}: PEFT would also save {_names(extra)}, which the engine does not serve")
    if missing := peft_modules - file_modules:
        raise UploadError(
            f"{both}: {_selection(config)} makes PEFT add LoRA to {_names(missing)}, "
            f"and {WEIGHTS_FILE} has no weights for them (PEFT would train or judge an adapter the engine never serves)"
        )
    if ignored := file_modules - peft_modules:
        raise UploadError(
            f"{both}: {WEIGHTS_FILE} has weights for {_names(ignored)}, which {_selection(config)} "
            "does not select (PEFT would drop them; the engine would serve them)"
        )
    for key in sorted(set(header) - set(expected)):
        module = LORA_KEY_RE.match(key)
        wanted = f"base_model.model.{module['module']}.lora_{module['part']}.weight"
        raise UploadError(
            f"{WEIGHTS_FILE}: tensor {key!r} is not named as PEFT saves it ({wanted!r}); PEFT would not load it"
        )
    for key, shape in sorted(expected.items()):
        if header[key]["shape"] != shape:
            module = LORA_KEY_RE.match(key)["module"]
            peft_rank = shape[0] if key.endswith("lora_A.weight") else shape[-1]
            raise UploadError(
                f"{both}: {CONFIG_FILE} gives {module} rank {peft_rank} (r or rank_pattern), "
                f"{WEIGHTS_FILE} has {key.rsplit('.', 2)[-2]} of shape {header[key]['shape']}"
            )
    for name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer) or "default" not in layer.scaling:
            continue
        module = name.removeprefix("base_model.model.")
        rank = layer.r["default"]
        if module_rank(config, module) != rank:
            raise UploadError(
                f"{CONFIG_FILE}: PEFT gives {module} rank {rank} and the engine {module_rank(config, module)}; "
                "make rank_pattern name it once"
            )
        if not math.isclose(layer.scaling["default"], module_scale(config, module, rank), rel_tol=1e-6):
            raise UploadError(
                f"{CONFIG_FILE}: PEFT scales {module} by {layer.scaling['default']:g} and the engine by "
                f"{module_scale(config, module, rank):g}; check lora_alpha and alpha_pattern"
            )


def validate_adapter_dir(staging: Path) -> Checked:
    try:
        config = read_adapter_config(staging)
    except AdapterError as exc:
        raise UploadError(f"{CONFIG_FILE}: {str(exc).split(': ', 1)[-1]}") from None
    weights = staging / WEIGHTS_FILE
    if not weights.is_file():
        raise UploadError(f"{WEIGHTS_FILE}: missing (an adapter is {CONFIG_FILE} + {WEIGHTS_FILE})")
    base = base_model_shape()
    named = config.get("base_model_name_or_path") or ""
    if not _same_base_model(named, base):
        raise UploadError(
            f"{CONFIG_FILE}: base_model_name_or_path {named!r} is not this server's base model {base.model_id!r}"
        )
    _check_config_values(config)
    header = read_safetensors_header(weights)
    parts: dict[str, dict[str, list[int]]] = {}
    for key, entry in header.items():
        match = LORA_KEY_RE.match(key)
        if match is None:
            raise UploadError(f"{WEIGHTS_FILE}: unexpected tensor {key!r} (only lora_A/lora_B weights are accepted)")
        if match["part"] in parts.get(match["module"], {}):
            raise UploadError(f"{WEIGHTS_FILE}: two lora_{match['part']} tensors for {match['module']!r}")
        parts.setdefault(match["module"], {})[match["part"]] = entry["shape"]
    ranks = []
    for module, pair in sorted(parts.items()):
        if set(pair) != {"A", "B"}:
            raise UploadError(f"{WEIGHTS_FILE}: module {module!r} needs both lora_A and lora_B")
        if module not in base.linears:
            raise UploadError(f"{WEIGHTS_FILE}: the base model has no Linear module {module!r}")
        fan_in, fan_out = base.linears[module]
        a, b = pair["A"], pair["B"]
        r = a[0] if len(a) == 2 else -1
        if len(a) != 2 or len(b) != 2 or a != [r, fan_in] or b != [fan_out, r]:
            raise UploadError(
                f"{WEIGHTS_FILE}: wrong shape for {module!r}: lora_A {a}, lora_B {b}; "
                f"the base layer needs [r, {fan_in}] and [{fan_out}, r]"
            )
        if not 1 <= r <= max_rank():
            raise UploadError(f"{WEIGHTS_FILE}: {module!r} has rank {r}, outside 1..{max_rank()}")
        ranks.append(r)
    _check_peft_agrees(staging, config, header, base)
    targets = sorted({m.rsplit(".", 1)[-1] for m in parts})
    return Checked(rank=max(ranks), target_modules=targets, base_model_id=base.model_id)


# --- the service --------------------------------------------------------------------------------------


def adapter_upload(*, user, persona_slug: str, files: dict, model_card: str = "") -> AdapterVersion:
    """Check and store an uploaded adapter as the persona's next version (status uploaded).

    ``files`` maps ``config``/``weights``/``archive`` to uploaded file objects. The smoke
    generation is queued for after the commit (``portal.tasks.adapter_validate``); with an eager Celery (the
    embedded default) it has already run when this returns, and the version says how it went.
    """
    from portal import tasks

    persona = access.access_persona(persona_slug, user)
    if not access.can_upload_adapter(user, persona):
        raise access.AccessDenied(f"persona: only its owner, with the modder role, may upload to {persona.slug!r}")
    if len(model_card or "") > MAX_CARD_CHARS:
        raise UploadError(f"model_card: at most {MAX_CARD_CHARS} characters")
    archive, config, weights = files.get("archive"), files.get("config"), files.get("weights")
    for f in (archive, config, weights):
        if f is not None:
            _refuse_pickle(f.name)
    if archive is None and (config is None or weights is None):
        raise UploadError(f"files: upload {CONFIG_FILE} and {WEIGHTS_FILE}, or one zip with both")
    if archive is not None and (config or weights):
        raise UploadError("files: upload either a zip or the two files, not both")
    if config is not None and config.name != CONFIG_FILE:
        raise UploadError(f"config: the file must be named {CONFIG_FILE}, not {config.name!r}")
    if weights is not None and not weights.name.endswith(".safetensors"):
        raise UploadError(f"weights: must be a .safetensors file, not {weights.name!r}")
    if sum(f.size for f in (archive, config, weights) if f is not None) > max_bytes():
        raise UploadError(f"files: larger than the {max_bytes()} byte upload limit")

    root = lifecycle.persona_adapters_dir(persona)
    staging = root / STAGING / uuid.uuid4().hex
    staging.mkdir(parents=True)
    try:
        if archive is not None:
            _extract_zip(archive, staging)
        else:
            _copy_capped(_read_chunks(config), staging / CONFIG_FILE, max_bytes(), "config")
            _copy_capped(_read_chunks(weights), staging / WEIGHTS_FILE, max_bytes(), "weights")
        checked = validate_adapter_dir(staging)
        (staging / "README.md").unlink(missing_ok=True)
        sha = file_sha256(staging / WEIGHTS_FILE)
        size = sum(p.stat().st_size for p in staging.iterdir())
        lifecycle.fsync_tree(staging)  # on disk before a row points at it
        adapter = lifecycle.version_create(
            persona=persona,
            staged=staging,
            final_path=lambda version: root / f"upload-v{version}-{uuid.uuid4().hex[:6]}",
            status=AdapterVersion.Status.UPLOADED,
            sha256=sha,
            base_model_id=checked.base_model_id[:200],
            rank=checked.rank,
            target_modules=checked.target_modules,
            size_bytes=size,
            source=AdapterVersion.Source.UPLOAD,
            model_card=model_card or "",
            created_by=user,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(root / STAGING)  # only when empty: another upload may be staging
    try:
        tasks.adapter_validate.delay_on_commit(adapter.pk)
    except Exception:
        # The broker is down, or (eager, the embedded default) the check itself could not run, e.g.
        # the base model does not load: the upload stands, the version stays "uploaded", and
        # `manage.py validate_adapters` queues it again.
        log.exception("adapter %s v%s: the smoke generation could not be queued or run", persona.slug, adapter.version)
    adapter.refresh_from_db()  # an eager smoke generation has moved it on already
    return adapter


# --- the smoke generation (in the Celery worker) --------------------------------------------------


# --- moderation ---------------------------------------------------------------------------------------


def adapter_review(*, user, persona_slug: str, version: int, decision: str) -> AdapterVersion:
    """A moderator approves or rejects a validated version (one that passed its smoke generation)."""
    adapter = access.access_adapter_version(persona_slug, version, user)
    return lifecycle.version_review(user=user, adapter=adapter, decision=decision)


def adapter_activate(*, user, persona_slug: str, version: int) -> AdapterVersion:
    """Make an approved version the one that answers (its owner or a moderator); the old one retires."""
    adapter = access.access_adapter_version(persona_slug, version, user)
    return lifecycle.version_activate(user=user, adapter=adapter)
