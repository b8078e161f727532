"""Metrics, health endpoints, and the request id that follows an ask from the gateway through the worker."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from asgiref.sync import sync_to_async
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from agents_app.models import TrainingRun
from agents_app.observability import JsonFormatter, RequestIdFilter
from tests.gateway_client import ScriptedBackend, ask, collect_until, connect, running_worker, send

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _embedded_off():
    with override_settings(VOYAGER_EMBEDDED_WORKER=False):
        yield


def scrape() -> dict[tuple[str, tuple], float]:
    response = Client().get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_after_a_burst_of_asks(game_server, persona):
    backend = ScriptedBackend(deltas=["Hi ", "there ", "kys"], actions=[{"name": "dig", "args": []}])
    before = await sync_to_async(scrape)()
    async with running_worker(backend) as worker:
        communicator, _, _ = await connect(game_server.raw_token)
        during = await sync_to_async(scrape)()
        for i in range(5):
            await send(communicator, ask(id=f"q{i}", npc=f"npc-{i}"))
        frames = []
        for _ in range(5):
            frames += await collect_until(communicator)
        await asyncio.sleep(1.2)  # one heartbeat carries the worker's numbers
        after = await sync_to_async(scrape)()
        await communicator.disconnect()
    assert sum(f["type"] == "reply" for f in frames) == 5
    assert value(during, "voyager_game_server_connections") == value(before, "voyager_game_server_connections") + 1
    assert (
        value(after, "voyager_asks_total", outcome="reply") - value(before, "voyager_asks_total", outcome="reply") == 5
    )
    for series in ("voyager_time_to_first_token_seconds_count", "voyager_reply_seconds_count"):
        assert value(after, series, persona="miner") - value(before, series, persona="miner") == 5
    assert (
        value(after, "voyager_completion_tokens_total", persona="miner")
        - value(before, "voyager_completion_tokens_total", persona="miner")
        == 15
    )
    hits = ("voyager_policy_hits_total", {"rule": "action_not_allowed", "severity": "info"})
    assert value(after, hits[0], **hits[1]) - value(before, hits[0], **hits[1]) == 5
    assert value(after, "voyager_policy_hits_total", rule="blocked_term", severity="severe") >= 5
    assert value(after, "voyager_inference_workers_alive") == 1
    assert value(after, "voyager_worker_requests_served", worker=worker.worker_id) == 5
    assert ("voyager_inference_queue_depth", (("worker", worker.worker_id),)) in after
    assert value(after, "voyager_npcs_frozen") == 5  # each NPC said a blocked term
    assert value(after, "voyager_policy_flags_open") == 10


async def test_metrics_name_public_personas_and_count_every_private_one_under_one_label(
    game_server, persona, private_persona, alice
):
    from agents_app.models import Persona

    await sync_to_async(Persona.objects.create)(slug="hush", name="Hush", owner=alice, is_public=False)
    before = await sync_to_async(scrape)()
    async with running_worker(ScriptedBackend()):
        communicator, _, _ = await connect(game_server.raw_token)
        for i, slug in enumerate(["secret", "hush", "secret", "miner"]):
            await send(communicator, ask(id=f"q{i}", npc=f"npc-{slug}", persona=slug))
            assert (await collect_until(communicator))[-1]["type"] == "reply"
        await communicator.disconnect()
    after = await sync_to_async(scrape)()
    body = (await sync_to_async(Client().get)("/metrics")).content.decode()
    assert "secret" not in body and "hush" not in body  # no label, no series names a private persona
    for series, private, public in (
        ("voyager_reply_seconds_count", 3, 1),
        ("voyager_time_to_first_token_seconds_count", 3, 1),
        ("voyager_completion_tokens_total", 3 * 3, 3),
    ):
        assert value(after, series, persona="_private") - value(before, series, persona="_private") == private
        assert value(after, series, persona="miner") - value(before, series, persona="miner") == public


async def test_training_runs_are_counted_by_outcome(persona):
    await sync_to_async(TrainingRun.objects.create)(persona=persona, night="2026-01-01", status="gate_rejected")
    samples = await sync_to_async(scrape)()
    assert value(samples, "voyager_training_runs", outcome="gate_rejected") == 1
    assert value(samples, "voyager_training_runs", outcome="succeeded") == 0


async def test_healthz_and_readyz(game_server):
    client = Client()
    assert (await sync_to_async(client.get)("/healthz")).json() == {"status": "ok"}
    not_ready = await sync_to_async(client.get)("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["checks"]["workers"].startswith("no inference worker")
    assert not_ready.json()["checks"]["database"] == "ok"
    async with running_worker(ScriptedBackend()):
        ready = await sync_to_async(client.get)("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["workers"] == 1


async def test_one_request_id_follows_an_ask_from_the_gateway_through_the_worker(game_server, persona, caplog):
    caplog.set_level(logging.INFO, logger="voyager")
    async with running_worker(ScriptedBackend()):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask())
        reply = (await collect_until(communicator))[-1]
        await communicator.disconnect()
    gateway_lines = [r for r in caplog.records if r.name == "voyager.gateway" and "replied" in r.getMessage()]
    assert len(gateway_lines) == 1 and reply["exchange"] in gateway_lines[0].getMessage()
    request_id = gateway_lines[0].request_id
    assert len(request_id) == 32
    worker_lines = [
        r for r in caplog.records if r.name == "voyager.worker" and getattr(r, "request_id", "") == request_id
    ]
    assert {r.getMessage().split(" ")[0] for r in worker_lines} == {"accepted", "finished:"}
    # And the structured line carries it.
    record = worker_lines[0]
    assert RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == request_id and line["logger"] == "voyager.worker" and line["level"] == "INFO"


def test_an_http_request_gets_an_id_or_keeps_the_proxys(db):
    client = Client()
    assert len(client.get("/healthz")["X-Request-ID"]) == 32
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"})["X-Request-ID"] == "abc-123"
    assert client.get("/healthz", headers={"X-Request-ID": "bad id; drop"})["X-Request-ID"] != "bad id; drop"
