"""Soak: the scaled topology on the real default model, 50 game servers at random, and two crashes.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--clients 50] [--think 4] [--model PATH]

PostgreSQL, Redis, two Daphne and two inference workers (``--backend engine``, the default base
model) run as separate processes, as in production. Each client is one game server's
connection (its own token) to a Daphne picked at random; it pauses a random think time (mean
``--think`` s), then asks (most often), rates the reply it last got, or drops its connection
and reconnects, until the time is up. One worker is killed (SIGKILL) 15% of the way in, one
Daphne at 25%; their clients reconnect to the survivor.

What it counts, each ask being one unique line:

- ``answered``: a ``reply``; ``unavailable`` and the other error codes: an ``error`` for it;
- ``cut``: its connection closed before an answer (the Daphne it was on died, or the client
  dropped it): the client knows, and asks again on a new connection;
- ``lost``: asked on a connection that stayed open and never answered within the ask
  deadline plus a margin (must be 0);
- ``duplicates``: a line stored as more than one exchange (must be 0), and replies whose
  exchange is not stored;
- each survivor's memory (RSS) a warm-up after the crashes, when it carries the whole load, and
  at the end, and its growth (aim: < 10%).

Needs ``DATABASE_URL`` (default ``postgres://postgres@127.0.0.1:5432/voyager_bench``; its game
tables are emptied) and ``REDIS_URL`` (default ``redis://127.0.0.1:6379/15``). The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import gateway as gw  # the gateway benchmark's setup, processes and WebSocket client

ROOT = gw.ROOT
PERSONA = "soak-npc"
LINES = [
    "hello there, who are you?",
    "where can I find iron?",
    "follow me please",
    "what should I build first?",
    "is it safe to go into the cave at night?",
    "can you give me some bread?",
    "tell me about the village",
    "thanks, see you later",
]


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    errors: Counter = field(default_factory=Counter)
    cut: int = 0
    lost: list[str] = field(default_factory=list)
    rates_sent: int = 0
    rated: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    replies: dict[str, str] = field(default_factory=dict)  # line -> exchange id
    ttft_ms: list[float] = field(default_factory=list)
    reply_ms: list[float] = field(default_factory=list)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def make_persona(max_tokens: int, adapter: str | None) -> None:
    from django.contrib.auth import get_user_model

    from agents_app.models import Persona
    from training_tasks.promotion import domain_adapter_install
    from training_tasks.services import base_model_id

    owner = get_user_model().objects.get(username="bench-owner")
    persona, _ = Persona.objects.update_or_create(
        slug=PERSONA,
        defaults={
            "name": "Bram",
            "owner": owner,
            "is_public": True,
            "allowed_actions": ["follow", "give", "say", "jump"],
            "system_prompt": "You are a friendly miner in a voxel world. Answer in one or two short sentences.",
            "max_tokens": max_tokens,
        },
    )
    if adapter:  # what players get: the world adapter the demo persona answers with
        domain_adapter_install(persona=persona, adapter_dir=Path(adapter), base_model_id=base_model_id())


class Client:
    """One game server: its token, its connection (re-made when it drops), its last exchange."""

    def __init__(self, index: int, token: str, ports: list[int], tally: Tally, *, deadline, ask_timeout, think):
        self.index, self.token, self.ports, self.tally = index, token, ports, tally
        self.deadline, self.ask_timeout, self.think = deadline, ask_timeout, think
        self.rng = random.Random(index)
        self.ws: gw.WebSocket | None = None
        self.last_exchange: str | None = None
        self.asks = 0

    async def connect(self) -> None:
        while time.monotonic() < self.deadline:
            live = [p for p in self.ports if gw.listening(p)]
            if live:
                try:
                    self.ws = await gw.WebSocket.connect(self.rng.choice(live), "/ws/luanti/", self.token)
                    self.ws.send(json.dumps({"type": "hello", "protocol": 1, "server": f"soak {self.index}"}))
                    welcome = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
                    if welcome.get("type") == "welcome":
                        return
                except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
                    pass
            self.tally.connect_failures += 1
            self.ws = None
            await asyncio.sleep(0.5)

    async def drop(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(OSError):
                await self.ws.close()
        self.ws = None

    async def run(self) -> None:
        await self.connect()
        while time.monotonic() < self.deadline:
            await asyncio.sleep(self.rng.expovariate(1.0 / self.think))
            if time.monotonic() >= self.deadline:
                break
            if self.ws is None:
                self.tally.reconnects += 1
                await self.connect()
                continue
            roll = self.rng.random()
            try:
                if roll < 0.08:
                    await self.drop()  # the server restarts its mod, or its network hiccups
                elif roll < 0.25 and self.last_exchange:
                    await self.rate()
                else:
                    await self.ask()
            except (OSError, ConnectionError, asyncio.IncompleteReadError):
                await self.drop()
        await self.drop()

    async def ask(self) -> None:
        self.asks += 1
        key = f"s{self.index}-{self.asks}"
        line = f"{self.rng.choice(LINES)} (#{key})"  # unique: a stored exchange names its ask
        frame = {
            "type": "ask",
            "id": key,
            "npc": f"npc-{self.index % 10}",
            "persona": PERSONA,
            "player": f"player{self.index}",
            "text": line,
            "context": {"pos": [self.index, 8, -40], "time_of_day": 0.5},
        }
        sent = time.perf_counter()
        self.ws.send(json.dumps(frame, separators=(",", ":")))
        self.tally.sent += 1
        first = None
        limit = time.monotonic() + self.ask_timeout + 15
        while True:
            try:
                msg = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.1, limit - time.monotonic())))
            except TimeoutError:
                self.tally.lost.append(key)  # the connection is open and nothing came
                await self.drop()
                return
            except (OSError, ConnectionError, asyncio.IncompleteReadError):
                self.tally.cut += 1
                self.ws = None
                return
            if msg.get("id") != key:
                continue
            if first is None:
                first = (time.perf_counter() - sent) * 1000
            if msg["type"] == "reply":
                self.tally.answered += 1
                self.tally.replies[line] = msg["exchange"]
                self.tally.ttft_ms.append(first)
                self.tally.reply_ms.append((time.perf_counter() - sent) * 1000)
                self.last_exchange = msg["exchange"]
                return
            if msg["type"] == "error":
                self.tally.errors[msg.get("code", "?")] += 1
                return

    async def rate(self) -> None:
        frame = {"type": "rate", "exchange": self.last_exchange, "player": f"player{self.index}", "score": 1}
        self.ws.send(json.dumps(frame))
        self.tally.rates_sent += 1
        self.last_exchange = None
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if msg["type"] == "rated":
                self.tally.rated += 1
                return
            if msg["type"] == "error" and "id" not in msg:
                self.tally.errors[f"rate:{msg.get('code')}"] += 1
                return


def stored_check(tally: Tally) -> dict:
    from django.db.models import Count

    from agents_app.models import Exchange

    rows = Exchange.objects.filter(persona__slug=PERSONA)
    duplicates = rows.values("player_text").annotate(n=Count("pk")).filter(n__gt=1).count()
    stored = {str(pk) for pk in rows.values_list("pk", flat=True)}
    missing = [line for line, exchange in tally.replies.items() if exchange not in stored]
    return {"stored": len(stored), "duplicates": duplicates, "replies_not_stored": len(missing)}


async def drive(clients: list[Client], events: list[tuple[float, str, callable]]) -> None:
    tasks = [asyncio.create_task(c.run()) for c in clients]
    start = time.monotonic()
    for at, what, action in events:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        print(f"{time.monotonic() - start:6.0f} s  {what}", flush=True)
        action()
    await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--think", type=float, default=6.0, help="mean seconds between a client's frames")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="seconds from the crashes to the first memory reading"
    )
    parser.add_argument("--model", help="base model directory (default: settings.VOYAGER_BASE_MODEL)")
    parser.add_argument("--adapter", help="a trained world adapter directory for the persona (default: none)")
    args = parser.parse_args()

    prefix = f"soak{uuid.uuid4().hex[:6]}"
    if args.model:
        os.environ["VOYAGER_BASE_MODEL"] = str(Path(args.model).resolve())
    gw.setup_django(prefix, backend="engine")
    from django.conf import settings

    model = settings.VOYAGER_BASE_MODEL
    tokens, _ = gw.make_fixtures(args.clients)
    make_persona(args.max_tokens, args.adapter)
    ask_timeout = float(settings.VOYAGER_ASK_TIMEOUT)

    logs = Path(tempfile.mkdtemp(prefix="voyager-soak-"))
    procs = gw.Processes(logs)
    procs.env.update({"VOYAGER_BASE_MODEL": model, "VOYAGER_GATEWAY_MAX_INFLIGHT": "8", "LOG_LEVEL": "WARNING"})
    ports = [gw.free_port(), gw.free_port()]
    seconds = args.minutes * 60
    tally = Tally()
    memory: dict[str, dict] = {}
    try:
        for name in ("worker-a", "worker-b"):
            procs.start(name, [sys.executable, "manage.py", "inference_worker", "--backend", "engine"])
        for name in ("worker-a", "worker-b"):
            procs.wait_for(name, lambda n=name: " ready" in (logs / f"{n}.log").read_text(errors="replace"), 300)
        for name, port in zip(("daphne-a", "daphne-b"), ports):
            procs.start(
                name, [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"]
            )
            procs.wait_for(name, lambda p=port: gw.listening(p))
        print(f"model {model}; {args.clients} clients for {args.minutes:g} min; logs in {logs}", flush=True)

        def read_memory(when: str) -> None:
            for name, proc in procs.procs.items():
                if proc.poll() is None:
                    memory.setdefault(name, {})[when] = rss_mb(proc.pid)

        def kill(name: str) -> None:
            procs.procs[name].send_signal(signal.SIGKILL)
            procs.procs[name].wait()
            memory[name] = {"killed": True}

        deadline = time.monotonic() + seconds
        clients = [
            Client(i, tokens[i], ports, tally, deadline=deadline, ask_timeout=ask_timeout, think=args.think)
            for i in range(args.clients)
        ]
        # The crashes come early, so the survivors then carry the whole load for most of the run and
        # their memory is read over that steady stretch (a load that doubles is not a leak).
        events = [
            (0.15 * seconds, "SIGKILL worker-a", lambda: kill("worker-a")),
            (0.25 * seconds, "SIGKILL daphne-a", lambda: kill("daphne-a")),
            (0.25 * seconds + args.warmup, "memory after the crashes and a warm-up", lambda: read_memory("start")),
            (seconds - 5, "memory at the end", lambda: read_memory("end")),
        ]
        started = time.monotonic()
        asyncio.run(drive(clients, events))
        elapsed = time.monotonic() - started
    finally:
        procs.stop()
    check = stored_check(tally)

    growth = {}
    for name, seen in sorted(memory.items()):
        if seen.get("start") and seen.get("end"):
            growth[name] = round((seen["end"] - seen["start"]) / seen["start"], 4)
    print()
    print(f"asks sent            {tally.sent}")
    print(f"answered             {tally.answered}")
    print(f"unavailable          {tally.errors.get('unavailable', 0)}")
    print(f"other errors         {dict(sorted((k, v) for k, v in tally.errors.items() if k != 'unavailable'))}")
    print(f"cut (conn. closed)   {tally.cut}")
    print(f"lost                 {len(tally.lost)}  {tally.lost[:5]}")
    print(f"exchanges stored     {check['stored']}")
    print(f"duplicates           {check['duplicates']}")
    print(f"replies not stored   {check['replies_not_stored']}")
    print(f"rates sent / rated   {tally.rates_sent} / {tally.rated}")
    print(f"reconnects           {tally.reconnects} ({tally.connect_failures} failed attempts)")
    print(f"reply p50/p95 ms     {gw.percentile(tally.reply_ms, 0.5):.0f} / {gw.percentile(tally.reply_ms, 0.95):.0f}")
    print("memory (RSS MB)      after the crashes -> end (growth)")
    for name, seen in sorted(memory.items()):
        start, end = seen.get("start"), seen.get("end")
        if seen.get("killed"):
            print(f"  {name:10s}         (killed)")
        elif start and end:
            print(f"  {name:10s}         {start:7.0f} -> {end:7.0f}  ({growth[name]:+.1%})")
        else:
            print(f"  {name:10s}         {start} -> {end}")
    result = {
        "asks_sent": tally.sent,
        "answered": tally.answered,
        "unavailable": tally.errors.get("unavailable", 0),
        "errors": dict(tally.errors),
        "cut": tally.cut,
        "lost": len(tally.lost),
        "duplicates": check["duplicates"],
        "replies_not_stored": check["replies_not_stored"],
        "exchanges_stored": check["stored"],
        "rates_sent": tally.rates_sent,
        "rated": tally.rated,
        "reconnects": tally.reconnects,
        "reply_p50_ms": round(gw.percentile(tally.reply_ms, 0.5), 1) if tally.reply_ms else None,
        "reply_p95_ms": round(gw.percentile(tally.reply_ms, 0.95), 1) if tally.reply_ms else None,
        "memory_mb": memory,
        "memory_growth": growth,
        "max_growth_survivors": max(growth.values()) if growth else None,
        "clients": args.clients,
        "minutes": args.minutes,
        "seconds": round(elapsed, 1),
        "model": model,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
