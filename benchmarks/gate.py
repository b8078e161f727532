"""Which evaluation gate tells a better candidate from a worse one: log-probabilities or a reward model?

On the starter model (built into var/models/starter if missing), scripted
players rate about 2,000 replies by a hidden rule ("the reply greets me", as in
``benchmarks/rlhf.py``), and one dataset snapshot is taken (the nightly run's:
training split, held-out split by prompt). From that same data, candidate
adapters of known quality are trained:

- ``shipped``: the pipeline's defaults (SFT 1 epoch × 5e-4, then KTO 1e-4);
- ``sft2``: SFT 2 epochs × 5e-4; ``kto15``: SFT, then KTO at 1.5e-4 (both learn the rule);
- ``inverted``: the shipped pipeline on inverted labels (learns to avoid greeting);
- ``collapsed``: SFT 4 epochs × 1e-3 (the former default: one farewell for everyone);
- ``salad``: KTO alone, 2 epochs × 5e-4 (degenerates: greeting words everywhere, variety and fluency gone);
- ``noop``: SFT 1 epoch × 1e-6 (barely moves).

Ground truth, on fresh prompts no gate sees (another seed, single turns): a
candidate is *better* when its hidden-rule rate beats the base model's by at
least 0.05 (about two standard errors at 400 prompts), its distinct-2 is no more
than 30% below the base model's (not collapsed), and its replies' per-token
negative log-likelihood under the base model is at most 1.5 times the base
model's own (not word salad). These thresholds were fixed before any gate ran;
the diversity and fluency ones echo the log-probability gate's own defaults,
measured here on other prompts.

Gates, each on every candidate against the base model (the active version):

- ``logp``: ours (``gate.evaluate_adapter`` + ``gate.gate_decide``, defaults):
  held-out log-probability ranking, then policy, drift and diversity checks on
  256 sampled replies;
- ``reward_model``: a reward model (``training_tasks.reward``, TRL's
  RewardTrainer) trained on the training split scores the same sampled
  replies; the candidate passes when its mean reward rises;
- ``rm_sanity``: the reward-model rule plus our policy, drift and diversity checks;
- ``logp_rm``: ours plus the reward-model rule (``VOYAGER_TRAINING_GATE_REWARD_MODEL=on``).

Each gate's time: sampling (shared by all gates) plus its own scoring, the
reward model's training once. Memory: the rise of the process's RSS over where
it stood when the step began (sampled every 20 ms), for the reward model's
training and for an evaluation.

The benchmark uses its own SQLite database and media directory under a temp
directory. The last line of output is JSON:
``{"gates": {"logp": {"correct", "of", ...}, ...}, "rm_heldout_auc", "logp_heldout_auc", "seconds", ...}``.

    python benchmarks/gate.py [--replies 2000] [--eval 400] [--candidates shipped,inverted,...]

``--ratings-cache DIR`` keeps the rated database in DIR (made on the first run,
copied on the next; the same format as ``benchmarks/rlhf.py``'s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CANDIDATES = ("shipped", "sft2", "kto15", "inverted", "collapsed", "salad", "noop")
GATES = ("logp", "reward_model", "rm_sanity", "logp_rm")
# Ground truth: better = the rule rate rises by this much, without collapse or word salad.
MIN_RATE_GAIN = 0.05
MAX_DISTINCT_DROP = 0.3
MAX_NLL_RATIO = 1.5


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """The highest RSS while the block runs, above where it stood at the start (MB)."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        self.started = time.monotonic()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        self.seconds = time.monotonic() - self.started
        self.rise = round(self.peak - self.start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=2000)
    parser.add_argument("--eval", type=int, default=400, help="fresh prompts for each candidate's ground truth")
    parser.add_argument("--persona", default="brann-smith", help="a persona of inference/corpus/personas.json")
    parser.add_argument("--model", default=str(ROOT / "var" / "models" / "starter"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--workdir", help="keep the database and adapters here (default: a temp dir)")
    parser.add_argument("--ratings-cache", help="simulate once into this folder, reuse it on later runs")
    args = parser.parse_args()
    wanted = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = set(wanted) - set(CANDIDATES)
    if unknown:
        raise SystemExit(f"--candidates: unknown {sorted(unknown)}; choose from {CANDIDATES}")

    started = time.monotonic()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="voyager-gate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cache = Path(args.ratings_cache) if args.ratings_cache else None
    cached = cache is not None and (cache / "rlhf.sqlite3").is_file()
    if cached:
        shutil.copyfile(cache / "rlhf.sqlite3", workdir / "rlhf.sqlite3")
    from benchmarks.rlhf import bench_persona, setup_embedded

    setup_embedded(workdir, args.model, {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"})
    from agents_app import policy
    from training_tasks import dataset, gate, services, simulation
    from training_tasks.reward import reward_heldout_metrics, train_reward_model
    from training_tasks.trainers import TrainConfig, train_adapter

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    persona = bench_persona(args.persona)

    # --- ratings and the snapshot ---------------------------------------------------------------
    if cached:
        say(f"reusing the rated replies in {cache}")
    else:
        engine = simulation.load_engine(args.model)
        try:
            report = simulation.simulate_players(
                persona=persona, replies=args.replies, seed=args.seed, engine=engine, rule="greets", log=say
            )
        finally:
            engine.stop(drain=False, timeout=30)
        say(f"simulated {report.replies} rated replies ({report.rate:.1%} liked) in {report.seconds:.0f}s")
        if cache is not None:
            from django.db import connection

            connection.close()
            cache.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(workdir / "rlhf.sqlite3", cache / "rlhf.sqlite3")
    simulated_at = time.monotonic()
    shipped = TrainConfig()
    snapshot = dataset.dataset_build(
        persona=persona, heldout_fraction=0.2, seed=1, max_copies_per_reply=shipped.max_copies_per_reply
    )
    say(f"dataset: {json.dumps(snapshot.counts)}")

    # --- candidates of known quality ------------------------------------------------------------
    recipes = {
        "shipped": (shipped, snapshot.train),
        "sft2": (replace(shipped, sft_epochs=2.0, pref_epochs=0.0), snapshot.train),
        "kto15": (replace(shipped, pref_lr=1.5e-4), snapshot.train),
        "inverted": (shipped, inverted(snapshot.train)),
        "collapsed": (replace(shipped, sft_epochs=4.0, sft_lr=1e-3, pref_epochs=0.0), snapshot.train),
        "salad": (replace(shipped, sft_epochs=0.0, pref_lr=5e-4, pref_epochs=2.0), snapshot.train),
        "noop": (replace(shipped, sft_lr=1e-6, pref_epochs=0.0), snapshot.train),
    }
    adapters: dict[str, str] = {}
    train_seconds: dict[str, float] = {}
    for name in wanted:
        config, data = recipes[name]
        out = workdir / "candidates" / name
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs: keep stdout for the figures
            result = train_adapter(base_model_path=args.model, init_adapter=None, data=data, out_dir=out, config=config)
        adapters[name], train_seconds[name] = str(out), round(result.seconds, 1)
        say(f"trained {name} ({' → '.join(result.stages)}) in {result.seconds:.0f}s")

    # --- ground truth on fresh prompts ----------------------------------------------------------
    names = simulation.scripted_players(0)
    truth: dict[str, dict] = {}
    for name in ["base", *wanted]:
        # A fresh engine each time: rule_rate names every adapter alike, and an engine caches adapters by id.
        rate, samples = simulation.rule_rate(
            persona=persona, n=args.eval, seed=20_000 + args.seed, adapter_path=adapters.get(name), rule="greets"
        )
        truth[name] = {
            "rate": round(rate, 4),
            "distinct_2": gate.diversity_metrics([s["reply"] for s in samples], names)["distinct_2"],
            "nll": nll(args.model, samples),
            "example": samples[0]["reply"],
        }
    say(f"truth base: {json.dumps(truth['base'])}")
    base = truth["base"]
    for name in wanted:
        t = truth[name]
        t["better"] = (
            t["rate"] >= base["rate"] + MIN_RATE_GAIN
            and t["distinct_2"] >= base["distinct_2"] * (1 - MAX_DISTINCT_DROP)
            and t["nll"] <= base["nll"] * MAX_NLL_RATIO
        )
        say(f"truth {name}: {json.dumps(t)}")

    # --- the reward model, trained on the training split ----------------------------------------
    with PeakRss() as rm_training, contextlib.redirect_stdout(sys.stderr):
        reward_model = train_reward_model(base_model_path=args.model, data=snapshot.train)
    rm_heldout = reward_heldout_metrics(reward_model, snapshot.heldout)
    say(f"reward model: {json.dumps(rm_heldout)} (training: {rm_training.rise} MB RSS rise)")

    # --- the gates, against the base model (the active version) ---------------------------------
    spec = services.persona_spec(persona)
    rules = policy.RuleSet.for_persona(persona)

    def check(text, actions):
        return policy.check_reply(persona, text, actions, rules=rules)

    config = gate.GateConfig()
    evaluations: list[PeakRss] = []

    def evaluate(adapter_path: str | None) -> dict:
        with PeakRss() as watch:
            metrics = gate.evaluate_adapter(
                base_model_path=args.model,
                adapter_path=adapter_path,
                heldout=snapshot.heldout,
                persona_spec=spec,
                check=check,
                config=config,
                reference_path=None,
                reward_model=reward_model,
            )
        evaluations.append(watch)
        return metrics

    before = evaluate(None)
    say(f"gate, base model: {json.dumps(before)}")
    on = replace(config, reward_model="on")
    verdicts: dict[str, dict] = {}
    afters: dict[str, dict] = {}
    for name in wanted:
        after = afters[name] = evaluate(adapters[name])
        rm_reasons = gate.reward_model_reasons(before, after, on)
        sanity = gate.sanity_reasons(before, after, config)
        reasons = {
            "logp": gate.gate_decide(before, after, config)[1],
            "reward_model": rm_reasons,
            "rm_sanity": rm_reasons + sanity,
            "logp_rm": gate.gate_decide(before, after, on)[1],
        }
        verdicts[name] = {g: {"passed": not r, "reasons": r} for g, r in reasons.items()}
        say(f"gate, {name}: {json.dumps(after)}")
        say(f"  verdicts: {json.dumps({g: v['reasons'] or 'passed' for g, v in verdicts[name].items()})}")

    # --- the figures ----------------------------------------------------------------------------
    sampling = [e["eval_seconds"]["sampling"] for e in [before, *afters.values()]]
    logp_scoring = [e["eval_seconds"]["log_probabilities"] for e in [before, *afters.values()]]
    rm_scoring = [e["eval_seconds"].get("reward_model", 0.0) for e in [before, *afters.values()]]
    evals = len(sampling)
    logp_seconds = sum(sampling) + sum(logp_scoring)
    rm_seconds = reward_model.seconds + sum(sampling) + sum(rm_scoring)
    eval_rise = max(e.rise for e in evaluations)
    gate_figures = {}
    for g in GATES:
        correct = sum(verdicts[n][g]["passed"] == truth[n]["better"] for n in wanted)
        gate_figures[g] = {
            "correct": correct,
            "of": len(wanted),
            "passed": [n for n in wanted if verdicts[n][g]["passed"]],
            "wrong": [n for n in wanted if verdicts[n][g]["passed"] != truth[n]["better"]],
        }
    gate_figures["logp"].update(seconds=round(logp_seconds, 1), peak_rss_rise_mb=eval_rise)
    gate_figures["reward_model"].update(
        seconds=round(rm_seconds, 1),
        rm_train_seconds=round(reward_model.seconds, 1),
        peak_rss_rise_mb=round(max(rm_training.rise, eval_rise), 1),
        rm_training_rss_rise_mb=rm_training.rise,
    )

    header = "| candidate | better | greets | distinct-2 | NLL | " + " | ".join(GATES) + " |"
    print(header)
    print("| " + " | ".join(["---"] * (5 + len(GATES))) + " |")
    print(
        f"| base (active) | | {base['rate']:.3f} | {base['distinct_2']:.3f} | {base['nll']:.2f} |" + " |" * len(GATES)
    )
    for name in wanted:
        t = truth[name]
        cells = []
        for g in GATES:
            v = verdicts[name][g]
            ok = v["passed"] == t["better"]
            cells.append(f"{'pass' if v['passed'] else 'refuse'} {'✓' if ok else '✗'}")
        print(
            f"| {name} | {'yes' if t['better'] else 'no'} | {t['rate']:.3f} | {t['distinct_2']:.3f} | "
            f"{t['nll']:.2f} | " + " | ".join(cells) + " |"
        )
    print()
    print("| gate | correct | time (s) | peak RSS rise (MB) |")
    print("| --- | --- | --- | --- |")
    for g in GATES:
        f = gate_figures[g]
        extra = {
            "logp": (f"{logp_seconds:.0f}", f"{eval_rise:.0f}"),
            "reward_model": (
                f"{rm_seconds:.0f} (training {reward_model.seconds:.0f})",
                f"{max(rm_training.rise, eval_rise):.0f} (training {rm_training.rise:.0f})",
            ),
            "rm_sanity": (f"{rm_seconds + sum(logp_scoring):.0f}", "as reward_model"),
            "logp_rm": (f"{rm_seconds + sum(logp_scoring):.0f}", "as reward_model"),
        }[g]
        print(f"| {g} | {f['correct']}/{f['of']} | {extra[0]} | {extra[1]} |")
    print()
    print(
        f"held-out AUC (liked above disliked): reward model {rm_heldout['rm_heldout_auc']}, "
        f"log-probability under the base model {before['pref_accuracy']}, "
        f"under the shipped candidate {afters.get('shipped', {}).get('pref_accuracy')}"
    )
    print(
        f"{evals} gate evaluations: sampling {sum(sampling):.0f}s, log-probabilities {sum(logp_scoring):.0f}s, "
        f"reward model {sum(rm_scoring):.0f}s (+ {reward_model.seconds:.0f}s training)"
    )

    result = {
        "gates": gate_figures,
        "rm_heldout_auc": rm_heldout["rm_heldout_auc"],
        "logp_heldout_auc": before["pref_accuracy"],
        "logp_heldout_auc_shipped": afters.get("shipped", {}).get("pref_accuracy"),
        "rm_pairs": reward_model.pairs,
        "truth": {
            n: {k: truth[n][k] for k in ("rate", "distinct_2", "nll", "better") if k in truth[n]}
            for n in ["base", *wanted]
        },
        "rm_reward": {"base": before.get("rm_reward"), **{n: afters[n].get("rm_reward") for n in wanted}},
        "data_counts": {
            k: snapshot.counts[k]
            for k in ("train_liked", "train_disliked", "heldout_liked", "heldout_disliked", "train_pairs")
        },
        "train_seconds": train_seconds,
        "simulation_seconds": round(simulated_at - started, 1),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result))


def inverted(data):
    """The same ratings with every verdict turned around: SFT on the disliked replies, KTO and DPO flipped."""
    from training_tasks.trainers import TrainingData

    disliked = [{"prompt": r["prompt"], "completion": r["completion"]} for r in data.kto if not r["label"]]
    return TrainingData(
        sft=disliked,
        kto=[{**r, "label": not r["label"]} for r in data.kto],
        dpo=[{"prompt": p["prompt"], "chosen": p["rejected"], "rejected": p["chosen"]} for p in data.dpo],
        desirable_weight=data.undesirable_weight,
        undesirable_weight=data.desirable_weight,
    )


def nll(model_path: str, samples: list[dict]) -> float:
    """Mean per-token negative log-likelihood of the replies under the base model: word salad scores high."""
    from benchmarks.rlhf import fluency

    value = fluency(model_path, samples)
    return round(-value, 4) if value is not None else float("inf")


if __name__ == "__main__":
    main()
