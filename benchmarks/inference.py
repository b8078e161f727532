"""Benchmark: 32 concurrent NPC requests over 8 LoRA adapters, naive PEFT vs the engine.

    .venv/bin/python benchmarks/inference.py [--model DIR] [--requests 32] [--adapters 8] [--new-tokens 32]

Builds the starter model into var/models/starter if --model is missing, makes
random LoRA adapters (r=8 on q_proj/v_proj), then measures in one run:

- naive: one request at a time with PEFT ``set_adapter`` + ``generate``
  (what a per-request PEFT service does); a request's time to first token
  counts the wait for the requests before it;
- engine: all requests submitted at once, and with staggered arrivals;
- the engine with every request on one adapter (mixed-adapter overhead);
- the floor: the runner's prefill and batched decode steps alone, with the
  inputs precomputed (no sampling, detokenizing, events or bookkeeping).

Greedy decoding; every request produces exactly --new-tokens tokens (EOS is
ignored). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference.corpus import generate_dialogues  # noqa: E402
from inference.engine import AdapterRef, Engine, EngineConfig, Request, Result  # noqa: E402
from inference.loading import load_base_model  # noqa: E402
from inference.prompt import Prompt, Sampling, build_prompt  # noqa: E402
from inference.starter import build_starter_model  # noqa: E402


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


def run_floor(
    engine: Engine, refs: list[AdapterRef], prompts: list[Prompt], tokens: list[list[int]]
) -> tuple[float, float]:
    """Prefill + batched decode steps through the runner only, inputs precomputed.

    Returns (total seconds, of which prefill seconds).
    """
    runner, n = engine.runner, len(prompts)
    slot_of = [engine.slots.acquire(refs[i % len(refs)]) for i in range(n)]
    order = sorted(range(n), key=lambda i: slot_of[i])  # as the engine orders a prefill
    slot_list = [slot_of[i] for i in order]
    slots = torch.tensor(slot_list)
    steps = len(tokens[0]) - 1
    step_tokens = torch.tensor([[tokens[i][s] for i in order] for s in range(steps)])
    lens = torch.tensor([len(prompts[i].input_ids) for i in order])
    with torch.inference_mode():
        start = time.perf_counter()
        runner.prefill(0, [prompts[i].input_ids for i in order], slot_list)
        prefill = time.perf_counter() - start
        engine.bank.state.set(slots)
        for s in range(steps):
            runner.decode(n, step_tokens[s], lens + s)
        wall = time.perf_counter() - start
    for slot in slot_list:
        engine.slots.release(slot)
    return wall, prefill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "var" / "models" / "starter"))
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--stagger-ms", type=float, default=20.0)
    args = parser.parse_args()

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        print(f"no model at {model_dir}: building the starter model")
        build_starter_model(model_dir, size="starter", seed=0)
    loaded = load_base_model(model_dir)
    n, k = args.requests, args.new_tokens
    with tempfile.TemporaryDirectory(prefix="voyager-bench-") as tmp:
        refs = make_adapters(model_dir, Path(tmp), args.adapters, args.rank)
        prompts = make_prompts(loaded.tokenizer, n, 400)
        prompt_lens = [len(p.input_ids) for p in prompts]
        print(
            f"model {loaded.info.architecture} {loaded.info.num_parameters / 1e6:.1f}M params, torch threads "
            f"{torch.get_num_threads()}; {n} requests x {k} tokens over {len(refs)} adapters; "
            f"prompt tokens mean {statistics.mean(prompt_lens):.0f} (min {min(prompt_lens)}, max {max(prompt_lens)})"
        )

        load_before = os.getloadavg()[0]
        naive = run_naive(model_dir, refs, prompts, k)
        print(
            f"naive   : {naive['wall_s']:.2f} s, {n * k / naive['wall_s']:.0f} tok/s, "
            f"ttft p50 {percentile(naive['ttft_ms'], 0.5):.0f} ms p95 {percentile(naive['ttft_ms'], 0.95):.0f} ms"
        )

        engine = Engine(loaded, EngineConfig(max_batch_size=n, max_queue=4 * n, adapter_slots=len(refs))).start()
        run_engine(engine, refs, prompts, k, tag="warm")  # loads adapters, warms allocator
        runs = [run_engine(engine, refs, prompts, k, tag=f"m{r}-") for r in range(3)]
        mixed = min(runs, key=lambda r: r["wall_s"])
        print(
            f"engine  : {mixed['wall_s']:.3f} s, {n * k / mixed['wall_s']:.0f} tok/s, "
            f"ttft p50 {percentile(mixed['ttft_ms'], 0.5):.0f} ms p95 {percentile(mixed['ttft_ms'], 0.95):.0f} ms"
        )
        same = sum(a == b for a, b in zip(mixed["tokens"], naive["tokens"]))
        print(f"          {same}/{n} requests token-identical to the naive PEFT run")

        stagger = run_engine(engine, refs, prompts, k, stagger_s=args.stagger_ms / 1000, tag="s-")
        print(
            f"staggered ({args.stagger_ms:.0f} ms apart): {stagger['wall_s']:.3f} s, ttft p50 "
            f"{percentile(stagger['ttft_ms'], 0.5):.0f} ms p95 {percentile(stagger['ttft_ms'], 0.95):.0f} ms"
        )

        single = min(
            (run_engine(engine, [refs[0]], prompts, k, tag=f"one{r}-") for r in range(3)), key=lambda r: r["wall_s"]
        )
        overhead = mixed["wall_s"] / single["wall_s"]
        print(f"single-adapter batch: {single['wall_s']:.3f} s; mixed/single = {overhead:.2f}")

        floor, floor_prefill = min(run_floor(engine, refs, prompts, mixed["tokens"]) for _ in range(3))
        print(
            f"floor (runner forwards only): {floor:.3f} s (prefill {floor_prefill:.3f} s, "
            f"{(floor - floor_prefill) / (k - 1) * 1000:.1f} ms per decode step); "
            f"engine/floor = {mixed['wall_s'] / floor:.2f}"
        )
        print(f"best speedup the forwards allow: naive/floor = {naive['wall_s'] / floor:.1f}")
        engine.stop()

    summary = {
        "speedup": round(naive["wall_s"] / mixed["wall_s"], 2),
        "ttft_p95_ratio": round(percentile(mixed["ttft_ms"], 0.95) / percentile(naive["ttft_ms"], 0.95), 4),
        "mixed_adapter_overhead": round(overhead, 3),
        "floor_fraction": round(mixed["wall_s"] / floor, 3),
        "naive_s": round(naive["wall_s"], 3),
        "engine_s": round(mixed["wall_s"], 3),
        "engine_staggered_s": round(stagger["wall_s"], 3),
        "single_adapter_s": round(single["wall_s"], 3),
        "floor_s": round(floor, 3),
        "floor_prefill_s": round(floor_prefill, 3),
        "floor_decode_step_ms": round((floor - floor_prefill) / (k - 1) * 1000, 2),
        "speedup_bound": round(naive["wall_s"] / floor, 2),
        "naive_tok_s": round(n * k / naive["wall_s"], 1),
        "engine_tok_s": round(n * k / mixed["wall_s"], 1),
        "naive_ttft_p50_ms": round(percentile(naive["ttft_ms"], 0.5), 1),
        "naive_ttft_p95_ms": round(percentile(naive["ttft_ms"], 0.95), 1),
        "engine_ttft_p50_ms": round(percentile(mixed["ttft_ms"], 0.5), 1),
        "engine_ttft_p95_ms": round(percentile(mixed["ttft_ms"], 0.95), 1),
        "staggered_ttft_p95_ms": round(percentile(stagger["ttft_ms"], 0.95), 1),
        "identical_to_naive": same,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "requests": n,
        "new_tokens": k,
        "adapters": len(refs),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
