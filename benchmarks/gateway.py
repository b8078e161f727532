"""Benchmark: what the game gateway adds to an answer, with 100 game servers asking at once.

    .venv/bin/python benchmarks/gateway.py [--clients 100] [--asks 20] [--think 2] [--skip-breakdown]
    .venv/bin/python benchmarks/gateway.py --worker engine [--concurrency 16,64] [--rounds 3] [--model PATH]

The platform runs as in production, as separate processes: Daphne
(``portal.asgi``) with the Redis channel layer, and ``manage.py
inference_worker --backend echo`` (the echo backend answers at once, so what
is measured is the platform, not a model). Each client is one WebSocket (one
Luanti server, its own token) that sends ``--asks`` asks one after the other,
pausing a random think time (mean ``--think`` seconds, as players do; 0 for a
saturation run) before each, and times each from the send to its ``reply``.
The baseline is the same ask answered in process through the same services
the consumer calls (check the ask, the echo, the policy, store the Exchange in
PostgreSQL, on the same kind of connection) without the WebSocket, Daphne, the channel layer and the worker hop, one ask
at a time at the pace the asks reach the platform in the run (a random pause
of mean ``think / clients`` before each), half of it before the run and half
after: the added latency is the gateway's
percentile minus the baseline's, what the game link costs. The same baseline
back to back (every cache warm, no process ever asleep) and the bare echo (no
database) are printed too.

Then, unless ``--skip-breakdown``, where the time goes: one client alone
(no queueing), a WebSocket ping through Daphne (no database, no worker), the
two database services each ask runs (``ask_prepare``, ``exchange_record``),
one channel-layer hop, the worker heartbeat look-up, and the CPU each process
spent per ask during the 100-client run.

Needs Redis (``REDIS_URL``, default ``redis://127.0.0.1:6379/15``) and
PostgreSQL (``DATABASE_URL``, default
``postgres://postgres@127.0.0.1:5432/voyager_bench``; the database is created
and migrated when missing, and its game-facing tables are emptied each run:
do not point it at a database you care about). Only loopback traffic.

With ``--worker engine`` the worker runs the model (``--backend engine``, the
base model of ``VOYAGER_BASE_MODEL`` or ``--model``), and the question is what
share of a real reply's time is the platform's. For each concurrency (NPCs,
one connection each) every NPC asks at the same moment, a burst repeated for
``--rounds`` (after ``--warmup`` bursts that create the NPCs), timed from the
send to the ``reply``. After each burst the same requests go at once to an
``Engine`` in this process, loaded as the worker loads it, while the platform
sits idle (the two never share the cores): the same persona, at temperature 0
so both sides generate the same tokens, the same player lines, context,
``max_tokens`` and the memory the gateway sent (the replies it got), each
request built by the worker's own ``request_from_message``, timed from submit
to its result. ``overhead_share_N`` is (median end to end - median engine
alone) / median end to end; the stored exchanges' prompts and replies are
compared with the engine's, to show the two sides did the same work.

The WebSocket client is a small one written here (standard library), so the
benchmark needs nothing beyond the project's dependencies. The last line
printed is one JSON object: ``p50_ms``/``p99_ms`` are the added latency (echo);
``overhead_share_N``, the p50/p95 of both sides and ``lost`` (engine).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/voyager_bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (
        f"p50 {percentile(values, 0.5):7.2f} ms  p90 {percentile(values, 0.9):7.2f} ms  "
        f"p99 {percentile(values, 0.99):7.2f} ms  max {max(values):7.2f} ms  (n={len(values)})"
    )


# --- setup ---------------------------------------------------------------------------------------


def ensure_database(url: str) -> None:
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        return
    import psycopg

    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")


def setup_django(prefix: str, backend: str = "echo") -> None:
    os.environ.setdefault("DATABASE_URL", DEFAULT_DB)
    os.environ.setdefault("REDIS_URL", DEFAULT_REDIS)
    os.environ["VOYAGER_EMBEDDED_WORKER"] = "0"
    os.environ["VOYAGER_CHANNEL_PREFIX"] = prefix
    os.environ["VOYAGER_INFERENCE_BACKEND"] = backend
    os.environ["VOYAGER_ECHO_DELAY"] = "0"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DEBUG", "0")  # as in production: no query log kept per request
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def make_fixtures(clients: int) -> tuple[list[str], str]:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from agents_app import services
    from agents_app.models import Persona

    with connection.cursor() as cursor:  # the bench database only: start from empty game tables
        cursor.execute(
            "TRUNCATE agents_app_policyflag, agents_app_rating, agents_app_exchange, agents_app_npc, "
            "agents_app_gameserver CASCADE"
        )
    owner, _ = get_user_model().objects.get_or_create(username="bench-owner", defaults={"email": "b@example.org"})
    Persona.objects.update_or_create(
        slug="bench-guide",
        defaults={"name": "Guide", "owner": owner, "allowed_actions": ["jump", "say"], "system_prompt": "Guide."},
    )
    # One operator per server: an account may hold only so many servers.
    users = get_user_model().objects
    operators = [
        users.get_or_create(username=f"bench-operator-{i}", defaults={"email": f"o{i}@example.org"})[0]
        for i in range(clients)
    ]
    tokens = [services.game_server_create(name=f"bench {i}", owner=operators[i])[1] for i in range(clients)]
    return tokens, "bench-guide"


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 (the process owns it)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def wait_for(self, name: str, ready, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while not ready():
            proc = self.procs[name]
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"{name} did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


# --- a small WebSocket client (RFC 6455, text frames, client masking) -----------------------------


class WebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, path: str, token: str) -> WebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")
        return cls(reader, writer)

    def send(self, data: str | bytes, opcode: int = 0x1) -> None:
        payload = data if isinstance(data, bytes) else data.encode()
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = secrets.token_bytes(4)
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        self.writer.write(header + mask + masked)

    async def recv(self) -> str:
        parts: list[bytes] = []
        while True:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError(f"closed by the server: {payload[:2].hex()}")
            if opcode == 0x9:  # ping: the pong carries its payload back byte for byte, or Daphne drops us
                self.send(payload, opcode=0xA)
                continue
            if opcode == 0xA:
                continue
            parts.append(payload)
            if b0 & 0x80:
                return b"".join(parts).decode()

    async def close(self) -> None:
        try:
            self.send("", opcode=0x8)
            await self.writer.drain()
        finally:
            self.writer.close()


# --- measurements --------------------------------------------------------------------------------


def ask_frame(i: int, client: int, persona: str) -> dict:
    return {
        "type": "ask",
        "id": f"c{client}-{i}",
        "npc": f"npc-{client}",
        "persona": persona,
        "player": f"player{client}",
        "text": "hello there, how are the mines today?",
        "context": {"pos": [1, 2, 3], "time_of_day": 0.5},
        "max_tokens": 32,
    }


async def run_client(
    port, token, persona, client, asks, warmup, start, warmed, latencies, lost, firsts=None, timeout=30.0, think=0.0
):
    ws = await WebSocket.connect(port, "/ws/luanti/", token)
    ws.send(json.dumps({"type": "hello", "protocol": 1, "server": f"bench {client}"}))
    welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    for i in range(warmup):  # first ask per NPC creates it: not measured
        ws.send(json.dumps(ask_frame(-1 - i, client, persona)))
        while json.loads(await ws.recv())["type"] not in ("reply", "error"):
            pass
    warmed.append(client)
    await start.wait()
    pace = random.Random(client)
    for i in range(asks):
        if think:
            # Players pause between lines: an exponential think time with this mean.
            await asyncio.sleep(pace.expovariate(1.0 / think))
        frame = ask_frame(i, client, persona)
        sent = time.perf_counter()
        ws.send(json.dumps(frame, separators=(",", ":")))
        first = None
        try:
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
                if msg.get("id") != frame["id"]:
                    continue
                if first is None:
                    first = (time.perf_counter() - sent) * 1000
                    if firsts is not None:
                        firsts.append(first)
                if msg["type"] == "reply":
                    latencies.append((time.perf_counter() - sent) * 1000)
                    if msg["text"] != frame["text"]:
                        lost.append(f"wrong text: {msg['text']!r}")
                    break
                if msg["type"] == "error":
                    lost.append(f"{msg['code']}: {msg['message']}")
                    break
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError) as exc:
            lost.append(f"no reply: {exc!r}")
            lost.extend(["skipped after a lost connection"] * (asks - i - 1))
            break
    await ws.close()


async def gateway_run(
    port, tokens, persona, asks, warmup=2, firsts=None, on_start=None, think=0.0
) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    lost: list[str] = []
    start = asyncio.Event()
    warmed: list[int] = []
    ready = [
        asyncio.create_task(
            run_client(port, tok, persona, i, asks, warmup, start, warmed, latencies, lost, firsts, think=think)
        )
        for i, tok in enumerate(tokens)
    ]
    # Everyone connected and warmed up before the clock starts (bounded: 120 s).
    give_up = time.monotonic() + 120
    while len(warmed) < len(ready) and not any(t.done() for t in ready) and time.monotonic() < give_up:
        await asyncio.sleep(0.05)
    if on_start is not None:
        on_start()
    began = time.perf_counter()
    start.set()
    done, pending = await asyncio.wait(ready, timeout=300)
    for task in pending:
        task.cancel()
        lost.append("client did not finish in 300 s")
    for task in done:
        if task.exception() is not None:
            lost.append(f"client failed: {task.exception()!r}")
    return latencies, lost, time.perf_counter() - began


def echo_in_process(asks: int, persona: str, tokens: list[str] | None = None, pace: float = 0.0) -> list[float]:
    """The same ask answered in this process: with ``tokens``, through the same services the
    consumer calls for an NPC that has answered before (check the ask, echo, policy, store the
    exchange; on the same kind of database connection) — everything but the WebSocket, Daphne,
    the channel layer and the worker hop, which is what the gateway adds.

    ``pace``: the mean pause (exponential) before each ask, so that the asks come as often as
    they reach the platform in the gateway run (``think / clients``). Back to back, every cache
    stays warm and no process ever sleeps; at the clients' pace the database server wakes for each
    ask, as it does behind the gateway, and the difference is the gateway's alone.
    """
    return asyncio.run(_echo_in_process(asks, persona, tokens, pace))


async def _echo_in_process(asks, persona, tokens, pace) -> list[float]:
    from channels.db import database_sync_to_async as db

    from agents_app import gateway
    from agents_app.services import game_server_authenticate
    from inference.backends import EchoBackend

    rng = random.Random(7)
    backend = EchoBackend()
    server = await db(game_server_authenticate)(tokens[0]) if tokens else None
    memory = gateway.NpcMemory()  # what the consumer keeps per connection
    if server is not None:  # the NPC has answered before, as every measured ask's NPC has in the run
        first = await db(gateway.ask_prepare)(server=server, npc_world_id="npc-0", persona_slug=persona)
        memory.turns(first, "npc-0")
    latencies = []
    for i in range(asks):
        frame = ask_frame(i, 0, persona)
        request = {
            "type": "inference.request",
            "request_id": uuid.uuid4().hex,
            "reply_channel": "x",
            "persona": {"slug": persona},
            "adapter": None,
            "memory": [],
            "context": frame["context"],
            "player": frame["player"],
            "text": frame["text"],
            "max_tokens": 32,
            "deadline": time.time() + 30,
        }
        got = []
        if pace:
            await asyncio.sleep(rng.expovariate(1.0 / pace))
        sent = time.perf_counter()
        if server is not None:
            plan = await db(gateway.ask_prepare)(
                server=server, npc_world_id=frame["npc"], persona_slug=persona, with_memory=False
            )
            request.update(plan.request, memory=memory.turns(plan, frame["npc"]))
        backend.submit(request, got.append)
        assert got[-1]["type"] == "inference.result"
        if server is not None:
            exchange, _ = await db(gateway.exchange_record)(
                plan=plan,
                player=frame["player"],
                text=frame["text"],
                context=frame["context"],
                result=got[-1],
                ttft_ms=0.0,
                total_ms=0.0,
            )
            memory.remember(frame["npc"], player=frame["player"], text=frame["text"], reply=exchange.reply_text)
        latencies.append((time.perf_counter() - sent) * 1000)
    return latencies


async def ping_run(port, token, n=50) -> list[float]:
    ws = await WebSocket.connect(port, "/ws/luanti/", token)
    out = []
    for _ in range(n):
        sent = time.perf_counter()
        ws.send('{"type":"ping"}')
        assert json.loads(await ws.recv())["type"] == "pong"
        out.append((time.perf_counter() - sent) * 1000)
    await ws.close()
    return out


def db_services(tokens, persona, n=200) -> tuple[list[float], list[float]]:
    from agents_app import gateway, services

    server = services.game_server_authenticate(tokens[0])
    prepare, record = [], []
    for _ in range(n):
        t = time.perf_counter()
        plan = gateway.ask_prepare(server=server, npc_world_id="npc-bench-db", persona_slug=persona)
        prepare.append((time.perf_counter() - t) * 1000)
        result = {"text": "hello", "raw_text": "hello", "actions": [], "prompt": "hello", "base_model_id": "echo"}
        t = time.perf_counter()
        gateway.exchange_record(
            plan=plan, player="p", text="hello", context={}, result=result, ttft_ms=0.1, total_ms=0.2
        )
        record.append((time.perf_counter() - t) * 1000)
    return prepare, record


async def layer_hops(n=300) -> tuple[list[float], list[float]]:
    from channels.layers import get_channel_layer

    from inference.heartbeat import heartbeats

    layer = get_channel_layer()
    channel = await layer.new_channel()
    hops = []
    for _ in range(n):
        t = time.perf_counter()
        await layer.send(channel, {"type": "bench.hop", "t": t})
        await layer.receive(channel)
        hops.append((time.perf_counter() - t) * 1000)
    store = heartbeats()
    beats = []
    for _ in range(n):
        t = time.perf_counter()
        await store.alive()
        beats.append((time.perf_counter() - t) * 1000)
    return hops, beats


def cpu_snapshot(daphne: int, worker: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each process that serves an ask, by pid (database backends come and go)."""
    import psutil

    roles = {daphne: "daphne", worker: "worker", os.getpid(): "client (this process)"}
    out = {}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        name = proc.info["name"] or ""
        role = roles.get(proc.pid) or (
            "redis" if name.startswith("redis-server") else "postgres" if name.startswith("postgres") else None
        )
        if role and proc.info["cpu_times"] is not None:
            t = proc.info["cpu_times"]
            out[proc.pid] = (role, t.user + t.system)
    return out


