"""Benchmark: a burst of new NPCs while others stream, with chunked prefill and without.

    .venv/bin/python benchmarks/prefill.py [--model DIR] [--streaming 4] [--burst 16] [--chunk 512] [--rounds 3]

The real default model by default. ``--streaming`` NPCs are mid-reply when ``--burst`` new ones
ask at once. Chunked: the newcomers' prompts go in ``--chunk``-token chunks between decode steps
(the engine's default); whole: the burst is prefilled in one step (a chunk as large as the burst).
Measured in one run, the two taking turns ``--rounds`` times (the best round counts): the longest
stall between two tokens of a streaming reply while the burst comes in, and the newcomers' time
to first token. Greedy; every reply is exactly its token count. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.inference import DEFAULT_MODEL, make_prompts, percentile  # noqa: E402
from inference.corpus import persona_specs  # noqa: E402
from inference.engine import Engine, EngineConfig, Request, Result  # noqa: E402
from inference.loading import load_base_model, weight_dtype  # noqa: E402
from inference.prompt import Sampling  # noqa: E402


def one_round(engine: Engine, steps: list[float], streaming, burst, tag: str) -> dict:
    """``steps``: when each decode step ended (every streaming reply gets a token per step)."""
    spec = persona_specs()[0]
    persona = type(spec)(spec.slug, spec.name, spec.system_prompt, spec.traits, Sampling(temperature=0.0))
    results: dict[str, Result] = {}
    finished = threading.Semaphore(0)

    def on_event(event) -> None:
        if isinstance(event, Result) or hasattr(event, "code"):
            results[event.request_id] = event
            finished.release()

    for i, prompt in enumerate(streaming):
        engine.submit(Request(f"{tag}s{i}", persona, prompt=prompt, max_tokens=200, ignore_eos=True), on_event)
    mark = len(steps)
    while len(steps) < mark + 3:  # all mid-reply
        time.sleep(0.005)
    start = time.perf_counter()
    newcomers = [f"{tag}n{i}" for i in range(len(burst))]
    for rid, prompt in zip(newcomers, burst):
        engine.submit(Request(rid, persona, prompt=prompt, max_tokens=8, ignore_eos=True), on_event)
    for _ in range(len(streaming) + len(newcomers)):
        finished.acquire(timeout=600)
    bad = [r for r in results.values() if not isinstance(r, Result)]
    if bad:
        raise RuntimeError(f"engine errors: {bad[:3]}")
    ttft = [results[rid].ttft_ms for rid in newcomers]
    last_first = start + max(ttft) / 1000
    marks = [start, *(t for t in steps if start < t < last_first), last_first]
    return {
        "stall_ms": max(b - a for a, b in zip(marks, marks[1:])) * 1000,
        "ttft_ms": ttft,
        "burst_s": max(ttft) / 1000,
    }


def timed_decode(engine: Engine) -> list[float]:
    """Note when each of the engine's decode steps ends."""
    steps: list[float] = []
    decode = engine.runner.decode

    def timed(*args):
        out = decode(*args)
        steps.append(time.perf_counter())
        return out

    engine.runner.decode = timed
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--streaming", type=int, default=4)
    parser.add_argument("--burst", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=EngineConfig().max_prefill_tokens)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    weights = weight_dtype("auto")
    loaded = load_base_model(args.model, dtype=weights)
    prompts = make_prompts(loaded.tokenizer, args.streaming + args.burst, 400)
    streaming, burst = prompts[: args.streaming], prompts[args.streaming :]
    burst_tokens = sum(len(p.input_ids) for p in burst)
    n = args.streaming + args.burst
    ways = {"chunked": args.chunk, "whole": burst_tokens + 1}
    engines = {}
    for name, chunk in ways.items():
        config = EngineConfig(
            max_batch_size=n, max_queue=4 * n, max_prefill_tokens=chunk, max_prefilling=args.burst, prompt_cache_mb=0
        )
        engine = Engine(load_base_model(args.model, dtype=weights), config)
        engines[name] = (engine, timed_decode(engine))
        engine.start()
    print(
        f"model {loaded.info.architecture}, {str(weights).removeprefix('torch.')} weights; {args.streaming} NPCs "
        f"streaming, then {args.burst} new ones at once ({burst_tokens} prompt tokens); chunk {args.chunk} tokens",
        flush=True,
    )
    best: dict[str, dict] = {}
    for r in range(args.rounds):
        for name, (engine, steps) in engines.items():
            result = one_round(engine, steps, streaming, burst, f"{name}{r}-")
            if name not in best or result["burst_s"] < best[name]["burst_s"]:
                best[name] = result
    for engine, _ in engines.values():
        engine.stop()
    out = {}
    for name, result in best.items():
        out[name] = {
            "stall_ms": round(result["stall_ms"], 1),
            "ttft_p50_ms": round(percentile(result["ttft_ms"], 0.5), 1),
            "ttft_p95_ms": round(percentile(result["ttft_ms"], 0.95), 1),
            "burst_s": round(result["burst_s"], 3),
        }
        f = out[name]
        print(
            f"{name:8}: streaming replies stall at most {f['stall_ms']:.0f} ms; newcomers' ttft p50 "
            f"{f['ttft_p50_ms']:.0f} / p95 {f['ttft_p95_ms']:.0f} ms; the whole burst in {f['burst_s']:.2f} s"
        )
    print(json.dumps({**out, "chunk": args.chunk, "burst": args.burst, "streaming": args.streaming}))


if __name__ == "__main__":
    main()
