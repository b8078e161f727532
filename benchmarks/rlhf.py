"""Does one nightly run teach a persona what its players like?

On the real default model (converted if missing) with the persona's world
adapter active (trained once, then cached), scripted players talk with one
persona through the real engine and rate about 2,000 replies by a hidden rule
(by default ``brief_concrete``: at most two sentences, naming a place or an
item of the world), and start arena battles (``--battles``: two samples of the
persona's version answer the same words; the players vote by the same rule),
whose same-prompt votes are the DPO stage's pairs. One nightly training run
(dataset → SFT/preference → gate, the probe set included → promotion) follows. The
hidden-rule rate is measured on fresh prompts (another seed, nothing stored)
before and after, with the run's wall time and the process's peak RSS.

Diversity is measured on the same fresh replies (``training_tasks.gate.
diversity_metrics``, players' names masked): ``distinct_before`` and
``distinct_after`` are distinct-2 (distinct word bigrams / all bigrams), with
the share of distinct openings and distinct replies next to them; ``fluency_*``
is the replies' mean per-token log-probability under the base model (word
salad is "diverse" too: this is what tells it apart).

The benchmark uses its own SQLite database and media directory under a temp
directory, so it leaves the development database alone. The last line of
output is JSON:
``{"preferred_before", "preferred_after", "distinct_before", "distinct_after",
"train_seconds", "peak_rss_mb", ...}``.

    python benchmarks/rlhf.py [--replies 2000] [--eval 400] [--persona brann-smith]
    python benchmarks/rlhf.py --model var/models/starter   # the starter model (rule: greets), in minutes

To compare training settings on the same ratings, simulate once and reuse:
``--ratings-cache DIR`` keeps the rated database and the "before" figures in
DIR (made on the first run, copied on the next), and ``--set KEY=VALUE``
overrides a knob of ``VOYAGER_TRAINING`` (any ``TrainConfig`` field, or
``gate_<GateConfig field>``) for this run only. train_seconds stays comparable;
peak_rss_mb is the process's peak when the nightly run returns: on a reused run it leaves out
the simulation (``--simulate-only`` fills the cache and stops, so the next run's peak is the
nightly run's own); ``peak_rss_mb_with_eval`` adds the "after" measurement's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REAL = Path(os.environ.get("VOYAGER_BASE_MODEL") or ROOT / "var" / "models" / "smollm2-135m-instruct")
STARTER = ROOT / "var" / "models" / "starter"


def peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB; the worker's training runs in this process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup_embedded(workdir: Path, model: str, env: dict[str, str] | None = None) -> None:
    """Django on a SQLite database in ``workdir``, the embedded topology (tasks run here, eagerly),
    the base model built from the repository's data when ``model`` has none yet, and migrated."""
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "DATABASE_URL": f"sqlite:///{workdir / 'rlhf.sqlite3'}",
            "VOYAGER_MEDIA_ROOT": str(workdir / "media"),
            "VOYAGER_BASE_MODEL": model,
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
            **(env or {}),
        }
    )
    os.environ.pop("REDIS_URL", None)

    from inference.gguf_import import ensure_default_model
    from inference.starter import build_starter_model

    if is_starter(model) and not (Path(model) / "config.json").is_file():
        print(f"building the starter model into {model}", file=sys.stderr)
        build_starter_model(model, size="starter", seed=0, log=lambda m: print(m, file=sys.stderr))
    elif not is_starter(model):
        ensure_default_model(model, log=lambda m: print(m, file=sys.stderr))

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def is_starter(model: str) -> bool:
    return Path(model).resolve() == STARTER.resolve()


