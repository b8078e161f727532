"""The management command is the one Django-facing piece of the inference package."""

import json

import pytest
from django.core.management import CommandError, call_command


def test_build_starter_model_command_writes_a_tiny_model(tmp_path):
    out = tmp_path / "model"
    call_command("build_starter_model", size="tiny", seed=3, out=str(out))
    assert json.loads((out / "voyager.json").read_text())["seed"] == 3
    with pytest.raises(CommandError, match="already exists"):
        call_command("build_starter_model", size="tiny", out=str(out))
    call_command("build_starter_model", size="tiny", seed=4, out=str(out), force=True)
    assert json.loads((out / "voyager.json").read_text())["seed"] == 4
