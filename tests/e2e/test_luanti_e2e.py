"""End to end: a real Luanti server with the voyager mod, talking to the real platform.

The platform runs as it does in production, as separate processes: Daphne
(``portal.asgi``) and ``manage.py inference_worker`` with the model engine,
over the Redis channel layer and PostgreSQL (the test database, so the rows
the processes write are the ones checked here). A headless ``minetestserver``
loads the ``voyager`` mod and the ``voyager_test`` driver mod
(``luanti_mod/tests/voyager_test``), which spawns an NPC, asks it something
as a player would and writes what happened to ``<world>/voyager_test_result.json``.

The model is the starter model when ``var/models/starter`` exists, otherwise
a ``tiny`` one built once per session (seconds; it talks nonsense, which is
fine: the test checks the plumbing, and the action checks that need a model
that learned the action markup run only on the starter model).
``VOYAGER_E2E_MODEL=tiny`` uses the tiny one even when the starter model
exists; ``VOYAGER_E2E_BACKEND=echo`` swaps the engine for the echo backend.

Needs ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL``; CI sets both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.processes import child_database_url, child_env, free_port, tail

ROOT = Path(__file__).resolve().parents[2]
MOD_TESTS = ROOT / "luanti_mod" / "tests"
MINETESTSERVER = os.environ.get("MINETESTSERVER", "/usr/games/minetestserver")
STARTER = ROOT / "var" / "models" / "starter"
PLAYER = "e2e_player"
# Greedy decoding, so the starter model answers the same way every run.
PERSONA = {
    "slug": "brann-smith",
    "name": "Brann",
    "system_prompt": "You are Brann, the village smith. You speak briefly and plainly.",
    "traits": ["gruff", "honest"],
    "allowed_actions": ["jump", "follow", "face", "say", "stop_following"],
    "temperature": 0.0,
    "max_tokens": 48,
}
FALLBACK_AFTER = 2.0
CASE_LIMIT = 60  # seconds per Luanti run

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(150),
    pytest.mark.skipif(
        not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")),
        reason="the end-to-end tests run the platform as separate processes: set DATABASE_URL (PostgreSQL) "
        "and REDIS_URL (CI sets both)",
    ),
]


# --- the model, once per session ----------------------------------------------------------------


@pytest.fixture(scope="session")
def e2e_model(tmp_path_factory) -> Path:
    use_starter = os.environ.get("VOYAGER_E2E_MODEL", "starter") == "starter"
    if use_starter and (STARTER / "voyager.json").exists() and (STARTER / "model.safetensors").exists():
        return STARTER
    out = tmp_path_factory.mktemp("e2e-model") / "tiny"
    build = subprocess.run(
        [sys.executable, "manage.py", "build_starter_model", "--size", "tiny", "--out", str(out)],
        cwd=ROOT,
        env=child_env({}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def e2e_adapter(e2e_model, tmp_path_factory) -> dict:
    """A PEFT LoRA adapter for the model (B = 0: it changes nothing), under a media root of its own."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from inference.lora import file_sha256

    media = tmp_path_factory.mktemp("e2e-media")
    rel = f"adapters/{PERSONA['slug']}/1"
    base = AutoModelForCausalLM.from_pretrained(e2e_model)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    lora.save_pretrained(media / rel)
    weights = media / rel / "adapter_model.safetensors"
    return {
        "media_root": media,
        "files_path": rel,
        "sha256": file_sha256(weights),
        "size_bytes": weights.stat().st_size,
    }


# --- the platform, as processes ------------------------------------------------------------------


@dataclass
class Platform:
    logs: Path
    env: dict
    port: int
    token: str = ""
    procs: dict = field(default_factory=dict)
    starts: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/luanti/"

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        self.starts[name] = self.starts.get(name, 0) + 1
        log = open(self.logs / f"{name}.{self.starts[name]}.log", "w")  # noqa: SIM115 (closed in stop)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        proc.log_file = log
        self.procs[name] = proc
        return proc

    def start_worker(self) -> None:
        backend = os.environ.get("VOYAGER_E2E_BACKEND", "engine")
        proc = self._spawn("worker", [sys.executable, "manage.py", "inference_worker", "--backend", backend])
        log = self.logs / f"worker.{self.starts['worker']}.log"
        deadline = time.monotonic() + 60
        while " ready" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"the inference worker exited with {proc.returncode}:\n{tail(log)}"
            assert time.monotonic() < deadline, f"the inference worker did not start in 60 s:\n{tail(log)}"
            time.sleep(0.1)

    def start_daphne(self) -> None:
        cmd = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "portal.asgi:application"]
        proc = self._spawn("daphne", cmd)
        log = self.logs / f"daphne.{self.starts['daphne']}.log"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"Daphne exited with {proc.returncode}:\n{tail(log)}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert time.monotonic() < deadline, f"Daphne did not listen in 60 s:\n{tail(log)}"
                time.sleep(0.1)

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        proc.log_file.close()

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)

    def tails(self) -> str:
        return "\n".join(f"----- {p.name} (tail) -----\n{tail(p)}" for p in sorted(self.logs.glob("*.log")))


