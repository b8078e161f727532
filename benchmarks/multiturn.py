"""Benchmark: NPC conversations of several turns, with the prompt cache and without.

    .venv/bin/python benchmarks/multiturn.py [--model DIR] [--npcs 16] [--turns 4] [--adapters 4]
                                             [--new-tokens 24] [--moving]

The real default model by default. Each NPC talks with its own player; personas (each with its
own random LoRA adapter) are shared by several NPCs. Every turn all NPCs are asked at once, each
prompt carrying the NPC's earlier turns as memory. The context is what the NPC sees: it stands
while it talks, so the context stays (``--moving``: the NPCs walk between turns, as one that
follows its player does, and the context changes every turn). Measured in one run, cache on and off: time to
first token per turn and the whole turn's time. Greedy; every reply is exactly --new-tokens
tokens. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.inference import make_adapters, percentile  # noqa: E402
from inference.corpus import generate_dialogues, persona_specs  # noqa: E402
from inference.engine import Engine, EngineConfig, Request, Result  # noqa: E402
from inference.loading import load_base_model  # noqa: E402
from inference.prompt import Sampling, Turn  # noqa: E402

DEFAULT_MODEL = Path.home() / ".cache" / "luanti-voyager" / "models" / "smollm2-135m-instruct"


def conversations(npcs: int, turns: int, personas: int, moving: bool, seed: int = 5) -> list[dict]:
    """Per NPC: its persona index, player, and for each turn the player's line and the context."""
    rng = random.Random(seed)
    lines = [d.text for d in generate_dialogues(npcs * turns, seed=seed)]
    out = []
    for n in range(npcs):
        pos = [rng.randint(-200, 200), rng.randint(0, 30), rng.randint(-200, 200)]
        steps = []
        for t in range(turns):
            if moving and t:
                pos = [pos[0] + rng.randint(-6, 6), pos[1], pos[2] + rng.randint(-6, 6)]
            nearby = ["player:steve", "default:dirt"] if not moving or t % 2 == 0 else ["mobs:cow", "default:tree"]
            steps.append(
                {"text": lines[n * turns + t], "context": {"pos": list(pos), "time_of_day": 0.4, "nearby": nearby}}
            )
        out.append({"persona": n % personas, "player": f"player{n}", "turns": steps})
    return out


def run(engine: Engine, plan: list[dict], refs, new_tokens: int, tag: str) -> dict:
    specs = persona_specs()
    greedy = Sampling(temperature=0.0)
    memories: list[list[Turn]] = [[] for _ in plan]
    per_turn, tokens = [], []
    for t in range(len(plan[0]["turns"])):
        done = threading.Event()
        results: dict[str, Result] = {}
        lock = threading.Lock()

        def on_event(event, results=results, done=done, lock=lock) -> None:
            if isinstance(event, Result) or hasattr(event, "code"):
                with lock:
                    results[event.request_id] = event
                    if len(results) == len(plan):
                        done.set()

        start = time.perf_counter()
        for n, npc in enumerate(plan):
            spec = specs[npc["persona"] % len(specs)]
            persona = type(spec)(spec.slug, spec.name, spec.system_prompt, spec.traits, greedy)
            step = npc["turns"][t]
            engine.submit(
                Request(
                    f"{tag}-{t}-{n}",
                    persona,
                    player=npc["player"],
                    text=step["text"],
                    memory=tuple(memories[n]),
                    context=step["context"],
                    adapter=refs[npc["persona"] % len(refs)],
                    max_tokens=new_tokens,
                    ignore_eos=True,
                ),
                on_event,
            )
        done.wait(900)
        wall = time.perf_counter() - start
        ordered = [results[f"{tag}-{t}-{n}"] for n in range(len(plan))]
        bad = [r for r in ordered if not isinstance(r, Result)]
        if bad:
            raise RuntimeError(f"engine errors: {bad[:3]}")
        for n, result in enumerate(ordered):
            memories[n].append(Turn(plan[n]["player"], plan[n]["turns"][t]["text"], result.text))
        per_turn.append(
            {
                "wall_s": wall,
                "ttft_ms": [r.ttft_ms for r in ordered],
                "prompt_tokens": [r.prompt_tokens for r in ordered],
            }
        )
        tokens.append([r.token_ids for r in ordered])
    return {"turns": per_turn, "tokens": tokens}