def cpu_spent(before: dict, after: dict) -> dict[str, float]:
    spent: dict[str, float] = {
        "daphne": 0.0,
        "worker": 0.0,
        "redis": 0.0,
        "postgres": 0.0,
        "client (this process)": 0.0,
    }
    for pid, (role, seconds) in after.items():
        spent[role] += seconds - before.get(pid, (role, 0.0))[1]
    return spent


# --- engine mode: the platform's share of a real reply ---------------------------------------------

ENGINE_PERSONA = "bench-npc"
# Ordinary player lines, cycled over the NPCs and the rounds.
PLAYER_LINES = (
    "hello! what are you up to today?",
    "where can I find iron around here?",
    "can you help me build a house before night?",
    "is it safe to walk to the next village?",
    "what do you think of the old mine to the east?",
    "thanks for the help, see you tomorrow",
)


@dataclass
class Level:
    """One concurrency's run: both sides' reply times (measured rounds) and what each answered."""

    npcs: int
    platform_ms: list[float] = field(default_factory=list)
    engine_ms: list[float] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    engine_errors: list[str] = field(default_factory=list)
    engine_results: dict[tuple[int, int], Any] = field(default_factory=dict)  # (npc, turn) -> Result
    exchanges: dict[tuple[int, int], str] = field(default_factory=dict)  # (npc, turn) -> the reply's exchange


