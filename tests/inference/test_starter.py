import json

import pytest
import torch
from safetensors.torch import load_file

from inference.corpus import generate_dialogues, render_training_text
from inference.loading import ModelLoadError, load_base_model
from inference.prompt import END, NPC
from inference.starter import build_starter_model


def test_the_corpus_is_deterministic_and_in_prompt_format():
    # 200: the corpus has 23 intents now, and a give or a memory turn must be among them.
    a = [render_training_text(d) for d in generate_dialogues(200, seed=3)]
    assert a == [render_training_text(d) for d in generate_dialogues(200, seed=3)]
    assert a != [render_training_text(d) for d in generate_dialogues(200, seed=4)]
    assert all(t.startswith("<|system|>You are ") and f"{NPC}" in t and t.endswith(f"{END}\n") for t in a)
    assert any("[[ACTION:give " in t for t in a) and any("<|memory|>" in t for t in a)


def test_same_seed_gives_identical_weights(tiny_model_dir, tmp_path):
    again = build_starter_model(tmp_path / "again", size="tiny", seed=0, log=lambda _m: None)
    first, second = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (tiny_model_dir / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()
    info = json.loads((again / "voyager.json").read_text())
    assert info["size"] == "tiny" and info["seed"] == 0 and info["format"] == "voyager-starter-v1"


def test_it_never_overwrites_without_force_and_leaves_no_temp_dirs(tiny_model_dir, tmp_path):
    target = tmp_path / "model"
    build_starter_model(target, size="tiny", seed=1, log=lambda _m: None)
    with pytest.raises(FileExistsError):
        build_starter_model(target, size="tiny", seed=1, log=lambda _m: None)
    build_starter_model(target, size="tiny", seed=2, log=lambda _m: None, force=True)
    assert json.loads((target / "voyager.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_the_loader_explains_what_is_wrong(tiny_model_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_base_model(tmp_path / "missing")
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_base_model(tmp_path / "noconfig")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelLoadError, match="pickled weights are refused"):
        load_base_model(pickled)
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text('{"model_type": "vit"}')
    (encoder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_base_model(encoder)


def test_the_tiny_model_loads_with_its_stop_tokens(tiny_model_dir):
    loaded = load_base_model(tiny_model_dir)
    assert loaded.info.architecture == "LlamaForCausalLM" and not loaded.info.uses_chat_template
    assert loaded.tokenizer.convert_tokens_to_ids(END) in loaded.info.stop_token_ids
    assert loaded.info.voyager["size"] == "tiny"
