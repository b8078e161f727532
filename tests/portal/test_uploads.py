"""Adapter uploads: only safe, fitting LoRA adapters become versions; failures leave nothing behind.

The structure is checked during the upload; the smoke generation runs after the commit (a Celery
task, eager here), so tests that need it run the upload's on-commit callbacks.
"""

import html
import io
import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile

from agents_app.models import AdapterVersion
from tests.factories import HIDDEN, Q, config_json, nan_weights, weights
from tests.portal.clients import client_for, csrf_post

pytestmark = pytest.mark.django_db
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@pytest.fixture(autouse=True)
def eager_celery():
    """The smoke task runs in this process, as in the embedded default, even when REDIS_URL names a broker."""
    from portal.celery import app

    saved = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = saved


def upload(user, data=None, follow=False, **files):
    files = files or {
        "config": SimpleUploadedFile("adapter_config.json", config_json()),
        "weights": SimpleUploadedFile("adapter_model.safetensors", weights()),
    }
    body = {"model_card": "# Hi", **(data or {}), **files}
    return csrf_post(client_for(user), "/personas/miner/upload/", body, follow=follow)


def zipped(entries: dict[str, bytes], compression=zipfile.ZIP_STORED) -> SimpleUploadedFile:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return SimpleUploadedFile("adapter.zip", buf.getvalue())


def files_left(settings) -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_the_owner_uploads_a_fitting_adapter_and_gets_version_1_then_2(alice, persona, base_model, settings):
    response = upload(alice)  # the smoke generation waits for the commit, which this test never makes
    assert response.status_code == 302 and response["Location"] == "/personas/miner/v1/"
    v1 = AdapterVersion.objects.get(persona=persona)
    assert (v1.version, v1.status, v1.rank, v1.target_modules, v1.base_model_id) == (
        1,
        "uploaded",
        4,
        ["q_proj"],
        "tiny-test",
    )
    assert (v1.absolute_path / "adapter_model.safetensors").is_file()
    assert v1.created_by == alice and v1.model_card == "# Hi"
    assert upload(alice).status_code == 302
    assert list(AdapterVersion.objects.filter(persona=persona).values_list("version", flat=True)) == [2, 1]


def test_the_loader_accepts_what_the_upload_accepted(alice, persona, base_model):
    from transformers import AutoConfig, AutoModelForCausalLM

    from inference.lora import load_adapter

    upload(alice)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_model))
    loaded = load_adapter(AdapterVersion.objects.get().absolute_path, model)
    assert loaded.rank == 4 and list(loaded.modules) == ["model.layers.0.self_attn.q_proj"]


def test_a_zip_with_both_files_is_accepted(alice, persona, base_model):
    archive = zipped(
        {"my-adapter/adapter_config.json": config_json(), "my-adapter/adapter_model.safetensors": weights()}
    )
    assert upload(alice, archive=archive).status_code == 302
    assert AdapterVersion.objects.get().status == "uploaded"


