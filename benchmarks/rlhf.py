"""Does one nightly run teach a persona what its players like?

On the starter model (built into var/models/starter if missing), scripted
players talk with one persona through the real engine and rate about 2,000
replies by a hidden rule (by default: the reply greets them). One nightly
training run (dataset → SFT/preference → gate → promotion) follows. The
hidden-rule rate is measured on fresh prompts (another seed, nothing stored)
before and after, with the run's wall time and the process's peak RSS.

The benchmark uses its own SQLite database and media directory under a temp
directory, so it leaves the development database alone. The last line of
output is JSON:
``{"preferred_before", "preferred_after", "train_seconds", "peak_rss_mb", ...}``.

    python benchmarks/rlhf.py [--replies 2000] [--eval 400] [--persona brann-smith]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB; the worker's training runs in this process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=2000)
    parser.add_argument("--eval", type=int, default=400, help="fresh prompts for each rate measurement")
    parser.add_argument("--persona", default="brann-smith", help="a persona of inference/corpus/personas.json")
    parser.add_argument("--rule", default="greets", choices=["greets", "by_name"])
    parser.add_argument("--model", default=str(ROOT / "var" / "models" / "starter"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the database and adapters here (default: a temp dir)")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="voyager-rlhf-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "DATABASE_URL": f"sqlite:///{workdir / 'rlhf.sqlite3'}",
            "VOYAGER_MEDIA_ROOT": str(workdir / "media"),
            "VOYAGER_BASE_MODEL": args.model,
            "VOYAGER_AUTO_PROMOTE": "1",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        }
    )
    os.environ.pop("REDIS_URL", None)  # the embedded topology: the task runs here, eagerly

    from inference.starter import build_starter_model

    if not (Path(args.model) / "config.json").is_file():
        print(f"building the starter model into {args.model}", file=sys.stderr)
        build_starter_model(args.model, size="starter", seed=0, log=lambda m: print(m, file=sys.stderr))

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from agents_app.models import Persona, TrainingRun
    from inference.corpus import load_corpus_data
    from training_tasks import simulation
    from training_tasks.tasks import nightly_training

    call_command("migrate", verbosity=0)
    entry = next(p for p in load_corpus_data()["personas"] if p["slug"] == args.persona)
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

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    engine = simulation.load_engine(args.model)
    try:
        before, _ = simulation.rule_rate(
            persona=persona, n=args.eval, seed=10_000 + args.seed, engine=engine, rule=args.rule
        )
        say(f"hidden-rule rate before: {before:.3f}")
        report = simulation.simulate_players(
            persona=persona, replies=args.replies, seed=args.seed, engine=engine, rule=args.rule, log=say
        )
        say(f"simulated {report.replies} rated replies ({report.rate:.1%} liked) in {report.seconds:.0f}s")
    finally:
        engine.stop(drain=False, timeout=30)

    rss_before_training = peak_rss_mb()
    started = time.monotonic()
    nightly_training.delay(min_new_ratings=1)
    train_seconds = time.monotonic() - started
    run = TrainingRun.objects.get(persona=persona)
    say(run.log)
    persona.refresh_from_db()
    adapter = persona.active_adapter
    after = before
    samples = []
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
    result = {
        "persona": persona.slug,
        "rule": args.rule,
        "replies_rated": report.replies,
        "liked_share": round(report.rate, 4),
        "run_status": run.status,
        "method": run.method,
        "stages": run.metrics_after.get("stages"),
        "gate": run.metrics_after.get("gate"),
        "adapter_version": adapter.version if adapter else None,
        "data_counts": {k: run.data_counts.get(k) for k in ("ratings_used", "train_liked", "train_disliked")},
        "pipeline_seconds": run.metrics_after.get("pipeline_seconds"),
        "rss_mb_before_training": round(rss_before_training, 1),
        "preferred_before": round(before, 4),
        "preferred_after": round(after, 4),
        "train_seconds": round(train_seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
