"""VOYAGER_INFERENCE_BACKEND=openai: every setting is checked when the process starts."""

from __future__ import annotations

import pytest

from inference.openai_backend import OpenAIBackend
from inference.service import make_backend
from tests.processes import run_manage

GOOD = {
    "VOYAGER_INFERENCE_BACKEND": "openai",
    "VOYAGER_OPENAI_BASE_URL": "http://vllm.internal:8000/v1",
    "VOYAGER_OPENAI_MODEL": "smollm2-135m-instruct",
}


def check(tmp_path, **environ):
    return run_manage("check", VOYAGER_VAR_DIR=str(tmp_path), **{**GOOD, **environ})


def test_a_complete_openai_configuration_passes_the_checks(tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-local-123\n")
    result = check(tmp_path, VOYAGER_OPENAI_API_KEY_FILE=str(key), VOYAGER_OPENAI_ADAPTER_NAME="npc-{adapter_id}")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"VOYAGER_OPENAI_BASE_URL": ""}, "VOYAGER_OPENAI_BASE_URL must be set when VOYAGER_INFERENCE_BACKEND=openai"),
        ({"VOYAGER_OPENAI_BASE_URL": "http://vllm:8000"}, "must be an http(s) URL ending in /v1"),
        ({"VOYAGER_OPENAI_BASE_URL": "ftp://vllm/v1"}, "must be an http(s) URL ending in /v1"),
        ({"VOYAGER_OPENAI_MODEL": ""}, "VOYAGER_OPENAI_MODEL must name the base model"),
        ({"VOYAGER_OPENAI_ADAPTER_NAME": "{slug}-{version}"}, "uses ['slug']"),
        ({"VOYAGER_OPENAI_ADAPTER_NAME": "lora-v{version}"}, "gives every adapter one name"),
        ({"VOYAGER_OPENAI_ADAPTER_NAME": "{persona"}, "is not a template"),
        ({"VOYAGER_OPENAI_TIMEOUT": "soon"}, "VOYAGER_OPENAI_TIMEOUT='soon' is not a number"),
        ({"VOYAGER_OPENAI_CONCURRENCY": "0"}, "VOYAGER_OPENAI_CONCURRENCY=0 is below the minimum 1"),
        ({"VOYAGER_OPENAI_RUNTIME_LORA": "maybe"}, "VOYAGER_OPENAI_RUNTIME_LORA='maybe' is not a boolean"),
        ({"VOYAGER_OPENAI_API_KEY": "sk bad"}, "VOYAGER_OPENAI_API_KEY holds spaces"),
        ({"VOYAGER_OPENAI_API_KEY_FILE": "/nonexistent/key"}, "VOYAGER_OPENAI_API_KEY_FILE='/nonexistent/key' cannot"),
        ({"VOYAGER_INFERENCE_BACKEND": "vllm"}, "must be 'engine', 'openai' or 'echo'"),
    ],
)
def test_a_bad_openai_setting_stops_the_process_naming_it(tmp_path, environ, message):
    result = check(tmp_path, **environ)
    assert result.returncode != 0
    assert message in result.stderr


def test_make_backend_builds_the_openai_backend_from_the_settings(settings, tmp_path):
    settings.VOYAGER_BASE_MODEL = str(tmp_path / "absent")  # no tokenizer here: the text-level guard
    settings.VOYAGER_OPENAI = {
        "base_url": "http://127.0.0.1:9/v1",
        "model": "base",
        "api_key": "sk-1",
        "adapter_name": "{persona}-v{version}",
        "timeout": 2.0,
        "concurrency": 3,
        "runtime_lora": True,
        "adapter_root": "/mnt/media",
    }
    backend = make_backend("openai")
    try:
        assert isinstance(backend, OpenAIBackend)
        assert backend.tokenizer is None
        assert backend.config.concurrency == 3 and backend.config.max_queue == settings.VOYAGER_INFERENCE_QUEUE
        assert backend.config.media_root == str(settings.MEDIA_ROOT)
        assert backend.lora_path(f"{settings.MEDIA_ROOT}/adapters/bram/v2") == "/mnt/media/adapters/bram/v2"
    finally:
        backend.stop(drain=False)


def test_the_worker_guards_prompts_with_the_base_models_tokenizer_when_it_is_here(settings, scripted_model_dir):
    settings.VOYAGER_BASE_MODEL = str(scripted_model_dir)
    settings.VOYAGER_OPENAI = {
        "base_url": "http://127.0.0.1:9/v1",
        "model": "base",
        "api_key": None,
        "adapter_name": "{persona}-v{version}",
        "timeout": 2.0,
        "concurrency": 1,
        "runtime_lora": False,
        "adapter_root": None,
    }
    backend = make_backend("openai")
    try:
        assert backend.tokenizer is not None and backend.tokenizer.chat_template
    finally:
        backend.stop(drain=False)


def test_the_openai_backend_refuses_to_start_without_its_settings(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.VOYAGER_OPENAI = None
    with pytest.raises(ImproperlyConfigured, match="needs VOYAGER_INFERENCE_BACKEND=openai"):
        make_backend("openai")
