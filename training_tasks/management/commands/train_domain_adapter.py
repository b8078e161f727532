"""``manage.py train_domain_adapter``: the world adapter for the base model, active for a persona."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from agents_app.models import Persona
from agents_app.services import DEMO_PERSONA_SLUG


class Command(BaseCommand):
    help = (
        "Train (once per base model and corpus; cached beside the base model) the LoRA that makes the base "
        "model an NPC of this world, and make it the persona's active adapter version (source: training)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--persona", default=DEMO_PERSONA_SLUG, help="the persona's slug (default: the demo's)")
        parser.add_argument("--examples", type=int, default=None, help="training dialogues (default: %(default)s)")
        parser.add_argument(
            "--if-no-active",
            action="store_true",
            help="do nothing when the persona already has an active version (for first-run setup)",
        )
        parser.add_argument("--no-activate", action="store_true", help="only train (or find) the cached adapter")

    def handle(self, *args, persona: str, examples: int | None, if_no_active: bool, no_activate: bool, **options):
        from training_tasks.domain import DomainConfig, ensure_world_adapter
        from training_tasks.promotion import domain_adapter_install
        from training_tasks.services import base_model_id

        if examples is not None and examples < 1:
            raise CommandError(f"--examples must be at least 1, got {examples}")
        target = None
        if not no_activate:
            target = Persona.objects.filter(slug=persona).first()
            if target is None:
                raise CommandError(f"no persona with the slug {persona!r}")
            if if_no_active and target.active_adapter_id is not None:
                self.stdout.write(f"{target.slug} already has an active adapter version: nothing to do.")
                return
        base = Path(settings.VOYAGER_BASE_MODEL)
        if not (base / "config.json").is_file():
            raise CommandError(
                f"no base model at {base} (VOYAGER_BASE_MODEL): run `manage.py prepare_base_model` first"
            )
        config = DomainConfig() if examples is None else replace(DomainConfig(), examples=examples)
        started = time.monotonic()
        try:
            adapter_dir = ensure_world_adapter(base, config=config, progress_bar=True, log=self.stdout.write)
        except (OSError, ValueError) as exc:
            raise CommandError(f"training the domain adapter failed: {exc}") from exc
        self.stdout.write(f"domain adapter: {adapter_dir} ({time.monotonic() - started:.0f} s)")
        if target is None:
            return
        version = domain_adapter_install(persona=target, adapter_dir=adapter_dir, base_model_id=base_model_id())
        self.stdout.write(
            self.style.SUCCESS(f"{target.slug}: adapter v{version.version} is {version.status} (source: training)")
        )
