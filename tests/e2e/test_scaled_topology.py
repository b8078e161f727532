"""The scaled topology as local processes: two Daphne, two inference workers, PostgreSQL and Redis.

The same commands as the README's scaled topology and ``compose.yaml``, with the
echo backend (``VOYAGER_ECHO_DELAY`` makes each stream take a while). Asks from
two game servers' connections spread over both workers; one worker is killed
with SIGKILL mid-stream; every ask still ends, within seconds, in a ``reply``
(stored: its Exchange row exists) or ``unavailable``, and the survivor answers
what comes next.

Needs ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL``; CI sets both.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from agents_app.models import Exchange, GameServer, Persona
from tests.processes import child_database_url, child_env, free_port, tail

websockets = pytest.importorskip("websockets.asyncio.client")

ROOT = Path(__file__).resolve().parents[2]
ECHO_DELAY = 0.15  # seconds per word: a 16-word ask streams for about 2.4 s

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")),
        reason="the scaled topology runs as separate processes: set DATABASE_URL (PostgreSQL) and REDIS_URL",
    ),
]


class Topology:
    def __init__(self, logs: Path, env: dict) -> None:
        self.logs, self.env = logs, env
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 (closed in stop)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        proc.log_file = log
        self.procs[name] = proc
        return proc

    def daphne(self, name: str, port: int) -> None:
        proc = self.spawn(
            name, [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"]
        )
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"{name} exited:\n{tail(self.logs / f'{name}.log')}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"{name} did not listen:\n{tail(self.logs / f'{name}.log')}"
                time.sleep(0.1)

    def worker(self, name: str) -> None:
        proc = self.spawn(name, [sys.executable, "manage.py", "inference_worker", "--backend", "echo"])
        log = self.logs / f"{name}.log"
        deadline = time.monotonic() + 60
        while " ready" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"{name} exited:\n{tail(log)}"
            assert time.monotonic() < deadline, f"{name} did not start:\n{tail(log)}"
            time.sleep(0.1)

    def worker_id(self, name: str) -> str:
        for line in (self.logs / f"{name}.log").read_text(errors="replace").splitlines():
            if line.startswith("inference worker ") and line.endswith(" ready"):
                return line.split(" ")[2]
        raise AssertionError(f"{name} never said its id")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.log_file.close()


@pytest.fixture
def topology(tmp_path, request):
    env = child_env(
        {
            "DATABASE_URL": child_database_url(),
            "REDIS_URL": os.environ["REDIS_URL"],
            # A prefix of its own, so no other process on this Redis takes these requests.
            "VOYAGER_CHANNEL_PREFIX": f"e2e{uuid.uuid4().hex[:8]}",
            "VOYAGER_EMBEDDED_WORKER": "0",
            "VOYAGER_ECHO_DELAY": str(ECHO_DELAY),
            "VOYAGER_ASK_TIMEOUT": "20",
            "VOYAGER_GATEWAY_MAX_INFLIGHT": "64",
            "LOG_FORMAT": "json",
        }
    )
    logs = Path(os.environ.get("VOYAGER_E2E_LOGS", tmp_path))
    logs.mkdir(parents=True, exist_ok=True)
    topo = Topology(logs, env)
    yield topo
    topo.stop()


class Mod:
    """One game server's connection, as the mod would hold it: sends asks, collects frames per ask id."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.frames: dict[str, list[dict]] = {}
        self.ended: dict[str, float] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            ask_id = frame.get("id")
            if ask_id is None:
                continue
            self.frames.setdefault(ask_id, []).append(frame)
            if frame["type"] in ("reply", "error"):
                self.ended[ask_id] = time.monotonic()

    async def ask(self, ask_id: str, npc: str, words: int) -> None:
        text = " ".join(f"w{i}" for i in range(words))
        frame = {"type": "ask", "id": ask_id, "npc": npc, "persona": "scout", "player": "steve", "text": text}
        await self.ws.send(json.dumps(frame))

    async def until_ended(self, ids, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not set(ids) <= set(self.ended):
            assert time.monotonic() < deadline, f"asks never ended: {sorted(set(ids) - set(self.ended))}"
            await asyncio.sleep(0.05)

    def terminal(self, ask_id: str) -> dict:
        return self.frames[ask_id][-1]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310 (loopback)
        return response.read().decode()


def test_asks_spread_over_two_workers_and_a_killed_worker_loses_no_exchange(topology, alice):
    Persona.objects.create(slug="scout", name="Scout", owner=alice, allowed_actions=["jump"])
    servers = []
    for name in ("north", "south"):
        server = GameServer(name=name, owner=alice)
        server.raw_token = server.set_new_token()
        server.save()
        servers.append(server)
    ports = [free_port(), free_port()]
    topology.daphne("daphne1", ports[0])
    topology.daphne("daphne2", ports[1])
    topology.worker("worker1")
    topology.worker("worker2")
    ids = {topology.worker_id("worker1"), topology.worker_id("worker2")}

    async def scenario():
        mods = []
        for server, port in zip(servers, ports, strict=True):
            ws = await websockets.connect(
                f"ws://127.0.0.1:{port}/ws/luanti/", additional_headers={"Authorization": f"Bearer {server.raw_token}"}
            )
            mods.append(Mod(ws))
        # Warm-up: short asks from both servers; both workers answer some.
        warm = [(mods[i % 2], f"warm{i}") for i in range(12)]
        for mod, ask_id in warm:
            await mod.ask(ask_id, f"npc-{ask_id}", words=3)
        for mod in mods:
            await mod.until_ended([a for m, a in warm if m is mod], timeout=20)
        # Long streams on both workers, then one worker dies mid-stream.
        long = [(mods[i % 2], f"long{i}") for i in range(12)]
        for mod, ask_id in long:
            await mod.ask(ask_id, f"npc-{ask_id}", words=16)
        await asyncio.sleep(0.8)
        streaming = sum(1 for m, a in long if any(f["type"] == "delta" for f in m.frames.get(a, [])))
        topology.procs["worker1"].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        # New asks once it is dead: the survivor answers them. (A request popped by the dying
        # connection is answered `unavailable` by the gateway's watchdog: see docs/deploy.md.)
        await asyncio.get_running_loop().run_in_executor(None, topology.procs["worker1"].wait, 10)
        after = [(mods[i % 2], f"after{i}") for i in range(6)]
        for mod, ask_id in after:
            await mod.ask(ask_id, f"npc-{ask_id}", words=4)
        for mod in mods:
            await mod.until_ended([a for m, a in long + after if m is mod], timeout=25)
        for mod in mods:
            await mod.ws.close()
            mod.reader.cancel()
        return mods, warm, long, after, streaming, killed

    mods, warm, long, after, streaming, killed = asyncio.run(scenario())
    assert topology.procs["worker1"].wait(timeout=5) == -signal.SIGKILL
    assert streaming == len(long), "every long ask was streaming when the worker was killed"

    def terminals(asks):
        return {a: m.terminal(a) for m, a in asks}

    warm_t, long_t, after_t = terminals(warm), terminals(long), terminals(after)
    assert {f["type"] for f in warm_t.values()} == {"reply"}
    warm_workers = set(
        Exchange.objects.filter(pk__in=[f["exchange"] for f in warm_t.values()]).values_list("worker_id", flat=True)
    )
    assert warm_workers == ids, f"the asks did not spread over both workers: {warm_workers}"

    # Every long ask ended in a reply or `unavailable`, within seconds of the kill.
    outcomes = {a: f["type"] if f["type"] == "reply" else f["code"] for a, f in long_t.items()}
    assert set(outcomes.values()) <= {"reply", "unavailable"}, outcomes
    assert "unavailable" in outcomes.values() and "reply" in outcomes.values(), outcomes
    ended_late = [a for m, a in long if m.ended[a] - killed > 8]
    assert not ended_late, f"asks left hanging after the kill: {ended_late}"
    # Those the dead worker was streaming end with `unavailable`; the survivor's finish in full.
    for frame in long_t.values():
        if frame["type"] == "reply":
            assert frame["text"] == " ".join(f"w{i}" for i in range(16))
    assert {f["type"] for f in after_t.values()} == {"reply"}

    # No lost exchange: every reply has its row, answered by the worker that streamed it.
    replies = [f for f in (*warm_t.values(), *long_t.values(), *after_t.values()) if f["type"] == "reply"]
    stored = {str(e.pk): e for e in Exchange.objects.filter(pk__in=[f["exchange"] for f in replies])}
    assert set(stored) == {f["exchange"] for f in replies}
    assert Exchange.objects.count() == len(replies)
    survivor = topology.worker_id("worker2")
    assert {stored[f["exchange"]].worker_id for f in after_t.values()} == {survivor}
    assert {stored[f["exchange"]].worker_id for f in long_t.values() if f["type"] == "reply"} <= ids

    # Each Daphne exports the platform's series; the dead worker has dropped out of the live count.
    time.sleep(1.0)
    for port in ports:
        text = _scrape(port)
        assert "voyager_inference_workers_alive 1.0" in text
        assert f'voyager_worker_requests_served{{worker="{survivor}"}}' in text
        assert "voyager_reply_seconds_bucket" in text and 'voyager_asks_total{outcome="reply"}' in text
    # The request id of an ask shows in both the gateway's and the worker's structured logs.
    worker_lines = [
        json.loads(line) for line in (topology.logs / "worker2.log").read_text().splitlines() if line.startswith("{")
    ]
    accepted = {line["request_id"] for line in worker_lines if line["msg"].startswith("accepted")}
    gateway_lines = [
        json.loads(line)
        for name in ("daphne1", "daphne2")
        for line in (topology.logs / f"{name}.log").read_text().splitlines()
        if line.startswith("{")
    ]
    replied = {line["request_id"] for line in gateway_lines if " replied: " in line["msg"]}
    assert accepted & replied