@pytest.fixture
def platform(request, transactional_db, e2e_model, e2e_adapter, tmp_path):
    """Persona, adapter and game server in the test database; Daphne and an inference worker reading it."""
    from django.contrib.auth import get_user_model

    from agents_app import services
    from agents_app.models import AdapterVersion, Persona

    owner = get_user_model().objects.create_user("e2e-owner", "owner@example.org", "e2e-password-1")
    persona = Persona.objects.create(owner=owner, **PERSONA)
    adapter = AdapterVersion.objects.create(
        persona=persona,
        version=1,
        files_path=e2e_adapter["files_path"],
        sha256=e2e_adapter["sha256"],
        base_model_id=e2e_model.name,
        rank=4,
        target_modules=["q_proj", "v_proj"],
        size_bytes=e2e_adapter["size_bytes"],
        status=AdapterVersion.Status.ACTIVE,
    )
    persona.active_adapter = adapter
    persona.save(update_fields=["active_adapter"])
    _server, token = services.game_server_create(name="E2E world", owner=owner)

    logs = tmp_path / "logs"
    logs.mkdir()
    env = child_env(
        {
            "DATABASE_URL": child_database_url(),
            "REDIS_URL": os.environ["REDIS_URL"],
            # Channels of this test only: nothing left in Redis by another run reaches it.
            "VOYAGER_CHANNEL_PREFIX": f"voyager-e2e-{os.getpid()}-{time.monotonic_ns()}",
            "VOYAGER_EMBEDDED_WORKER": "0",
            "VOYAGER_BASE_MODEL": str(e2e_model),
            "VOYAGER_MEDIA_ROOT": str(e2e_adapter["media_root"]),
            "VOYAGER_ASK_TIMEOUT": "20",
            "LOG_LEVEL": "INFO",
        }
    )
    plat = Platform(logs=logs, env=env, port=free_port(), token=token)
    plat.adapter = adapter
    plat.persona = persona
    try:
        plat.start_worker()
        plat.start_daphne()
        yield plat
    finally:
        plat.stop()
        failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
        if failed:
            print(f"\n===== platform logs ({logs}) =====\n{plat.tails()}")


# --- the Luanti side -----------------------------------------------------------------------------


# How the mod reaches the platform: the WebSocket (trusted, with LuaSocket), or the engine's HTTP API
# with the least privilege an operator can grant (secure.http_mods only; the mod is not trusted).
TRANSPORTS = {
    "websocket": {},
    "http": {"secure.trusted_mods": "", "secure.http_mods": "voyager"},
}


