"""Benchmark: the engine with float32 base weights against bfloat16 ones (LoRA in float32 in both).

    .venv/bin/python benchmarks/weights.py [--model DIR] [--npcs 16] [--adapters 4] [--new-tokens 24] [--rounds 3]

The real default model by default. Two workloads, each run ``--rounds`` times per precision,
the precisions taking turns (the best round counts: least disturbed by other load):

- one NPC: one request alone, its whole reply and its time to first token;
- a crowd: ``--npcs`` requests at once over ``--adapters`` random LoRA adapters.

Greedy; every reply is exactly --new-tokens tokens. Also printed: how many of the crowd's replies
are token-identical between the precisions. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.inference import make_adapters, make_prompts, percentile, run_engine  # noqa: E402
from inference.engine import Engine, EngineConfig  # noqa: E402
from inference.loading import load_base_model  # noqa: E402

DEFAULT_MODEL = Path.home() / ".cache" / "luanti-voyager" / "models" / "smollm2-135m-instruct"
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--npcs", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    k, n = args.new_tokens, args.npcs

    with tempfile.TemporaryDirectory(prefix="voyager-bench-") as tmp:
        refs = make_adapters(Path(args.model), Path(tmp), args.adapters, rank=8)
        engines = {}
        for name, dtype in PRECISIONS.items():
            loaded = load_base_model(args.model, dtype=dtype)
            # No prompt cache: every round prefills the same prompts again.
            config = EngineConfig(max_batch_size=n, max_queue=4 * n, adapter_slots=len(refs), prompt_cache_mb=0)
            engines[name] = Engine(loaded, config).start()
        prompts = make_prompts(loaded.tokenizer, n, 400)
        one_prompt = [min(prompts, key=lambda p: abs(len(p.input_ids) - 100))]
        print(
            f"model {loaded.info.architecture} {loaded.info.num_parameters / 1e6:.1f}M params, torch threads "
            f"{torch.get_num_threads()}; one NPC: a {len(one_prompt[0].input_ids)}-token prompt; crowd: {n} NPCs "
            f"over {len(refs)} adapters; {k} new tokens each"
        )
        for engine in engines.values():
            run_engine(engine, refs, prompts, 4, tag="warm")
        best: dict[str, dict] = {name: {} for name in engines}
        for r in range(args.rounds):
            for name, engine in engines.items():
                one = run_engine(engine, refs[:1], one_prompt, k, tag=f"one{r}-")
                crowd = run_engine(engine, refs, prompts, k, tag=f"crowd{r}-")
                if not best[name] or one["wall_s"] < best[name]["one"]["wall_s"]:
                    best[name]["one"] = one
                if "crowd" not in best[name] or crowd["wall_s"] < best[name]["crowd"]["wall_s"]:
                    best[name]["crowd"] = crowd
        for engine in engines.values():
            engine.stop()

    figures = {}
    for name, runs in best.items():
        one, crowd = runs["one"], runs["crowd"]
        figures[name] = {
            "one_npc_s": round(one["wall_s"], 3),
            "one_npc_ttft_ms": round(one["ttft_ms"][0], 1),
            "crowd_tok_s": round(n * k / crowd["wall_s"], 1),
            "crowd_ttft_p95_ms": round(percentile(crowd["ttft_ms"], 0.95), 1),
        }
        f = figures[name]
        print(
            f"{name:9}: one NPC {f['one_npc_s']:.3f} s (ttft {f['one_npc_ttft_ms']:.0f} ms); crowd "
            f"{f['crowd_tok_s']:.0f} tok/s, ttft p95 {f['crowd_ttft_p95_ms']:.0f} ms"
        )
    same = sum(a == b for a, b in zip(best["float32"]["crowd"]["tokens"], best["bfloat16"]["crowd"]["tokens"]))
    speedup = figures["float32"]["one_npc_s"] / figures["bfloat16"]["one_npc_s"]
    print(f"bfloat16: one NPC {speedup:.2f}x as fast; {same}/{n} crowd replies token-identical to float32")
    print(
        json.dumps(
            {
                "float32": figures["float32"],
                "bfloat16": figures["bfloat16"],
                "one_npc_speedup": round(speedup, 3),
                "crowd_speedup": round(figures["bfloat16"]["crowd_tok_s"] / figures["float32"]["crowd_tok_s"], 3),
                "identical": same,
                "npcs": n,
                "new_tokens": k,
                "model": Path(args.model).name,
            }
        )
    )


if __name__ == "__main__":
    main()