@pytest.mark.parametrize(
    "files, message",
    [
        (
            {"config": ("adapter_config.json", config_json()), "weights": ("adapter_model.bin", b"\x80\x04pickle")},
            "pickled weights are refused",
        ),
        ({"archive": {"adapter_config.json": config_json(), "adapter_model.bin": b"\x80\x04"}}, "pickled weights"),
        ({"archive": {"../evil/adapter_config.json": config_json()}}, "outside the adapter directory"),
        ({"archive": {"/etc/adapter_config.json": config_json()}}, "outside the adapter directory"),
        (
            {"config": ("adapter_config.json", b"{nope"), "weights": ("adapter_model.safetensors", weights())},
            "not valid JSON",
        ),
        (
            {
                "config": ("adapter_config.json", config_json(peft_type="IA3")),
                "weights": ("adapter_model.safetensors", weights()),
            },
            "not LORA",
        ),
        (
            {
                "config": ("adapter_config.json", config_json(base_model_name_or_path="meta-llama/Llama-3-8B")),
                "weights": ("adapter_model.safetensors", weights()),
            },
            "is not this server's base model",
        ),
        (
            {
                "config": ("adapter_config.json", config_json(r=512)),
                "weights": ("adapter_model.safetensors", weights()),
            },
            "rank r=512 is outside",
        ),
        (
            {"config": ("adapter_config.json", config_json()), "weights": ("adapter_model.safetensors", b"garbage!!")},
            "header length",
        ),
        (
            {
                "config": ("adapter_config.json", config_json()),
                "weights": ("adapter_model.safetensors", weights()[:-8]),
            },
            "describes",
        ),
        (
            {
                "config": ("adapter_config.json", config_json()),
                "weights": (
                    "adapter_model.safetensors",
                    weights(
                        {f"{Q}.lora_A.weight": torch.randn(4, HIDDEN + 1), f"{Q}.lora_B.weight": torch.zeros(HIDDEN, 4)}
                    ),
                ),
            },
            "wrong shape",
        ),
        (
            {
                "config": ("adapter_config.json", config_json()),
                "weights": (
                    "adapter_model.safetensors",
                    weights(
                        {
                            "base_model.model.model.layers.9.mlp.zap.lora_A.weight": torch.randn(4, HIDDEN),
                            "base_model.model.model.layers.9.mlp.zap.lora_B.weight": torch.zeros(HIDDEN, 4),
                        }
                    ),
                ),
            },
            "no Linear module",
        ),
        (
            {
                "config": ("adapter_config.json", config_json()),
                "weights": ("adapter_model.safetensors", weights({f"{Q}.lora_A.weight": torch.randn(4, HIDDEN)})),
            },
            "needs both lora_A and lora_B",
        ),
        (
            {
                "config": ("adapter_config.json", config_json()),
                "weights": ("adapter_model.safetensors", weights({"model.embed_tokens.weight": torch.randn(4, 4)})),
            },
            "unexpected tensor",
        ),
        ({"config": ("adapter_config.json", config_json())}, "upload adapter_config.json and"),
    ],
)
def test_a_bad_upload_is_refused_with_a_clear_message_and_leaves_nothing(
    alice, persona, base_model, settings, files, message
):
    uploads = {}
    for field, value in files.items():
        uploads[field] = zipped(value) if field == "archive" else SimpleUploadedFile(*value)
    response = upload(alice, **uploads)
    assert response.status_code == 400, response.content.decode()[:500]
    assert message in html.unescape(response.content.decode())
    assert not AdapterVersion.objects.exists()
    assert files_left(settings) == []


def test_a_zip_bomb_is_refused_before_it_is_inflated(alice, persona, base_model, settings):
    archive = zipped(
        {"adapter_config.json": config_json(), "adapter_model.safetensors": b"\0" * (4 << 20)},
        compression=zipfile.ZIP_DEFLATED,
    )
    response = upload(alice, archive=archive)
    assert response.status_code == 400 and "compressed" in response.content.decode()
    assert files_left(settings) == []


def test_an_archive_that_unpacks_past_the_limit_is_refused(alice, persona, base_model, settings):
    settings.VOYAGER_MAX_UPLOAD_BYTES = 2048
    archive = zipped(
        {"adapter_config.json": config_json(), "adapter_model.safetensors": b"\1" * 3000},
        compression=zipfile.ZIP_DEFLATED,
    )
    response = upload(alice, archive=archive)
    assert response.status_code == 400 and "byte upload limit" in response.content.decode()
    assert files_left(settings) == []


def test_a_body_over_the_limit_is_refused_before_it_is_read(alice, persona, base_model, settings):
    settings.VOYAGER_MAX_UPLOAD_BYTES = 1024
    response = upload(alice, weights=SimpleUploadedFile("adapter_model.safetensors", b"\0" * 4096))
    assert response.status_code == 413 and "1024 byte limit" in response.content.decode()
    assert files_left(settings) == []


def test_the_limit_handler_cuts_off_a_body_without_a_length():
    from django.core.files.uploadhandler import StopUpload

    from portal.adapters import UploadLimitHandler

    handler = UploadLimitHandler(limit=10)
    handler.handle_raw_input(None, {}, None, b"x")
    handler.receive_data_chunk(b"12345", 0)
    with pytest.raises(StopUpload):
        handler.receive_data_chunk(b"678901", 5)
    assert handler.too_large


def test_only_the_owning_modder_may_upload(alice, bob, charlie, persona, base_model):
    assert upload(bob).status_code == 403
    assert upload(charlie).status_code == 403
    alice.groups.remove(Group.objects.get(name="modder"))
    assert upload(alice).status_code == 403
    assert not AdapterVersion.objects.exists()


def test_upload_needs_the_csrf_token(alice, persona, base_model):
    client = client_for(alice)
    response = client.post("/personas/miner/upload/", {"config": SimpleUploadedFile("adapter_config.json", b"{}")})
    assert response.status_code == 403


