"""``manage.py build_starter_model``: train the bundled starter model (no download)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inference.starter import SIZES, build_starter_model


class Command(BaseCommand):
    help = "Build the starter base model (byte-level BPE + small Llama) from the bundled corpus."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--size", choices=sorted(SIZES), default="starter")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", default=None, help="directory to write (default: $VOYAGER_VAR_DIR/models/starter)")
        parser.add_argument("--force", action="store_true", help="replace an existing model directory")

    def handle(self, *args, size: str, seed: int, out: str | None, force: bool, **options) -> None:
        # Not VOYAGER_BASE_MODEL: that is the real default model (prepare_base_model), unless set to this one.
        path = Path(out) if out else Path(settings.VAR_DIR) / "models" / "starter"
        if path.exists() and not force:
            raise CommandError(f"{path} already exists; pass --force to rebuild it")
        try:
            build_starter_model(path, size=size, seed=seed, force=force, log=self.stdout.write)
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