def bench_persona(slug: str, model: str):
    """The corpus persona ``slug``, created with a benchmark owner the first time. On a real model it
    starts where players meet it: with the world adapter (trained once, then cached) active."""
    from django.contrib.auth import get_user_model

    from agents_app.models import Persona
    from inference.corpus import load_corpus_data

    entry = next(p for p in load_corpus_data()["personas"] if p["slug"] == slug)
    owner, _ = get_user_model().objects.get_or_create(username="bench-owner")
    persona, _ = Persona.objects.get_or_create(
        slug=entry["slug"],
        defaults={
            "name": entry["name"],
            "system_prompt": entry["system_prompt"],
            "traits": entry["traits"],
            "owner": owner,
            "allowed_actions": ["say", "jump", "face", "follow", "stop_following", "move", "give"],
        },
    )
    if not is_starter(model) and persona.active_adapter_id is None:
        from training_tasks.domain import ensure_world_adapter
        from training_tasks.promotion import domain_adapter_install
        from training_tasks.services import base_model_id

        adapter_dir = ensure_world_adapter(Path(model), log=lambda m: print(m, file=sys.stderr))
        domain_adapter_install(persona=persona, adapter_dir=adapter_dir, base_model_id=base_model_id())
        persona.refresh_from_db()
    return persona


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=2000)
    parser.add_argument("--eval", type=int, default=400, help="fresh prompts for each rate measurement")
    parser.add_argument(
        "--battles", type=int, default=400, help="arena battles the players vote in (0: none, and no DPO stage)"
    )
    parser.add_argument("--persona", default="brann-smith", help="a persona of inference/corpus/personas.json")
    parser.add_argument(
        "--rule",
        choices=["brief_concrete", "greets", "by_name"],
        help="default: brief_concrete (greets on the starter)",
    )
    parser.add_argument(
        "--model", default=str(REAL), help=f"the base model (default: the real one; {STARTER} for the starter)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the database and adapters here (default: a temp dir)")
    parser.add_argument("--ratings-cache", help="simulate once into this folder, reuse it on later runs")
    parser.add_argument(
        "--simulate-only", action="store_true", help="fill --ratings-cache and stop (the run's own peak RSS, later)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a VOYAGER_TRAINING knob"
    )
    args = parser.parse_args()
    args.rule = args.rule or ("greets" if is_starter(args.model) else "brief_concrete")
    if args.simulate_only and not args.ratings_cache:
        parser.error("--simulate-only needs --ratings-cache")
    overrides = dict(_parse_knob(item) for item in args.set)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="voyager-rlhf-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cache = Path(args.ratings_cache) if args.ratings_cache else None
    cached = cache is not None and (cache / "before.json").is_file()
    if cached:
        shutil.copyfile(cache / "rlhf.sqlite3", workdir / "rlhf.sqlite3")
        # The persona's adapter versions (the world adapter on a real model) live beside the database.
        if (cache / "media").is_dir():
            shutil.copytree(cache / "media", workdir / "media", dirs_exist_ok=True)
    setup_embedded(workdir, args.model, {"VOYAGER_AUTO_PROMOTE": "1"})
    from django.conf import settings

    from agents_app.models import TrainingRun
    from training_tasks import simulation
    from training_tasks.gate import diversity_metrics
    from training_tasks.tasks import nightly_training

    settings.VOYAGER_TRAINING.update(overrides)
    persona = bench_persona(args.persona, args.model)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if cached:
        saved = json.loads((cache / "before.json").read_text())
        before, before_samples, report = (
            saved["before"],
            saved["samples"],
            simulation.SimulationReport(**saved["report"]),
        )
        say(f"reusing {report.replies} rated replies and the 'before' figures from {cache}")
    else:
        engine = simulation.load_engine(args.model)
        try:
            # "Before" is what players meet today: the persona's active version (the world adapter on a real model).
            active = persona.active_adapter
            before, before_samples = simulation.rule_rate(
                persona=persona,
                n=args.eval,
                seed=10_000 + args.seed,
                engine=engine,
                rule=args.rule,
                adapter_path=str(active.absolute_path) if active else None,
            )
            say(f"hidden-rule rate before: {before:.3f}")
            report = simulation.simulate_players(
                persona=persona, replies=args.replies, seed=args.seed, engine=engine, rule=args.rule, log=say
            )
            say(f"simulated {report.replies} rated replies ({report.rate:.1%} liked) in {report.seconds:.0f}s")
            if args.battles:
                fought = simulation.simulate_battles(
                    persona=persona, battles=args.battles, seed=args.seed, engine=engine, rule=args.rule, log=say
                )
                say(f"simulated {fought.replies} battles ({fought.liked} with a winner) in {fought.seconds:.0f}s")
        finally:
            engine.stop(drain=False, timeout=30)
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            from django.db import connection

            connection.close()
            shutil.copyfile(workdir / "rlhf.sqlite3", cache / "rlhf.sqlite3")
            if (workdir / "media").is_dir():
                shutil.copytree(workdir / "media", cache / "media", dirs_exist_ok=True)
            saved = {"before": before, "samples": before_samples, "report": report.__dict__}
            (cache / "before.json").write_text(json.dumps(saved))
    if args.simulate_only:
        say(f"ratings and 'before' figures saved in {cache}")
        return

    rss_before_training = peak_rss_mb()
    started = time.monotonic()
    nightly_training.delay(min_new_ratings=1)
    train_seconds = time.monotonic() - started
    # The nightly run's own peak (a reused cache leaves the simulation out); measuring "after" adds its own.
    rss_run = peak_rss_mb()
    run = TrainingRun.objects.get(persona=persona)
    say(run.log)
    # The run's candidate, whether it went live at once or is on trial as the canary.
    adapter = run.produced_version
    after, samples = before, before_samples
    if adapter is not None:
        after, samples = simulation.rule_rate(
            persona=persona,
            n=args.eval,
            seed=10_000 + args.seed,
            adapter_path=str(adapter.absolute_path),
            rule=args.rule,
        )
    for sample in samples[:8]:
        say(f"  {sample['player']}: {sample['text']!r} -> {sample['reply']!r}")
    names = simulation.scripted_players(0)
    div_before = diversity_metrics([x["reply"] for x in before_samples], names)
    div_after = diversity_metrics([x["reply"] for x in samples], names)
    fluency_before, fluency_after = fluency(args.model, before_samples), fluency(args.model, samples)
    gate_figures = (
        "pref_accuracy",
        "reward_margin",
        "distinct_2",
        "distinct_replies",
        "distinct_openings",
        "reference_logp",
    )
    result = {
        "model": args.model,
        "persona": persona.slug,
        "rule": args.rule,
        "replies_rated": report.replies,
        "liked_share": round(report.rate, 4),
        "run_status": run.status,
        "method": run.method,
        "stages": run.metrics_after.get("stages"),
        "gate": run.metrics_after.get("gate"),
        "adapter_version": adapter.version if adapter else None,
        "knobs": overrides,
        "data_counts": {
            k: run.data_counts.get(k)
            for k in ("ratings_used", "train_liked", "train_disliked", "train_pairs", "pairwise_votes")
        },
        "probes_before": {k: v for k, v in (run.metrics_before.get("probes") or {}).items() if k != "failed"},
        "probes_after": {k: v for k, v in (run.metrics_after.get("probes") or {}).items() if k != "failed"},
        "gate_before": {k: run.metrics_before.get(k) for k in gate_figures},
        "gate_after": {k: run.metrics_after.get(k) for k in gate_figures},
        "pipeline_seconds": run.metrics_after.get("pipeline_seconds"),
        "rss_mb_before_training": round(rss_before_training, 1),
        "distinct_openings_before": div_before["distinct_openings"],
        "distinct_openings_after": div_after["distinct_openings"],
        "distinct_replies_before": div_before["distinct_replies"],
        "distinct_replies_after": div_after["distinct_replies"],
        "fluency_before": fluency_before,
        "fluency_after": fluency_after,
        "preferred_before": round(before, 4),
        "preferred_after": round(after, 4),
        "distinct_before": div_before["distinct_2"],
        "distinct_after": div_after["distinct_2"],
        "train_seconds": round(train_seconds, 1),
        "peak_rss_mb": round(rss_run, 1),
        "peak_rss_mb_with_eval": round(peak_rss_mb(), 1),
    }
    print(json.dumps(result))


def fluency(model_path: str, samples: list[dict]) -> float | None:
    """Mean per-token log-probability of the replies under the base model: word salad scores low."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training_tasks.gate import reply_logps

    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, local_files_only=True).eval()
    logps = reply_logps(model, tokenizer, [(x["prompt"], x["raw"]) for x in samples if x.get("prompt")])
    return round(sum(logps) / len(logps), 4) if logps else None


def _parse_knob(item: str) -> tuple[str, object]:
    key, sep, raw = item.partition("=")
    if not sep:
        raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


if __name__ == "__main__":
    main()