def test_a_moderator_approves_then_the_owner_activates_and_the_old_version_retires(
    alice, bob, persona, base_model, django_user_model, django_capture_on_commit_callbacks
):
    mod = django_user_model.objects.create_user("mod", "", "mod-pass-123")
    mod.groups.add(Group.objects.get(name="moderator"))
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            upload(alice)
    review = "/personas/miner/v{}/review/"
    response = csrf_post(client_for(alice), review.format(1), {"decision": "approve"})
    assert response.status_code == 403 and "only moderators" in response.content.decode()
    response = csrf_post(client_for(alice), review.format(1), {"decision": "activate"})
    assert response.status_code == 400 and "must approve it first" in response.content.decode()
    for v in (1, 2):
        assert csrf_post(client_for(mod), review.format(v), {"decision": "approve"}).status_code == 302
    assert csrf_post(client_for(bob), review.format(1), {"decision": "activate"}).status_code == 403
    assert csrf_post(client_for(alice), review.format(1), {"decision": "activate"}).status_code == 302
    assert csrf_post(client_for(alice), review.format(2), {"decision": "activate"}).status_code == 302
    persona.refresh_from_db()
    statuses = dict(AdapterVersion.objects.values_list("version", "status"))
    assert statuses == {1: "retired", 2: "active"} and persona.active_adapter.version == 2
    response = csrf_post(client_for(mod), review.format(2), {"decision": "reject"})
    assert response.status_code == 400 and "only validated versions" in response.content.decode()


def test_header_parsing_never_reads_tensor_data(tmp_path):
    from portal.adapters import read_safetensors_header

    header = json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    assert read_safetensors_header(path)["x"]["shape"] == [2]
    header = json.dumps(
        {
            "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        }
    ).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 12)
    with pytest.raises(Exception, match="overlaps"):
        read_safetensors_header(path)


def test_the_api_takes_an_upload_from_the_owner_and_names_the_problem_otherwise(alice, bob, persona, base_model):
    from rest_framework.test import APIClient

    def post(user, **files):
        client = APIClient()
        client.force_authenticate(user)
        return client.post(f"/api/personas/{persona.slug}/adapter-versions/", files, format="multipart")

    good = {
        "config": SimpleUploadedFile("adapter_config.json", config_json()),
        "weights": SimpleUploadedFile("adapter_model.safetensors", weights()),
    }
    response = post(alice, **good)
    assert response.status_code == 201 and response.json()["version"] == 1 and response.json()["status"] == "uploaded"
    assert "being validated" in response.json()["status_detail"]
    response = post(
        alice,
        config=SimpleUploadedFile("adapter_config.json", config_json(r=0)),
        weights=SimpleUploadedFile("adapter_model.safetensors", weights()),
    )
    assert response.status_code == 400 and "rank r=0" in str(response.json())
    bad_bob = {
        "config": SimpleUploadedFile("adapter_config.json", config_json()),
        "weights": SimpleUploadedFile("adapter_model.safetensors", weights()),
    }
    assert post(bob, **bad_bob).status_code == 403


# --- the smoke generation: uploaded -> validated, or rejected ----------------------------------------


def huge_weights() -> bytes:
    """Every value finite, their product not: the activations overflow."""
    return weights(
        {f"{Q}.lora_A.weight": torch.full((4, HIDDEN), 1e30), f"{Q}.lora_B.weight": torch.full((HIDDEN, 4), 1e30)}
    )


def upload_and_validate(user, capture, weights_bytes=None):
    files = {
        "config": SimpleUploadedFile("adapter_config.json", config_json()),
        "weights": SimpleUploadedFile("adapter_model.safetensors", weights_bytes or weights()),
    }
    with capture(execute=True):
        response = upload(user, **files)
    assert response.status_code == 302, response.content.decode()[:500]
    return AdapterVersion.objects.get(version=int(response["Location"].rstrip("/").rsplit("v", 1)[1]))


def test_a_fitting_adapter_passes_its_smoke_generation_and_is_validated(
    alice, persona, base_model, django_capture_on_commit_callbacks
):
    v1 = upload_and_validate(alice, django_capture_on_commit_callbacks)
    smoke = v1.metrics["smoke"]
    assert v1.status == "validated" and v1.validation_error == ""
    assert smoke["tokens"] >= 2 and smoke["text"] and 0 < smoke["max_abs_logit"] < 1e4
    assert (v1.absolute_path / "adapter_model.safetensors").is_file()
    body = client_for(alice).get("/personas/miner/v1/").content.decode()
    assert 'id="smoke"' in body and "Smoke generation passed" in body and 'id="validating"' not in body


