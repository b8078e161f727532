"""Domain adaptation: the corpus rendered as the engine serves it, one cached world adapter, a persona's version."""

from __future__ import annotations

import json
import shutil
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from transformers import AutoTokenizer

from agents_app.models import AdapterVersion, Persona
from agents_app.services import DEMO_PERSONA, DEMO_PERSONA_SLUG
from inference.actions import parse_actions
from inference.corpus import generate_dialogues
from inference.lora import file_sha256
from inference.prompt import build_prompt
from training_tasks import domain
from training_tasks.domain import DomainConfig, domain_examples, ensure_world_adapter, world_adapter_dir

# Seconds on the tiny model; the real one is trained by `bin/voyager run` and measured by the benchmark.
TINY = DomainConfig(examples=24, batch_size=8, bf16=False)


@pytest.fixture
def tiny_copy(tiny_model, tmp_path):
    """A private copy of the tiny model: the adapter cache lives beside the base model."""
    return shutil.copytree(tiny_model, tmp_path / "models" / "tiny")


def test_examples_are_rendered_exactly_as_the_engine_renders_an_ask(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = domain_examples(tokenizer, 40, seed=5, max_prompt_tokens=448)
    dialogues = generate_dialogues(40, 5, cast=True)
    for example, d in zip(examples, dialogues):
        served = build_prompt(tokenizer, d.persona, d.memory, d.context, d.player, d.text, 448)
        assert example == {"prompt": served.text, "completion": d.reply}


def test_the_cast_puts_corpus_roles_under_many_names():
    dialogues = generate_dialogues(400, seed=1, cast=True)
    names = {d.persona.name for d in dialogues}
    assert len(names) > 30
    # Each header names its persona, so a model can only learn its name from there.
    assert all(d.persona.name.split()[0] in f"{d.persona.name} {d.persona.system_prompt}" for d in dialogues)
    # Asked who it is, an NPC answers with the name its header gives.
    about = [d for d in dialogues if d.text.lower().rstrip("?") in ("who are you", "what is your name")]
    assert about and all(d.persona.name in d.reply for d in about)


def test_replies_carry_the_action_the_player_asked_for_and_no_other():
    for d in generate_dialogues(600, seed=2, cast=True):
        _, actions = parse_actions(d.reply)
        if d.action is None:
            assert actions == [], d
        else:
            assert [a["name"] for a in actions] == [d.action], d
        # Memory holds what the player saw: no markup.
        assert all("[[" not in turn.reply for turn in d.memory)


def test_the_world_adapter_trains_once_and_is_found_in_its_cache(tiny_copy, monkeypatch):
    log = []
    adapter = ensure_world_adapter(tiny_copy, config=TINY, log=log.append)
    assert adapter == world_adapter_dir(tiny_copy, TINY) and adapter.parent == tiny_copy.parent / "adapters"
    meta = json.loads((adapter / domain.MARKER).read_text())
    assert meta["examples"] == 24 and meta["kind"] == "world" and meta["tokens"] > 0
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == TINY.lora_r and config["peft_type"] == "LORA"
    assert any("domain adapter" in line for line in log)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached adapter should have been found")

    monkeypatch.setattr(domain, "train_world_adapter", no_training)
    assert ensure_world_adapter(tiny_copy, config=TINY) == adapter
    # Another corpus, config or base model is another adapter.
    assert world_adapter_dir(tiny_copy, DomainConfig(examples=25)) != adapter


def test_a_failed_training_leaves_nothing_where_the_cache_looks(tiny_copy, monkeypatch):
    def broken(**kwargs):
        kwargs["out_dir"].mkdir(parents=True)
        (kwargs["out_dir"] / "adapter_model.safetensors").write_bytes(b"half")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(domain, "train_adapter", broken)
    with pytest.raises(RuntimeError):
        ensure_world_adapter(tiny_copy, config=TINY)
    adapters = tiny_copy.parent / "adapters"
    assert not world_adapter_dir(tiny_copy, TINY).exists()
    assert list(adapters.iterdir()) == []


@pytest.mark.django_db
def test_the_command_makes_the_adapter_the_demo_personas_active_version(alice, tiny_copy, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    persona = Persona.objects.create(slug=DEMO_PERSONA_SLUG, owner=alice, **DEMO_PERSONA)
    out = StringIO()
    with override_settings(VOYAGER_BASE_MODEL=str(tiny_copy)):
        call_command("train_domain_adapter", "--examples", "24", stdout=out)
        persona.refresh_from_db()
        version = persona.active_adapter
        assert version is not None and version.status == AdapterVersion.Status.ACTIVE
        assert version.source == AdapterVersion.Source.TRAINING and version.version == 1
        assert version.absolute_path.is_dir() and version.sha256 == file_sha256(
            version.absolute_path / "adapter_model.safetensors"
        )
        assert version.metrics["domain"]["examples"] == 24
        assert "is active (source: training)" in out.getvalue()
        # Again: the same weights are the same version, and --if-no-active does nothing at all.
        call_command("train_domain_adapter", "--examples", "24", stdout=out)
        call_command("train_domain_adapter", "--if-no-active", stdout=out)
    assert AdapterVersion.objects.filter(persona=persona).count() == 1
    assert "already has an active adapter version" in out.getvalue()


@pytest.mark.django_db
def test_the_command_names_what_is_wrong(alice, tiny_copy, tmp_path):
    Persona.objects.create(slug="smith", name="Smith", owner=alice)
    with override_settings(VOYAGER_BASE_MODEL=str(tiny_copy)):
        with pytest.raises(CommandError, match="no persona with the slug 'nobody'"):
            call_command("train_domain_adapter", "--persona", "nobody", stdout=StringIO())
        with pytest.raises(CommandError, match="--examples must be at least 1"):
            call_command("train_domain_adapter", "--persona", "smith", "--examples", "0", stdout=StringIO())
    with (
        override_settings(VOYAGER_BASE_MODEL=str(tmp_path / "missing")),
        pytest.raises(CommandError, match="prepare_base_model"),
    ):
        call_command("train_domain_adapter", "--persona", "smith", stdout=StringIO())
    assert not AdapterVersion.objects.exists()