def engine_persona(max_tokens: int) -> dict:
    """The bench NPC's persona, as the gateway sends it to the worker.

    Temperature 0: both sides pick the same tokens, so they generate the same replies (the
    gateway sends no seed, and greedy decoding needs none)."""
    from django.contrib.auth import get_user_model

    from agents_app.gateway import persona_payload
    from agents_app.models import Persona

    owner, _ = get_user_model().objects.get_or_create(username="bench-owner", defaults={"email": "b@example.org"})
    persona, _ = Persona.objects.update_or_create(
        slug=ENGINE_PERSONA,
        defaults={
            "name": "Mira",
            "owner": owner,
            "system_prompt": "You are Mira, a miner in the village. Answer players kindly, in a sentence or two.",
            "traits": ["friendly", "knows the mines"],
            "allowed_actions": ["jump", "say", "follow"],
            "temperature": 0.0,
            "max_tokens": max_tokens,
        },
    )
    return persona_payload(persona)


def npc_frame(npcs: int, client: int, turn: int) -> dict:
    """An ask with no ``max_tokens``: the persona's budget holds."""
    return {
        "type": "ask",
        "id": f"n{npcs}-{client}-{turn}",
        "npc": f"npc-{npcs}-{client}",  # fresh NPCs per concurrency: no memory carried over
        "persona": ENGINE_PERSONA,
        "player": f"player{client}",
        "text": PLAYER_LINES[(client + turn) % len(PLAYER_LINES)],
        "context": {"pos": [12, 8, -40], "time_of_day": 0.4, "nearby": ["default:stone", "player"]},
    }