def test_the_upload_says_the_version_is_being_validated(alice, persona, base_model):
    client = client_for(alice)
    response = csrf_post(
        client,
        "/personas/miner/upload/",
        {
            "config": SimpleUploadedFile("adapter_config.json", config_json()),
            "weights": SimpleUploadedFile("adapter_model.safetensors", weights()),
        },
        follow=True,
    )
    body = html.unescape(response.content.decode())
    assert "v1 is uploaded and being validated" in body and 'id="validating"' in body


@pytest.mark.django_db(transaction=True)  # commits for real: the eager smoke generation runs inside the upload
def test_an_upload_rejected_at_once_says_so_on_the_page_and_in_the_api(alice, persona, base_model, settings):
    from rest_framework.test import APIClient

    def bad():
        return {
            "config": SimpleUploadedFile("adapter_config.json", config_json()),
            "weights": SimpleUploadedFile("adapter_model.safetensors", nan_weights()),
        }

    response = upload(alice, **bad(), follow=True)
    body = html.unescape(response.content.decode())
    assert "v1 is uploaded but was rejected: The smoke generation failed" in body
    assert "being validated" not in body and 'id="validating"' not in body and 'id="validation-error"' in body

    client = APIClient()
    client.force_authenticate(alice)
    response = client.post(f"/api/personas/{persona.slug}/adapter-versions/", bad(), format="multipart")
    assert response.status_code == 422, response.content[:500]
    error = response.json()["error"]
    assert error["code"] == "rejected" and error["message"].startswith("v2 is rejected: The smoke generation failed")
    assert "non-finite values" in error["message"]
    assert response["Location"] == "/api/adapter-versions/miner/2/"
    assert client.get(response["Location"]).json()["status"] == "rejected"
    assert files_left(settings) == []


def test_the_api_says_where_an_accepted_upload_is(alice, persona, base_model):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(alice)
    files = {
        "config": SimpleUploadedFile("adapter_config.json", config_json()),
        "weights": SimpleUploadedFile("adapter_model.safetensors", weights()),
    }
    response = client.post(f"/api/personas/{persona.slug}/adapter-versions/", files, format="multipart")
    assert response.status_code == 201 and response["Location"] == "/api/adapter-versions/miner/1/"


@pytest.mark.parametrize(
    "bad, reason",
    [(nan_weights, "non-finite values in 'model.layers.0.self_attn.q_proj'"), (huge_weights, "NaN or infinite")],
)
def test_an_adapter_that_breaks_the_model_is_rejected_with_its_reason_and_its_files_removed(
    alice, persona, base_model, settings, django_capture_on_commit_callbacks, bad, reason
):
    v1 = upload_and_validate(alice, django_capture_on_commit_callbacks, bad())
    assert v1.status == "rejected" and "smoke" not in v1.metrics
    assert v1.validation_error.startswith("The smoke generation failed:") and reason in v1.validation_error
    assert str(settings.MEDIA_ROOT) not in v1.validation_error  # no server paths in what the modder reads
    assert files_left(settings) == [] and not v1.absolute_path.exists()
    body = html.unescape(client_for(alice).get("/personas/miner/v1/").content.decode())
    assert 'id="validation-error"' in body and reason in body


def test_a_moderator_can_only_review_a_version_that_passed_its_smoke_generation(
    alice, persona, base_model, django_user_model, django_capture_on_commit_callbacks
):
    mod = django_user_model.objects.create_user("mod", "", "mod-pass-123")
    mod.groups.add(Group.objects.get(name="moderator"))
    upload(alice)  # v1: never leaves "uploaded" (no commit here)
    upload_and_validate(alice, django_capture_on_commit_callbacks, nan_weights())  # v2: rejected
    review = "/personas/miner/v{}/review/"
    response = csrf_post(client_for(mod), review.format(1), {"decision": "approve"})
    assert response.status_code == 400 and "still being validated" in response.content.decode()
    assert "Approve" not in client_for(mod).get("/personas/miner/v1/").content.decode()
    response = csrf_post(client_for(mod), review.format(2), {"decision": "approve"})
    assert response.status_code == 400 and "only validated versions" in response.content.decode()
    assert dict(AdapterVersion.objects.values_list("version", "status")) == {1: "uploaded", 2: "rejected"}


