"""The game gateway as a test drives it: frames over its WebSocket, a worker on the test's loop, a scripted backend."""

from __future__ import annotations

import asyncio
import json
import threading
import time

from channels.testing import WebsocketCommunicator

from inference.backends import Overloaded
from inference.heartbeat import heartbeats
from inference.worker import InferenceWorker
from portal.asgi import application


class ScriptedBackend:
    """Answers with fixed deltas and actions, or misbehaves on purpose."""

    base_model_id = "scripted"

    def __init__(self, deltas=("Hello", " there"), actions=(), mode="answer", gap=0.0):
        self.deltas, self.actions, self.mode = list(deltas), list(actions), mode
        self.gap = gap  # > 0: stream from a thread, a piece every `gap` seconds, as an engine does
        self.cancelled: list[str] = []
        self.requests: list[dict] = []
        self.emitters = {}

    def submit(self, request, emit):
        self.requests.append(request)
        self.emitters[request["request_id"]] = emit
        if self.mode == "overloaded":
            raise Overloaded("the inference queue is full (2 waiting)")
        if self.mode == "silent":
            return
        if self.gap > 0:
            threading.Thread(target=self._answer, args=(request, emit), daemon=True).start()
        else:
            self._answer(request, emit)

    def _answer(self, request, emit):
        rid = request["request_id"]
        for piece in self.deltas:
            if self.gap > 0:
                time.sleep(self.gap)
            emit({"type": "inference.delta", "request_id": rid, "text": piece})
        text = "".join(self.deltas)
        emit(
            {
                "type": "inference.result",
                "request_id": rid,
                "text": text,
                "raw_text": text + " [[ACTION:...]]",
                "actions": self.actions,
                "adapter_id": (request.get("adapter") or {}).get("id"),
                "prompt": f"PROMPT {request['text']}",
                "prompt_tokens": 7,
                "completion_tokens": 3,
                "ttft_ms": 1.0,
                "total_ms": 2.0,
                "finish_reason": "stop",
                "base_model_id": "scripted",
            }
        )

    def cancel(self, request_id):
        # Like the engine: a cancelled request ends with a result marked cancelled.
        self.cancelled.append(request_id)
        if request_id in self.emitters:
            self.emitters.pop(request_id)(
                {
                    "type": "inference.result",
                    "request_id": request_id,
                    "text": "",
                    "raw_text": "",
                    "actions": [],
                    "finish_reason": "cancelled",
                }
            )

    def preload(self, adapter):
        pass

    def stop(self, *, drain):
        pass


class running_worker:
    """An inference worker on this event loop, over the same channel layer as the gateway."""

    def __init__(self, backend):
        self.backend = backend

    async def __aenter__(self):
        store = heartbeats()
        for worker_id in await store.alive():
            await store.forget(worker_id)
        self.worker = InferenceWorker(self.backend)
        self.task = asyncio.create_task(self.worker.run())
        await self.worker.started.wait()
        return self.worker

    async def __aexit__(self, *exc):
        self.worker.stop()
        await asyncio.wait_for(self.task, 10)


async def connect(token):
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    communicator = WebsocketCommunicator(application, "/ws/luanti/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def send(communicator, frame):
    await communicator.send_to(text_data=json.dumps(frame))


async def recv(communicator, timeout=5):
    return json.loads(await communicator.receive_from(timeout=timeout))


async def collect_until(communicator, kinds=("reply", "error"), timeout=10):
    frames = []
    while True:
        frame = await recv(communicator, timeout)
        frames.append(frame)
        if frame["type"] in kinds:
            return frames


def ask(text="hello Mo", id="a1", npc="npc-1", persona="miner", **extra):
    return {"type": "ask", "id": id, "npc": npc, "persona": persona, "player": "steve", "text": text, **extra}


# --- the HTTP binding ---------------------------------------------------------------------------


async def http(method, path, *, token=None, session=None, body=b"", timeout=10):
    """One request to the ASGI application: (status, the JSON body decoded, or the body's text)."""
    from channels.testing import HttpCommunicator

    headers = [(b"host", b"testserver"), (b"content-type", b"application/x-ndjson")]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if session:
        headers.append((b"x-voyager-session", session.encode()))
    communicator = HttpCommunicator(application, method, path, body=body, headers=headers)
    response = await communicator.get_response(timeout=timeout)
    content, headers = response["body"], dict(response["headers"])
    if not headers.get(b"Content-Type", headers.get(b"content-type", b"")).startswith(b"application/json"):
        return response["status"], content.decode(errors="replace")
    return response["status"], json.loads(content)


class HttpMod:
    """A game server on the HTTP binding, as the mod holds it: one session, frames posted, frames polled."""

    def __init__(self, token):
        self.token, self.session, self.seq = token, None, 0

    async def open(self):
        status, body = await http("POST", "/http/luanti/session/", token=self.token)
        assert status == 201, body
        self.session = body["session"]
        return self

    async def post(self, *frames, raw=None):
        body = raw if raw is not None else "\n".join(json.dumps(f) for f in frames).encode()
        return await http("POST", "/http/luanti/frames/", token=self.token, session=self.session, body=body)

    async def poll(self, timeout=15):
        status, body = await http(
            "GET", f"/http/luanti/poll/?after={self.seq}", token=self.token, session=self.session, timeout=timeout
        )
        if status == 200:
            self.seq = body["seq"]
        return status, body

    async def frames_until(self, kinds=("reply", "error"), timeout=10):
        """Poll until a frame of ``kinds`` comes; every frame polled, and the polls that brought them."""
        frames, polls = [], 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = await self.poll()
            assert status == 200, (status, body)
            polls += 1
            frames += body["frames"]
            if any(f["type"] in kinds for f in body["frames"]):
                return frames, polls
        raise AssertionError(f"no {kinds} frame in {timeout} s: {frames}")