def worker_message(frame: dict, persona: dict, memory: list[dict]) -> dict:
    """The ``inference.request`` the consumer's ``_dispatch`` sends for ``frame`` (no adapter)."""
    from agents_app.protocol import parse_frame

    ask = parse_frame(json.dumps(frame))
    return {
        "type": "inference.request",
        "request_id": uuid.uuid4().hex,
        "reply_channel": "bench",
        "persona": persona,
        "adapter": None,
        "memory": memory,
        "context": ask.context.model_dump(exclude_none=True) if ask.context else {},
        "player": ask.player,
        "text": ask.text,
        "max_tokens": ask.max_tokens,
        "deadline": time.time() + 600,
    }


async def read_forever(ws: WebSocket, inbox: asyncio.Queue) -> None:
    """Every frame into ``inbox``, all the time: Daphne drops a connection that leaves its ping
    unanswered for 30 s, and the engine alone may take longer than that between two bursts."""
    try:
        while True:
            inbox.put_nowait(json.loads(await ws.recv()))
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        inbox.put_nowait({"type": "closed", "reason": repr(exc)})


async def await_reply(inbox: asyncio.Queue, ask_id: str, sent: float, timeout: float) -> tuple[float | None, Any]:
    """(ms from the send, the reply frame), or (None, why it was lost)."""
    give_up = sent + timeout
    try:
        while True:
            msg = await asyncio.wait_for(inbox.get(), max(0.0, give_up - time.perf_counter()))
            if msg["type"] == "closed":
                inbox.put_nowait(msg)  # for the asks still to come on this connection
                return None, f"connection lost: {msg['reason']}"
            if msg.get("id") != ask_id:
                continue
            if msg["type"] == "reply":
                return (time.perf_counter() - sent) * 1000, msg
            if msg["type"] == "error":
                return None, f"{msg['code']}: {msg['message']}"
    except TimeoutError:
        return None, f"no reply in {timeout:.0f} s"