def test_validation_runs_once_however_often_the_task_is_delivered(alice, persona, base_model):
    from portal import tasks

    upload(alice)
    v1 = AdapterVersion.objects.get()
    assert tasks.adapter_validate.delay(v1.pk).get() == "validated"
    v1.refresh_from_db()
    first = (v1.status_changed_at, v1.metrics)
    assert tasks.adapter_validate.delay(v1.pk).get() == "validated"
    v1.refresh_from_db()
    assert (v1.status_changed_at, v1.metrics) == first


@pytest.mark.django_db(transaction=True)  # commits for real: the eager task runs inside the upload, as served
def test_a_base_model_that_will_not_load_leaves_the_upload_standing_until_it_is_queued_again(
    alice, persona, base_model, settings
):
    from django.core.management import call_command

    from agents_app.adapters import version_validate
    from inference.loading import ModelLoadError

    saved = base_model.parent / "weights-aside"
    saved.mkdir()
    for weights_file in base_model.glob("*.safetensors"):
        weights_file.rename(saved / weights_file.name)
    assert upload(alice).status_code == 302  # the server's fault, not the adapter's: the upload stands
    v1 = AdapterVersion.objects.get()
    assert v1.status == "uploaded" and (v1.absolute_path / "adapter_model.safetensors").is_file()
    with pytest.raises(ModelLoadError):  # in a worker: the task fails and Celery retries it
        version_validate(adapter_id=v1.pk)
    for weights_file in saved.iterdir():
        weights_file.rename(base_model / weights_file.name)
    call_command("validate_adapters", stdout=io.StringIO())
    v1.refresh_from_db()
    assert v1.status == "validated"
    assert upload(alice).status_code == 302  # eager and committed: validated before the page comes back
    assert AdapterVersion.objects.get(version=2).status == "validated"


def test_the_smoke_generation_wants_a_few_tokens_out(tiny_model, tmp_path):
    from inference.smoke import SmokeFailed, smoke_generate

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_bytes(config_json(base_model_name_or_path=str(tiny_model)))
    (adapter / "adapter_model.safetensors").write_bytes(weights())
    assert smoke_generate(tiny_model, adapter).tokens >= 2
    with pytest.raises(SmokeFailed, match=r"said 1 token\(s\).*at least 2"):
        smoke_generate(tiny_model, adapter, max_tokens=1, min_tokens=2)


# --- the config and the weights must agree: what PEFT builds is what the engine serves --------------

K = "base_model.model.model.layers.0.self_attn.k_proj"
KV = 32  # the tiny model's k_proj/v_proj width: 2 key-value heads of 16


def q_weights(rank=4, name=Q, infix=""):
    return {
        f"{name}.lora_A{infix}.weight": torch.randn(rank, HIDDEN),
        f"{name}.lora_B{infix}.weight": torch.zeros(HIDDEN, rank),
    }


