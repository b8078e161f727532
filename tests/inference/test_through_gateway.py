"""The whole ask path with the real engine: gateway → channel layer → worker → engine → gateway."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from agents_app import services
from agents_app.models import AdapterVersion, Exchange, Persona
from inference.engine import Engine, EngineConfig
from inference.heartbeat import heartbeats
from inference.loading import load_base_model
from inference.lora import file_sha256
from inference.prompt_cache import BLOCK
from inference.service import EngineBackend, base_model_id
from inference.worker import InferenceWorker
from portal.asgi import application

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


@pytest.fixture
def engine_backend(tiny_model_dir):
    loaded = load_base_model(tiny_model_dir)
    backend = EngineBackend(Engine(loaded, EngineConfig(max_queue=8, adapter_slots=4)).start(), base_model_id(loaded))
    yield backend
    backend.stop(drain=False)


async def test_a_game_ask_is_answered_by_the_model_with_the_personas_active_adapter(
    engine_backend, adapter_factory, django_user_model
):
    adapter_dir = adapter_factory("through-gateway", seed=3)

    def setup():
        owner = django_user_model.objects.create_user("owner", "", "pw-owner-123")
        persona = Persona.objects.create(
            slug="bram",
            name="Bram",
            owner=owner,
            system_prompt="You are a miner.",
            temperature=0.0,
            allowed_actions=["say", "jump", "give", "move", "face", "follow", "stop_following"],
            max_tokens=24,
        )
        adapter = AdapterVersion.objects.create(
            persona=persona,
            version=1,
            files_path=str(adapter_dir),
            sha256=file_sha256(adapter_dir / "adapter_model.safetensors"),
            base_model_id=engine_backend.base_model_id,
            rank=4,
            target_modules=["q_proj", "v_proj"],
            size_bytes=1,
            status="active",
        )
        persona.active_adapter = adapter
        persona.save()
        _, token = services.game_server_create(name="world", owner=owner)
        return adapter, token

    adapter, token = await database_sync_to_async(setup)()
    store = heartbeats()
    for worker_id in await store.alive():
        await store.forget(worker_id)
    worker = InferenceWorker(engine_backend)
    task = asyncio.create_task(worker.run())
    await worker.started.wait()
    try:
        with override_settings(VOYAGER_EMBEDDED_WORKER=False):
            communicator = WebsocketCommunicator(
                application, "/ws/luanti/", headers=[(b"authorization", f"Bearer {token}".encode())]
            )
            connected, _ = await communicator.connect()
            assert connected
            frames = await ask_npc(communicator, "1", "Do you have any apples?")
            # The same NPC's next turn: its prompt starts with the first one's, already in the cache.
            follow_up = await ask_npc(communicator, "2", "And some bread?")
            await communicator.disconnect()
            await asyncio.sleep(1.2)  # one heartbeat carries the worker's numbers
            metrics = (await database_sync_to_async(Client().get)("/metrics")).content.decode()
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
    reply = frames[-1]
    assert reply["type"] == "reply", reply
    streamed = "".join(f["text"] for f in frames if f["type"] == "delta")
    assert reply["text"].strip() and streamed.strip() == reply["text"].strip()
    exchange = await database_sync_to_async(Exchange.objects.get)(pk=reply["exchange"])
    assert exchange.adapter_version_id == adapter.pk
    assert "Bram" in exchange.prompt and "Do you have any apples?" in exchange.prompt
    assert exchange.completion_tokens > 0 and exchange.base_model_id == engine_backend.base_model_id
    assert follow_up[-1]["type"] == "reply", follow_up
    second = await database_sync_to_async(Exchange.objects.get)(pk=follow_up[-1]["exchange"])
    assert "Do you have any apples?" in second.prompt  # the first turn is the second one's memory
    assert sample(metrics, "voyager_prompt_cache_hits_total", worker.worker_id) >= 1
    assert sample(metrics, "voyager_prompt_cache_tokens_saved_total", worker.worker_id) >= BLOCK


async def ask_npc(communicator, frame_id: str, text: str) -> list[dict]:
    await communicator.send_to(
        text_data=json.dumps(
            {
                "type": "ask",
                "id": frame_id,
                "npc": "npc-1",
                "persona": "bram",
                "player": "steve",
                "text": text,
                "context": {"pos": [1, 2, 3], "time_of_day": 0.4},
            }
        )
    )
    frames = []
    while not frames or frames[-1]["type"] not in ("reply", "error"):
        frames.append(json.loads(await communicator.receive_from(timeout=60)))
    return frames


def sample(metrics: str, name: str, worker: str) -> float:
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == name and s.labels.get("worker") == worker:
                return s.value
    raise AssertionError(f"/metrics has no {name} for worker {worker}")