def engine_burst(engine, messages: list[dict], timeout: float) -> list[tuple[float | None, Any]]:
    """The requests submitted to ``engine`` at once: (ms from submit to the result, Result or Error)."""
    import threading

    from inference.engine import Error, Result
    from inference.service import request_from_message

    requests = [request_from_message(m) for m in messages]
    out: list[tuple[float | None, Any]] = [(None, "no result")] * len(requests)
    left = [len(requests)]
    lock, finished = threading.Lock(), threading.Event()

    def listener(i: int, sent: float):
        def on_event(event) -> None:  # on the engine thread
            if isinstance(event, Result | Error):
                out[i] = ((time.perf_counter() - sent) * 1000, event)
                with lock:
                    left[0] -= 1
                    if not left[0]:
                        finished.set()

        return on_event

    for i, request in enumerate(requests):
        engine.submit(request, listener(i, time.perf_counter()))
    if not finished.wait(timeout):
        for request in requests:
            engine.cancel(request.request_id)
    return out


async def engine_level(port, tokens, persona, warmup, rounds, engine, timeout) -> Level:
    """Bursts of one ask per NPC, each through the platform and then to the engine alone."""
    from agents_app.gateway import AskPlan, NpcMemory
    from inference.engine import Result

    level = Level(npcs=len(tokens))
    loop = asyncio.get_running_loop()
    sockets = await asyncio.gather(*(WebSocket.connect(port, "/ws/luanti/", token) for token in tokens))
    for client, ws in enumerate(sockets):
        ws.send(json.dumps({"type": "hello", "protocol": 1, "server": f"bench {client}"}))
    for ws in sockets:
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
    inboxes = [asyncio.Queue() for _ in sockets]
    readers = [asyncio.create_task(read_forever(ws, inbox)) for ws, inbox in zip(sockets, inboxes, strict=True)]
    memory = NpcMemory()  # what the consumer remembers of each NPC: the engine's requests carry it too
    fresh = AskPlan(npc_id=0, persona_id=0, adapter_version_id=None)  # a new NPC: nothing in the database
    try:
        for turn in range(warmup + rounds):
            measured = turn >= warmup
            frames = [npc_frame(level.npcs, client, turn) for client in range(level.npcs)]
            sent_memory = [memory.turns(fresh, frame["npc"]) for frame in frames]
            sent = []
            for ws, frame in zip(sockets, frames, strict=True):
                sent.append(time.perf_counter())
                ws.send(json.dumps(frame, separators=(",", ":")))
            answers = await asyncio.gather(
                *(await_reply(q, frame["id"], t, timeout) for q, frame, t in zip(inboxes, frames, sent, strict=True))
            )
            for client, (frame, (ms, reply)) in enumerate(zip(frames, answers, strict=True)):
                if ms is None:
                    level.lost.append(reply)
                    continue
                level.exchanges[(client, turn)] = reply["exchange"]
                memory.remember(frame["npc"], player=frame["player"], text=frame["text"], reply=reply["text"])
                if measured:
                    level.platform_ms.append(ms)

            # The same requests to the engine alone, while the platform is idle; off the loop, so
            # the connections still answer Daphne's pings.
            messages = [worker_message(f, persona, m) for f, m in zip(frames, sent_memory, strict=True)]
            results = await loop.run_in_executor(None, engine_burst, engine, messages, timeout)
            for client, (ms, event) in enumerate(results):
                if not isinstance(event, Result):
                    level.engine_errors.append(str(event))
                    continue
                level.engine_results[(client, turn)] = event
                if measured:
                    level.engine_ms.append(ms)
            label = f"round {turn - warmup + 1}" if measured else f"warm-up {turn + 1}"
            platform = percentile([ms for ms, _ in answers if ms is not None], 0.5)
            alone = percentile([ms for ms, _ in results if ms is not None], 0.5)
            print(
                f"  {level.npcs} NPCs, {label}: p50 end to end {platform:.0f} ms, engine alone {alone:.0f} ms",
                flush=True,
            )
    finally:
        for reader in readers:
            reader.cancel()
        for ws in sockets:
            await ws.close()
    return level