@pytest.mark.parametrize(
    "config, tensors, message",
    [
        (  # PEFT would add a v_proj LoRA (trained, judged by the gate) that the file has no weights for
            {"target_modules": ["q_proj", "v_proj"]},
            q_weights(),
            "makes PEFT add LoRA to model.layers.0.self_attn.v_proj",
        ),
        (  # a suffix matches every layer's q_proj; the file adapts layer 0 only
            {"target_modules": ["q_proj"], "layers_to_transform": None},
            q_weights(),
            "makes PEFT add LoRA to model.layers.1.self_attn.q_proj",
        ),
        (  # a regular expression is matched against whole module names
            {"target_modules": r".*\.q_proj", "layers_to_transform": None},
            q_weights(),
            "makes PEFT add LoRA to model.layers.1.self_attn.q_proj",
        ),
        (  # weights PEFT would drop and the engine would serve
            {"target_modules": r"model\.layers\.0\.self_attn\.q_proj", "layers_to_transform": None},
            {
                **q_weights(),
                f"{K}.lora_A.weight": torch.randn(4, HIDDEN),
                f"{K}.lora_B.weight": torch.zeros(KV, 4),
            },
            "has weights for model.layers.0.self_attn.k_proj, which target_modules",
        ),
        (
            {
                "target_modules": ["q_proj"],
                "exclude_modules": ["model.layers.0.self_attn.q_proj"],
                "layers_to_transform": None,
            },
            q_weights(),
            "makes PEFT add LoRA to model.layers.1.self_attn.q_proj",
        ),
        ({"r": 8}, q_weights(4), f"gives model.layers.0.self_attn.q_proj rank 8 (r or rank_pattern), {WEIGHTS}"),
        ({"rank_pattern": {"q_proj": 2}}, q_weights(4), "gives model.layers.0.self_attn.q_proj rank 2"),
        (  # the engine reads names without PEFT's prefix, PEFT does not load them
            {},
            q_weights(name="model.layers.0.self_attn.q_proj"),
            "is not named as PEFT saves it",
        ),
        ({}, q_weights(infix=".default"), "is not named as PEFT saves it"),
        ({"r": "4"}, q_weights(), "r '4' is not a whole number"),
        ({"r": 4.0}, q_weights(), "r 4.0 is not a whole number"),
        ({"lora_alpha": "8"}, q_weights(), "lora_alpha '8' is not a positive number"),
        ({"rank_pattern": {"q_proj": 0}}, q_weights(), "rank_pattern['q_proj'] is 0"),
        ({"target_modules": None}, q_weights(), "target_modules None must name the modules"),
        ({"target_modules": "q_proj("}, q_weights(), "is not a regular expression"),
        ({"target_modules": ["o_proj"]}, q_weights(), "makes PEFT add LoRA to model.layers.0.self_attn.o_proj"),
        ({"modules_to_save": ["lm_head"]}, q_weights(), "modules_to_save ['lm_head'] is not supported"),
        ({"layer_replication": [[0, 2]]}, q_weights(), "layer_replication adapters are not supported"),
        ({"task_type": "SEQ_CLS"}, q_weights(), "a persona adapter is CAUSAL_LM"),
        ({"peft_type": "lora"}, q_weights(), "PEFT cannot read it"),
    ],
)
def test_a_config_that_disagrees_with_its_weights_is_refused_naming_both(
    alice, persona, base_model, settings, config, tensors, message
):
    overrides = {"target_modules": ["q_proj"], "layers_to_transform": [0], **config}
    files = {
        "config": SimpleUploadedFile(CONFIG, config_json(**overrides)),
        "weights": SimpleUploadedFile(WEIGHTS, weights(tensors)),
    }
    response = upload(alice, **files)
    body = html.unescape(response.content.decode())
    assert response.status_code == 400, body[:800]
    assert message in body, body[body.find('id="upload-error"') :][:800]
    if "disagree" in body:
        assert f"{CONFIG} and {WEIGHTS} disagree" in body
    assert not AdapterVersion.objects.exists()
    assert files_left(settings) == []


def test_an_adapter_saved_by_peft_itself_is_accepted_as_peft_saved_it(alice, persona, base_model, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    from inference.lora import load_adapter

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_model),
        LoraConfig(
            r=4,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj"],
            rank_pattern={"v_proj": 2},
            init_lora_weights=False,  # B not zero: the comparison below means something
            task_type="CAUSAL_LM",
        ),
    )
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / CONFIG).read_text())
    config["base_model_name_or_path"] = "tiny-test"  # PEFT writes the path it loaded from
    files = {
        "config": SimpleUploadedFile(CONFIG, json.dumps(config).encode()),
        "weights": SimpleUploadedFile(WEIGHTS, (tmp_path / "saved" / WEIGHTS).read_bytes()),
    }
    response = upload(alice, **files)
    assert response.status_code == 302, html.unescape(response.content.decode())[:800]
    stored = AdapterVersion.objects.get()
    assert stored.target_modules == ["q_proj", "v_proj"] and stored.rank == 4
    # What the engine serves is what PEFT loads: four modules, each with PEFT's rank and scale.
    engine = load_adapter(stored.absolute_path, AutoModelForCausalLM.from_pretrained(base_model))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), str(stored.absolute_path))
    lora_layers = {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }
    assert set(engine.modules) == set(lora_layers) and len(lora_layers) == 4
    for name, (a, b) in engine.modules.items():
        layer = lora_layers[name]
        assert a.shape[1] == layer.r["default"]
        expected_b = layer.lora_B["default"].weight.t() * layer.scaling["default"]
        assert torch.allclose(b, expected_b)