def summary(name: str, result: dict) -> dict:
    first = result["turns"][0]
    later = [ms for turn in result["turns"][1:] for ms in turn["ttft_ms"]]
    out = {
        "turn1_ttft_p95_ms": round(percentile(first["ttft_ms"], 0.95), 1),
        "later_ttft_p95_ms": round(percentile(later, 0.95), 1),
        "later_ttft_p50_ms": round(percentile(later, 0.5), 1),
        "turn1_s": round(first["wall_s"], 3),
        "later_turn_s": round(sum(t["wall_s"] for t in result["turns"][1:]) / (len(result["turns"]) - 1), 3),
    }
    out["ttft_ratio"] = round(out["later_ttft_p95_ms"] / out["turn1_ttft_p95_ms"], 3)
    print(
        f"{name:9}: turn 1 ttft p95 {out['turn1_ttft_p95_ms']:.0f} ms ({out['turn1_s']:.2f} s), turns 2+ ttft "
        f"p50 {out['later_ttft_p50_ms']:.0f} / p95 {out['later_ttft_p95_ms']:.0f} ms ({out['later_turn_s']:.2f} s "
        f"a turn); ratio {out['ttft_ratio']:.2f}"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--npcs", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--moving", action="store_true", help="the NPCs walk between turns (the context changes)")
    args = parser.parse_args()
    if args.turns < 2:
        parser.error("--turns must be at least 2")

    loaded = load_base_model(args.model)
    plan = conversations(args.npcs, args.turns, args.adapters, args.moving)
    with tempfile.TemporaryDirectory(prefix="voyager-bench-") as tmp:
        refs = make_adapters(Path(args.model), Path(tmp), args.adapters, rank=8)
        print(
            f"model {loaded.info.architecture} {loaded.info.num_parameters / 1e6:.1f}M params, torch threads "
            f"{torch.get_num_threads()}; {args.npcs} NPCs x {args.turns} turns x {args.new_tokens} tokens over "
            f"{len(refs)} adapters; NPCs {'moving' if args.moving else 'standing'}"
        )
        figures, outputs, saved = {}, {}, 0
        for name, mb in (("cache off", 0), ("cache on", 256)):
            # A model of its own: an engine wraps its model's projections for LoRA.
            engine = Engine(
                load_base_model(args.model),
                EngineConfig(max_batch_size=args.npcs, max_queue=4 * args.npcs, prompt_cache_mb=mb),
            )
            engine.start()
            run(engine, plan[:2], refs, 4, tag=f"warm{mb}")  # loads the adapters, warms the allocator
            engine.prompt_cache.clear()  # every NPC's first turn starts cold
            warm_saved = engine.stats()["prompt_cache_tokens_saved"]
            result = run(engine, plan, refs, args.new_tokens, tag=f"m{mb}")
            saved = engine.stats()["prompt_cache_tokens_saved"] - warm_saved
            engine.stop()
            figures[name], outputs[name] = summary(name, result), result
        prompt_tokens = sum(sum(t["prompt_tokens"]) for t in outputs["cache on"]["turns"])
        identical = outputs["cache on"]["tokens"] == outputs["cache off"]["tokens"]
        print(f"cache on skipped {saved} of {prompt_tokens} prompt tokens; replies token-identical: {identical}")
    print(
        json.dumps(
            {
                "multiturn_ttft_ratio": figures["cache on"]["ttft_ratio"],
                "multiturn_ttft_ratio_nocache": figures["cache off"]["ttft_ratio"],
                "later_ttft_p95_ms": figures["cache on"]["later_ttft_p95_ms"],
                "later_ttft_p95_ms_nocache": figures["cache off"]["later_ttft_p95_ms"],
                "turn1_ttft_p95_ms": figures["cache on"]["turn1_ttft_p95_ms"],
                "later_turn_s": figures["cache on"]["later_turn_s"],
                "later_turn_s_nocache": figures["cache off"]["later_turn_s"],
                "prompt_tokens_saved": saved,
                "prompt_tokens": prompt_tokens,
                "identical": identical,
                "npcs_moving": args.moving,
                "model": Path(args.model).name,
                "npcs": args.npcs,
                "turns": args.turns,
            }
        )
    )


if __name__ == "__main__":
    main()