class LuantiRun:
    """One headless minetestserver run with a fresh world; `wait` drives it phase by phase."""

    def __init__(self, tmp: Path, platform: Platform, transport: str = "websocket", **settings) -> None:
        if not Path(MINETESTSERVER).exists():
            pytest.fail(f"minetest-server is not installed ({MINETESTSERVER}): `bin/voyager setup` installs it")
        self.dir = tmp / "luanti"
        self.world = self.dir / "world"
        self.conf = self.dir / "minetest.conf"
        self.log = self.dir / "debug.txt"
        self.result_path = self.world / "voyager_test_result.json"
        self.progress_path = self.world / "voyager_test_progress"
        self.dir.mkdir()
        lines = {
            "voyager.fallback_after": FALLBACK_AFTER,
            "voyager.reconnect_max": 2,
            "voyager.reply_timeout": 20,
            "voyager_test.persona": PERSONA["slug"],
            "voyager_test.player": PLAYER,
            "voyager_test.timeout": CASE_LIMIT - 10,
            "time_speed": 0,  # the time of day is in the prompt: keep it still
            **TRANSPORTS[transport],
            **settings,
        }
        url = platform.url if transport == "websocket" else f"http://127.0.0.1:{platform.port}/http/luanti/"
        subprocess.run(
            [
                "sh",
                str(MOD_TESTS / "make_world.sh"),
                str(self.world),
                str(self.conf),
                url,
                platform.token,
                str(free_port(socket.SOCK_DGRAM)),
                *(f"{k} = {v}" for k, v in lines.items()),
            ],
            check=True,
            timeout=30,
        )
        self.started = time.monotonic()
        self.out = open(self.dir / "server.out", "w")  # noqa: SIM115 (closed in finish)
        self.proc = subprocess.Popen(
            [
                MINETESTSERVER,
                "--world",
                str(self.world),
                "--gameid",
                "devtest",
                "--config",
                str(self.conf),
                "--logfile",
                str(self.log),
                "--quiet",
            ],
            cwd=self.dir,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

    def phase(self) -> str:
        try:
            return self.progress_path.read_text().strip()
        except OSError:
            return ""

    def wait_phase(self, wanted: str) -> None:
        while True:
            phase = self.phase()
            if phase == wanted:
                return
            assert phase != "finished" and self.proc.poll() is None, (
                f"the test mod ended (phase {phase!r}) before phase {wanted!r}:\n{self.report()}"
            )
            assert time.monotonic() - self.started < CASE_LIMIT, f"no phase {wanted!r} in time:\n{self.report()}"
            time.sleep(0.05)

    def finish(self) -> dict:
        try:
            self.proc.wait(timeout=max(1.0, CASE_LIMIT - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            self.out.close()
        errors = [line for line in self.log.read_text(errors="replace").splitlines() if "ERROR[" in line]
        lua_errors = [e for e in errors if "ModError" in e or "Runtime error" in e or "ServerError" in e]
        assert not lua_errors, "the Luanti server hit a Lua error:\n" + "\n".join(lua_errors[:20])
        assert self.result_path.exists(), f"the test mod wrote no result:\n{self.report()}"
        return json.loads(self.result_path.read_text())

    def report(self) -> str:
        voyager_lines = (
            [line for line in self.log.read_text(errors="replace").splitlines() if "[voyager" in line]
            if self.log.exists()
            else []
        )
        result = self.result_path.read_text()[:4000] if self.result_path.exists() else "(no result file)"
        return (
            "----- Luanti log ([voyager] lines) -----\n"
            + "\n".join(voyager_lines[-40:])
            + f"\n----- result -----\n{result}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if not self.out.closed:
            self.out.close()


@pytest.fixture(params=sorted(TRANSPORTS))
def transport(request) -> str:
    return request.param


@pytest.fixture
def luanti(request, platform, tmp_path, transport):
    runs: list[LuantiRun] = []

    def start(**settings) -> LuantiRun:
        run = LuantiRun(tmp_path, platform, transport, **settings)
        runs.append(run)
        return run

    yield start
    failed = any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
    for run in runs:
        run.stop()
        if failed:
            print(f"\n===== Luanti ({run.dir}) =====\n{run.report()}")
    if not failed:
        shutil.rmtree(tmp_path / "luanti", ignore_errors=True)


def _exchange(pk):
    from agents_app.models import Exchange

    return Exchange.objects.select_related("npc", "persona").get(pk=pk)


def _check_reply_stored(result: dict, reply: dict, question: str, platform: Platform):
    exchange = _exchange(reply["exchange"])
    assert exchange.reply_text == reply["text"]
    assert exchange.player_text == question and exchange.player_name == PLAYER
    assert exchange.source == "game" and exchange.persona.slug == PERSONA["slug"]
    assert exchange.npc.world_id == result["npc"]["id"]
    assert exchange.adapter_version_id == platform.adapter.pk  # which adapter version answered
    expected_model = "echo" if os.environ.get("VOYAGER_E2E_BACKEND") == "echo" else ""
    assert exchange.base_model_id and (not expected_model or exchange.base_model_id == expected_model)
    assert exchange.ttft_ms is not None and exchange.total_ms is not None
    assert 0 <= exchange.ttft_ms <= exchange.total_ms < 20_000
    assert exchange.completion_tokens > 0 and exchange.prompt
    assert exchange.context.get("pos") and "time_of_day" in exchange.context
    assert _actions(exchange.actions) == _actions(reply.get("actions"))
    return exchange


def _actions(actions) -> list:
    """Name and args; Lua's JSON writes an empty args table as null."""
    return [(a["name"], list(a.get("args") or [])) for a in actions or []]


# --- the cases -----------------------------------------------------------------------------------


def _check_transport(run: LuantiRun, transport: str) -> None:
    """The mod says at start-up which transport it chose; the HTTP run had no trust to use."""
    log = run.log.read_text(errors="replace")
    assert f"over {transport} (protocol 1)" in log, run.report()


def test_a_player_asks_an_npc_gets_a_streamed_reply_with_actions_and_rates_it(platform, luanti, e2e_model, transport):
    from agents_app.models import Rating

    question = "can you jump?"
    run = luanti(**{"voyager_test.text": question})
    result = run.finish()
    report = run.report()
    _check_transport(run, transport)

    assert result["ok"] and result["finish_reason"] == "rated", report
    assert result["connected"] and result["ready"] and PERSONA["slug"] in result["personas"], report
    reply = result["reply"]
    assert not reply["fallback"] and reply["exchange"], report
    streamed = (result.get("deltas_by_ask") or {}).get(result["ask_id"], "")
    assert streamed.strip(), report
    kinds = [e["type"] for e in result["events"]]
    assert kinds.index("delta") < kinds.index("reply"), kinds
    # Streamed: the deltas came before the reply and add up to it (action markup taken out).
    assert " ".join(streamed.split()) == " ".join(reply["text"].split()), (streamed, reply["text"])
    exchange = _check_reply_stored(result, reply, question, platform)
    # Every allowed action reached the NPC and ran (or was refused by the world, with a reason).
    ran = [a["name"] for a in result.get("actions") or []]
    assert ran == [a["name"] for a in reply.get("actions") or []], (ran, reply)
    assert all(a["name"] in PERSONA["allowed_actions"] for a in reply.get("actions") or []), reply
    assert [b["name"] for b in result.get("blocked") or []] == [b["name"] for b in exchange.blocked_actions]
    if e2e_model == STARTER and os.environ.get("VOYAGER_E2E_BACKEND", "engine") == "engine":
        # The starter model learned the markup: asked to jump, it jumps, and the NPC does.
        assert {"name": "jump", "args": []} in exchange.actions, exchange.raw_text
        assert any(a["name"] == "jump" and a["ok"] for a in result["actions"]), result["actions"]

    rating = Rating.objects.get(exchange=exchange)
    assert rating.source == "game" and rating.player_name == PLAYER and rating.user_id is None
    assert rating.score == 1 and rating.reason == "voyager_test: good answer"


def test_the_mod_falls_back_while_the_platform_is_down_and_reconnects_when_it_is_back(platform, luanti, transport):
    from agents_app.models import Exchange, Rating

    run = luanti(**{"voyager_test.scenario": "outage", "voyager_test.text": "hello"})
    run.wait_phase("wait_outage")
    platform.kill("daphne")  # the platform goes away mid-run
    run.wait_phase("wait_restore")
    platform.start_daphne()  # back on the same port
    result = run.finish()
    report = run.report()
    _check_transport(run, transport)

    assert result["ok"] and result["finish_reason"] == "rated", report
    outage = result["outage"]
    first = outage and result["asks"][0]
    assert first and result["disconnects"] >= 1, report
    # While down: the question asked right after the drop got the scripted reply once the
    # fallback window ran out, not before and not much after.
    fallback = outage["fallback_reply"]
    waited = fallback["t"] - outage["down_at"]
    assert fallback["fallback"] and fallback["text"] and not fallback.get("exchange"), report
    assert outage["fallback_after"] == FALLBACK_AFTER
    assert FALLBACK_AFTER - 0.3 <= waited <= FALLBACK_AFTER + 2.0, (waited, report)
    assert outage["down_at"] <= outage["fallback_at"] <= fallback["t"], report
    # Back: the mod reconnected by itself and a later question got a real, stored reply.
    restored = outage["restored_reply"]
    assert outage["ready_again_at"] > fallback["t"] and outage.get("restored_at"), report
    assert not restored["fallback"] and restored["exchange"], report
    assert result["reply"] == restored
    exchange = _check_reply_stored(result, restored, "Welcome back! Who are you?", platform)
    # Two platform replies for this NPC (before and after); the scripted one is not an exchange.
    assert Exchange.objects.filter(npc=exchange.npc).count() == 2
    assert Rating.objects.get(exchange=exchange).player_name == PLAYER
    assert platform.starts["daphne"] == 2