def test_the_engine_reads_a_missing_lora_alpha_as_peft_does(tmp_path, tiny_model):
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    from inference.lora import load_adapter

    root = tmp_path / "adapter"
    root.mkdir()
    config = json.loads(config_json(base_model_name_or_path=str(tiny_model)))
    del config["lora_alpha"]
    (root / CONFIG).write_text(json.dumps(config))
    b = torch.randn(HIDDEN, 4)
    (root / WEIGHTS).write_bytes(weights({f"{Q}.lora_A.weight": torch.randn(4, HIDDEN), f"{Q}.lora_B.weight": b}))
    engine = load_adapter(root, AutoModelForCausalLM.from_pretrained(tiny_model))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(root))
    scaling = peft_model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"]
    assert scaling == LoraConfig().lora_alpha / 4
    _, engine_b = engine.modules["model.layers.0.self_attn.q_proj"]
    assert torch.allclose(engine_b, b.t() * scaling)


# --- damaged zips: a 400 naming the entry, never a 500 -----------------------------------------------


def _member_data_offset(raw: bytes, name: str) -> int:
    info = zipfile.ZipFile(io.BytesIO(raw)).getinfo(name)
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def _central_entry(raw: bytes, name: str) -> int:
    end = raw.rindex(b"PK\x05\x06")  # the end record says where the central directory starts
    (at,) = struct.unpack("<I", raw[end + 16 : end + 20])
    while True:
        name_len, extra_len, comment_len = struct.unpack("<HHH", raw[at + 28 : at + 34])
        if raw[at + 46 : at + 46 + name_len].decode() == name:
            return at
        at += 46 + name_len + extra_len + comment_len


def damaged_zip(kind: str) -> tuple[bytes, str]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(
            CONFIG, config_json(), compress_type=zipfile.ZIP_DEFLATED if kind == "corrupt" else zipfile.ZIP_STORED
        )
        zf.writestr(WEIGHTS, weights())
    raw = bytearray(buf.getvalue())
    if kind == "crc":  # one byte of the config changed after its CRC was taken
        raw[_member_data_offset(bytes(raw), CONFIG) + 2] ^= 0x20
        return bytes(raw), CONFIG
    if kind == "corrupt":  # the deflate stream starts with a block type that does not exist
        raw[_member_data_offset(bytes(raw), CONFIG)] = 0xFF
        return bytes(raw), CONFIG
    entry = _central_entry(bytes(raw), WEIGHTS)
    compressed, size = struct.unpack("<II", raw[entry + 20 : entry + 28])
    if kind == "short":  # the directory says fewer bytes than there are
        raw[entry + 24 : entry + 28] = struct.pack("<I", size - 16)
        raw[entry + 20 : entry + 24] = struct.pack("<I", compressed - 16)
    else:  # "long": the directory says more bytes than the archive holds
        raw[entry + 20 : entry + 28] = struct.pack("<II", compressed + 4096, size + 4096)
    return bytes(raw), WEIGHTS


@pytest.mark.parametrize("kind", ["crc", "corrupt", "short", "long"])
def test_a_zip_with_a_damaged_entry_is_refused_naming_the_entry(alice, persona, base_model, settings, kind):
    raw, member = damaged_zip(kind)
    response = upload(alice, archive=SimpleUploadedFile("adapter.zip", raw))
    body = html.unescape(response.content.decode())
    assert response.status_code == 400, body[:800]
    assert f"archive: entry {member!r} is damaged" in body
    assert not AdapterVersion.objects.exists() and files_left(settings) == []


def test_the_api_refuses_a_damaged_zip_in_its_error_shape(alice, persona, base_model, settings):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(alice)
    raw, member = damaged_zip("crc")
    response = client.post(
        f"/api/personas/{persona.slug}/adapter-versions/",
        {"archive": SimpleUploadedFile("adapter.zip", raw)},
        format="multipart",
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and f"archive: entry {member!r} is damaged" in error["message"]
    assert files_left(settings) == []


def test_an_encrypted_zip_entry_is_refused_by_name(alice, persona, base_model):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(CONFIG, config_json())
        zf.writestr(WEIGHTS, weights())
    raw = bytearray(buf.getvalue())
    entry = _central_entry(bytes(raw), WEIGHTS)
    raw[entry + 8] |= 0x1  # the "encrypted" flag, in the directory zipfile reads
    response = upload(alice, archive=SimpleUploadedFile("adapter.zip", bytes(raw)))
    assert response.status_code == 400 and f"entry {WEIGHTS!r} is encrypted" in html.unescape(response.content.decode())
