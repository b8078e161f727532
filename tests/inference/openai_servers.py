"""Real OpenAI-compatible servers for the OpenAI backend's tests, the scripted reply their model
gives, and the worker messages they answer."""

from __future__ import annotations

import os
import threading
from pathlib import Path

# The starter format as a chat template: what a chat model's own template does with the engine's turns.
STARTER_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{{ m['content'] }}<|end|>\n"
    "{% elif m['role'] == 'user' %}<|player|>{{ m['content'] }}<|end|>\n"
    "{% else %}<|npc|>{{ m['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|npc|>{% endif %}"
)
NUMBER_WORDS = [
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
# What the scripted model says to everything: one action, then twenty distinct sentences (a long stream).
SCRIPTED_REPLY = "Aye, follow me. [[ACTION:follow alice]] " + " ".join(f"Step {n}." for n in NUMBER_WORDS)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """``transformers serve`` on one model directory, offline: a real OpenAI-compatible server."""

    def __init__(self, model_dir: Path, log_path: Path) -> None:
        import subprocess
        import sys

        self.model = str(model_dir)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        command = [str(Path(sys.executable).parent / "transformers"), "serve", self.model]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu", "--log-level", "info"]
        self._log = log_path.open("w")
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> ServeProcess:
        import time
        import urllib.request

        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"transformers serve did not answer in {timeout} s: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        self._log.close()


class Events:
    """What a backend emits for its asks, by request id, from whichever thread."""

    def __init__(self) -> None:
        self.by_id: dict[str, list[dict]] = {}
        self.first_delta: dict[str, threading.Event] = {}
        self.done: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def emit(self, event: dict) -> None:
        rid = event["request_id"]
        with self.lock:
            self.by_id.setdefault(rid, []).append(event)
        if event["type"] == "inference.delta":
            self._flag(self.first_delta, rid).set()
        else:
            self._flag(self.done, rid).set()

    def _flag(self, flags: dict[str, threading.Event], rid: str) -> threading.Event:
        with self.lock:
            return flags.setdefault(rid, threading.Event())

    def wait_first_delta(self, rid: str, timeout: float = 60) -> None:
        assert self._flag(self.first_delta, rid).wait(timeout), f"no delta for {rid}: {self.by_id.get(rid)}"

    def final(self, rid: str, timeout: float = 120) -> dict:
        assert self._flag(self.done, rid).wait(timeout), f"no result or error for {rid}: {self.by_id.get(rid)}"
        return self.by_id[rid][-1]

    def deltas(self, rid: str) -> list[str]:
        return [e["text"] for e in self.by_id.get(rid, []) if e["type"] == "inference.delta"]


def ask(rid: str, text: str = "Will you come with me?", **extra) -> dict:
    message = {
        "type": "inference.request",
        "request_id": rid,
        "persona": {
            "slug": "bram",
            "name": "Bram",
            "system_prompt": "A gruff miner.",
            "allowed_actions": ["follow"],
            "temperature": 0.0,
            "top_p": 1.0,
        },
        "memory": [{"player": "alice", "text": "Hello.", "reply": "Hello, alice."}],
        "context": {"pos": [1, 2, 3], "time_of_day": 0.5},
        "player": "alice",
        "text": text,
        "max_tokens": 256,
        "seed": 7,
    }
    return {**message, **extra}