def compare_exchanges(level: Level) -> tuple[int, int, int, list[int]]:
    """(asks compared, same prompt, same reply, the stored replies' token counts): the exchanges
    the platform stored against the engine's results for the same asks."""
    from agents_app.models import Exchange

    rows = Exchange.objects.in_bulk(list(level.exchanges.values()))
    compared = same_prompt = same_reply = 0
    tokens = []
    for key, exchange_id in level.exchanges.items():
        exchange, result = rows.get(uuid.UUID(exchange_id)), level.engine_results.get(key)
        if exchange is None or result is None:
            continue
        compared += 1
        same_prompt += exchange.prompt == result.prompt_text
        same_reply += exchange.raw_text == result.raw_text
        tokens.append(exchange.completion_tokens)
    return compared, same_prompt, same_reply, tokens


def engine_main(args) -> None:
    levels = sorted({int(n) for n in args.concurrency.split(",") if n.strip()})
    if args.model:
        os.environ["VOYAGER_BASE_MODEL"] = str(Path(args.model).resolve())
    # A burst of 64 on two cores takes a while: the gateway's deadline must not be what is measured.
    os.environ["VOYAGER_ASK_TIMEOUT"] = str(args.ask_timeout)
    prefix = f"voyager-bench-{os.getpid()}"
    setup_django(prefix, backend="engine")
    from django.conf import settings
    from django.db import connection

    from inference.service import EngineBackend

    tokens, _ = make_fixtures(max(levels))
    persona = engine_persona(args.max_tokens)
    connection.close()
    alone = EngineBackend.from_settings()  # as the worker builds it: the same model and EngineConfig

    logs = Path(tempfile.mkdtemp(prefix="voyager-bench-"))
    procs = Processes(logs)
    port = free_port()
    runs: list[Level] = []
    try:
        worker = procs.start("worker", [sys.executable, "manage.py", "inference_worker", "--backend", "engine"])
        procs.wait_for("worker", lambda: " ready" in (logs / "worker.log").read_text(errors="replace"), limit=600)
        daphne = procs.start(
            "daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"]
        )
        procs.wait_for("daphne", lambda: listening(port))
        print(f"daphne :{port} (pid {daphne.pid}), engine worker (pid {worker.pid}); logs in {logs}")
        print(
            f"model {settings.VOYAGER_BASE_MODEL}; persona {ENGINE_PERSONA} (temperature 0, max_tokens "
            f"{args.max_tokens}); bursts per concurrency: {args.warmup} warm-up, {args.rounds} measured"
        )
        for npcs in levels:
            runs.append(
                asyncio.run(
                    engine_level(
                        port, tokens[:npcs], persona, args.warmup, args.rounds, alone.engine, args.ask_timeout + 30
                    )
                )
            )
    finally:
        procs.stop()
        alone.stop(drain=False)

    out: dict[str, Any] = {
        "worker": "engine",
        "model": settings.VOYAGER_BASE_MODEL,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "warmup": args.warmup,
    }
    for level in runs:
        compared, same_prompt, same_reply, platform_tokens = compare_exchanges(level)
        e2e50, alone50 = percentile(level.platform_ms, 0.5), percentile(level.engine_ms, 0.5)
        share = (e2e50 - alone50) / e2e50 if level.platform_ms and level.engine_ms else float("nan")
        engine_tokens = [r.completion_tokens for r in level.engine_results.values()]
        print(f"\n{level.npcs} NPCs asking at once, {args.rounds} measured bursts:")
        print(f"  end to end (send -> reply)   {summary(level.platform_ms)}")
        print(f"  engine alone (submit -> end) {summary(level.engine_ms)}")
        print(
            f"  overhead share {share:.1%} of the median reply ({e2e50 - alone50:.0f} ms); "
            f"p95 end to end {percentile(level.platform_ms, 0.95):.0f} ms, "
            f"engine alone {percentile(level.engine_ms, 0.95):.0f} ms"
        )
        print(
            f"  same prompt {same_prompt}/{compared}, same reply {same_reply}/{compared}; tokens per reply "
            f"{sum(platform_tokens) / max(1, len(platform_tokens)):.1f} end to end, "
            f"{sum(engine_tokens) / max(1, len(engine_tokens)):.1f} alone"
        )
        print(f"  asks without a reply {len(level.lost)}, engine-alone errors {len(level.engine_errors)}")
        for reason in sorted(set(level.lost + level.engine_errors))[:10]:
            print(f"    {(level.lost + level.engine_errors).count(reason)} x {reason}")
        n = level.npcs
        out[f"overhead_share_{n}"] = round(share, 4)
        out[f"e2e_p50_ms_{n}"] = round(e2e50, 1)
        out[f"e2e_p95_ms_{n}"] = round(percentile(level.platform_ms, 0.95), 1)
        out[f"engine_p50_ms_{n}"] = round(alone50, 1)
        out[f"engine_p95_ms_{n}"] = round(percentile(level.engine_ms, 0.95), 1)
        out[f"lost_{n}"] = len(level.lost)
        out[f"engine_errors_{n}"] = len(level.engine_errors)
        out[f"same_prompt_{n}"] = f"{same_prompt}/{compared}"
        out[f"same_reply_{n}"] = f"{same_reply}/{compared}"
    out["lost"] = sum(len(level.lost) for level in runs)
    out["cores"] = os.cpu_count()
    print(json.dumps(out))


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--asks", type=int, default=20, help="asks per client, one after the other")
    parser.add_argument(
        "--think",
        type=float,
        default=2.0,
        help="mean seconds a client waits between asks (players pause); 0 sends back to back (saturation)",
    )
    parser.add_argument("--skip-breakdown", action="store_true")
    parser.add_argument(
        "--worker",
        choices=["echo", "engine"],
        default="echo",
        help="echo: the platform alone (the options above); engine: the model, against the engine alone",
    )
    parser.add_argument("--concurrency", default="16,64", help="engine: NPCs asking at once, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="engine: measured bursts per concurrency")
    parser.add_argument("--warmup", type=int, default=1, help="engine: bursts before the measured ones")
    parser.add_argument("--max-tokens", type=int, default=24, help="engine: the bench persona's reply budget")
    parser.add_argument("--model", help="engine: base model directory (default: settings.VOYAGER_BASE_MODEL)")
    parser.add_argument(
        "--ask-timeout", type=float, default=600.0, help="engine: the gateway's deadline per ask, in seconds"
    )
    args = parser.parse_args()
    if args.worker == "engine":
        engine_main(args)
        return

    prefix = f"voyager-bench-{os.getpid()}"
    setup_django(prefix)
    from django.db import connection

    tokens, persona = make_fixtures(args.clients)
    connection.close()

    logs = Path(tempfile.mkdtemp(prefix="voyager-bench-"))
    procs = Processes(logs)
    port = free_port()
    try:
        worker = procs.start("worker", [sys.executable, "manage.py", "inference_worker", "--backend", "echo"])
        procs.wait_for("worker", lambda: " ready" in (logs / "worker.log").read_text(errors="replace"))
        daphne = procs.start(
            "daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"]
        )
        procs.wait_for("daphne", lambda: listening(port))
        print(f"daphne :{port} (pid {daphne.pid}), echo worker (pid {worker.pid}); logs in {logs}")
        print(f"database {connection.settings_dict['NAME']}, redis {os.environ['REDIS_URL']}, prefix {prefix}")

        # Baselines: the bare echo, and the same ask through the same services, in process.
        bare = echo_in_process(args.clients * args.asks, persona)
        echo_hot = echo_in_process(min(500, args.clients * args.asks), persona, tokens)
        pace = args.think / args.clients if args.think else 0.0
        baseline_n = min(500, args.clients * args.asks)
        # Half before the run and half after: the machine's state drifts between runs, and a
        # baseline taken at one moment only moved the difference by half a millisecond.
        echo = echo_in_process(baseline_n // 2, persona, tokens, pace=pace) if pace else echo_hot
        connection.close()

        snap = {}
        firsts: list[float] = []
        latencies, lost, wall = asyncio.run(
            gateway_run(
                port,
                tokens,
                persona,
                args.asks,
                firsts=firsts,
                on_start=lambda: snap.update(before=cpu_snapshot(daphne.pid, worker.pid)),
                think=args.think,
            )
        )
        n = max(1, len(latencies))
        spent = cpu_spent(snap["before"], cpu_snapshot(daphne.pid, worker.pid))
        if pace:
            echo = echo + echo_in_process(baseline_n - baseline_n // 2, persona, tokens, pace=pace)
            connection.close()
        cpu_per_ask = {k: v * 1000 / n for k, v in spent.items()}

        print(
            f"\n{args.clients} clients x {args.asks} asks (think {args.think:g} s), {len(latencies)} replies "
            f"in {wall:.2f} s ({len(latencies) / wall:.0f} asks/s)"
        )
        print(f"  gateway (send -> reply)   {summary(latencies)}")
        print(f"  first frame (delta)       {summary(firsts)}")
        print(f"  echo alone, in process    {summary(bare)}")
        print(
            f"  same ask, in process      {summary(echo)}   (check + echo + policy + store, no network; "
            f"one every {pace * 1000:.0f} ms on average, as they come in the run)"
        )
        print(f"  same ask, back to back    {summary(echo_hot)}")
        added50 = percentile(latencies, 0.5) - percentile(echo, 0.5)
        added99 = percentile(latencies, 0.99) - percentile(echo, 0.99)
        print(f"  added latency             p50 {added50:.2f} ms  p99 {added99:.2f} ms   (targets: 3 / 15 ms)")
        hot50 = percentile(latencies, 0.5) - percentile(echo_hot, 0.5)
        hot99 = percentile(latencies, 0.99) - percentile(echo_hot, 0.99)
        print(f"  added, against back to back p50 {hot50:.2f} ms  p99 {hot99:.2f} ms")
        print(f"  asks without a reply      {len(lost)}")
        for reason in sorted(set(lost))[:10]:
            print(f"    {lost.count(reason)} x {reason}")
        print("  CPU per ask (ms, all cores): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu_per_ask.items()))

        out = {
            "p50_ms": round(added50, 3),
            "p99_ms": round(added99, 3),
            "lost": len(lost),
            "clients": args.clients,
            "asks": len(latencies),
            "gateway_p50_ms": round(percentile(latencies, 0.5), 3),
            "gateway_p99_ms": round(percentile(latencies, 0.99), 3),
            "think_s": args.think,
            "bare_echo_p50_ms": round(percentile(bare, 0.5), 4),
            "echo_p50_ms": round(percentile(echo, 0.5), 4),
            "echo_p99_ms": round(percentile(echo, 0.99), 4),
            "echo_pace_ms": round(pace * 1000, 1),
            "echo_hot_p50_ms": round(percentile(echo_hot, 0.5), 4),
            "echo_hot_p99_ms": round(percentile(echo_hot, 0.99), 4),
            "p50_vs_hot_ms": round(hot50, 3),
            "p99_vs_hot_ms": round(hot99, 3),
            "asks_per_s": round(len(latencies) / wall, 1),
            "cpu_ms_per_ask": {k: round(v, 3) for k, v in cpu_per_ask.items()},
            "cores": os.cpu_count(),
        }

        if not args.skip_breakdown:
            print("\nwhere the time goes (one at a time, no queueing):")
            solo_firsts: list[float] = []
            solo, solo_lost, _ = asyncio.run(gateway_run(port, tokens[:1], persona, 50, firsts=solo_firsts))
            print(f"  one client, ask -> reply  {summary(solo)}  lost {len(solo_lost)}")
            print(f"  one client, first frame   {summary(solo_firsts)}")
            pings = asyncio.run(ping_run(port, tokens[0]))
            print(
                f"  WebSocket ping -> pong    {summary(pings)}   (Daphne + consumer, no DB, no worker; "
                "50 pings: the gateway's frame budget)"
            )
            prepare, record = db_services(tokens, persona)
            print(f"  ask_prepare (DB)          {summary(prepare)}   (the ORM, on this thread)")
            print(f"  exchange_record (DB)      {summary(record)}")
            from django.db import connection

            with connection.cursor() as cursor:  # what-if only, this session: how much is the commit's fsync
                cursor.execute("SET synchronous_commit TO off")
            prepare_async, record_async = db_services(tokens, persona)
            with connection.cursor() as cursor:
                cursor.execute("SET synchronous_commit TO on")
            print(f"  ask_prepare, no fsync     {summary(prepare_async)}   (what-if: synchronous_commit off)")
            print(f"  exchange_record, no fsync {summary(record_async)}")
            hops, beats = asyncio.run(layer_hops())
            print(
                f"  channel layer send+recv   {summary(hops)}   (a reply needs >= 4 hops: request, "
                "accepted, delta, result)"
            )
            print(f"  heartbeat alive() (Redis) {summary(beats)}")
            out["breakdown_p50_ms"] = {
                "one_client_ask": round(percentile(solo, 0.5), 3),
                "one_client_added": round(percentile(solo, 0.5) - percentile(echo_hot, 0.5), 3),
                "ws_ping": round(percentile(pings, 0.5), 3),
                "ask_prepare_db": round(percentile(prepare, 0.5), 3),
                "exchange_record_db": round(percentile(record, 0.5), 3),
                "ask_prepare_db_no_fsync": round(percentile(prepare_async, 0.5), 3),
                "exchange_record_db_no_fsync": round(percentile(record_async, 0.5), 3),
                "channel_hop": round(percentile(hops, 0.5), 3),
                "heartbeat_alive": round(percentile(beats, 0.5), 3),
            }
            out["one_client_p99_added_ms"] = round(percentile(solo, 0.99) - percentile(echo_hot, 0.99), 3)
    finally:
        procs.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
