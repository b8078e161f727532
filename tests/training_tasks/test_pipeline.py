"""The nightly pipeline for real: Redis broker, a `celery worker -P solo` process, PostgreSQL, a tiny model.

The worker reads the test database (DATABASE_URL built from this process's
connection) and its own queue, so a worker of another suite on the same Redis
never takes these tasks.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from django.test import override_settings

from agents_app.models import AdapterVersion, Exchange, Npc, Persona, PolicyFlag, Rating, TrainingRun
from inference.prompt import GameContext, PersonaSpec, render_starter
from tests.processes import Worker, needs_backends, wait_for
from training_tasks import services
from training_tasks.gate import GateConfig, diversity_metrics, gate_decide

NIGHT = "2026-11-24"
PLAYERS = ["alice", "bob", "Steve", "kim", "luna", "noor", "Ravi", "emma"]
QUESTIONS = ["hello", "can you jump?", "where is the forge?", "follow me", "tell me about yourself", "bye"]

# --- pure parts: no database -------------------------------------------------------------------


def test_the_gate_refuses_a_candidate_that_ranks_held_out_replies_worse():
    before = {"pref_accuracy": 0.70, "reward_margin": 0.30, "blocked_rate": 0.0, "empty_rate": 0.0}
    worse = {"pref_accuracy": 0.55, "reward_margin": 0.10, "blocked_rate": 0.0, "empty_rate": 0.0}
    better = {"pref_accuracy": 0.80, "reward_margin": 0.50, "blocked_rate": 0.03, "empty_rate": 0.0}
    assert gate_decide(before, worse, GateConfig())[0] is False
    assert gate_decide(before, better, GateConfig()) == (True, [])


def test_the_gate_refuses_a_candidate_that_breaks_the_policy_more_often():
    before = {"pref_accuracy": 0.6, "reward_margin": 0.1, "blocked_rate": 0.0}
    after = {"pref_accuracy": 0.9, "reward_margin": 0.9, "blocked_rate": 0.25}
    passed, reasons = gate_decide(before, after, GateConfig())
    assert not passed and "blocked_rate" in reasons[0]


def test_one_reply_of_difference_is_noise_not_a_reason_to_refuse():
    before = {"pref_accuracy": 0.6, "reward_margin": 0.1, "policy_hit_rate": 0.0, "samples": 10}
    after = {"pref_accuracy": 0.7, "reward_margin": 0.3, "policy_hit_rate": 0.1, "samples": 10}
    assert gate_decide(before, after, GateConfig()) == (True, [])


def test_the_gate_fails_closed_without_held_out_data():
    assert gate_decide({}, {"reward_margin": 1.0}, GateConfig())[0] is False


VARIED = [
    "Well met, bob. The forge is north of the well.",
    "Hm. Steel does not lie.",
    "Aye. [[ACTION:jump]] Twice!",
    "I know the old mine. Head east, kim.",
    "See you, luna. Mind the anvil.",
    "Not today. Hot iron waits for nobody.",
]
COLLAPSED = ["See you, bob.", "See you, kim.", "See you, luna.", "See you, bob.", "See you, emma.", "See you, kim."]


def test_diversity_counts_one_reply_to_different_players_as_one_reply():
    varied = diversity_metrics(VARIED, ["bob", "kim", "luna", "emma"])
    collapsed = diversity_metrics(COLLAPSED, ["bob", "kim", "luna", "emma"])
    assert varied["distinct_replies"] == 1.0 and collapsed["distinct_replies"] == round(1 / 6, 4)
    assert collapsed["distinct_openings"] == round(1 / 6, 4) and collapsed["distinct_2"] == 0.1667
    assert varied["distinct_2"] > 0.9
    # Without the names, the collapse hides behind them.
    assert diversity_metrics(COLLAPSED)["distinct_replies"] == round(4 / 6, 4)


def test_the_gate_refuses_a_candidate_whose_replies_collapsed_even_if_it_ranks_better():
    names = ["bob", "kim", "luna", "emma"]
    before = {"pref_accuracy": 0.6, "reward_margin": 0.1, **diversity_metrics(VARIED, names)}
    after = {"pref_accuracy": 0.9, "reward_margin": 0.9, **diversity_metrics(COLLAPSED, names)}
    passed, reasons = gate_decide(before, after, GateConfig())
    assert not passed and any("distinct_2 fell" in r for r in reasons)
    assert any("distinct_openings fell" in r for r in reasons)
    slightly_less = {**after, **{k: before[k] * 0.8 for k in ("distinct_2", "distinct_replies", "distinct_openings")}}
    assert gate_decide(before, slightly_less, GateConfig(diversity_drop=0.25)) == (True, [])
    assert gate_decide(before, slightly_less, GateConfig(diversity_drop=0.1))[0] is False


def test_the_gate_refuses_word_salad_that_looks_diverse():
    """Degenerate text is very 'diverse': the active version's log-probability of it tells."""
    before = {"pref_accuracy": 0.6, "reward_margin": 0.1, "distinct_2": 0.25, "reference_logp": -0.9}
    salad = {"pref_accuracy": 0.9, "reward_margin": 1.5, "distinct_2": 0.42, "reference_logp": -2.6}
    learned = {**salad, "reference_logp": -1.15}
    passed, reasons = gate_decide(before, salad, GateConfig())
    assert not passed and reasons == [
        "reference_logp fell from -0.9 to -2.6: replies drifted from what the persona says"
    ]
    assert gate_decide(before, learned, GateConfig()) == (True, [])


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def media(tmp_path, tiny_model):
    with override_settings(MEDIA_ROOT=str(tmp_path / "media"), VOYAGER_BASE_MODEL=str(tiny_model)):
        yield tmp_path / "media"


def blacksmith(owner) -> Persona:
    return Persona.objects.create(
        slug="brann",
        name="Brann",
        system_prompt="You are the village blacksmith.",
        traits=["gruff"],
        owner=owner,
        allowed_actions=["say", "jump", "face", "follow", "stop_following", "move", "give"],
    )


GREETS = ["Well met", "Hello", "Welcome back", "Good day", "Greetings", "Hail"]
TAILS = [
    "Steel does not lie.",
    "Mind the anvil.",
    "Hot iron waits for nobody.",
    "The forge is warm.",
    "Bring me ore.",
    "Good steel takes time.",
    "Come back tomorrow.",
    "The bellows need mending.",
]


def seed_ratings(persona: Persona, n: int = 120, liked: str = "{greet}, {player}. {tail}") -> list:
    """Rated exchanges whose prompts are rendered the way the engine renders them.

    Varied replies, as players get: the dataset keeps few copies of one reply, and the gate
    refuses a candidate that answers everything the same way.
    """
    npc = Npc.objects.create(world_id=f"sim-{persona.slug}-{uuid.uuid4().hex[:6]}", persona=persona)
    spec = PersonaSpec(
        persona.slug, persona.name, persona.system_prompt, tuple(persona.traits), actions=tuple(persona.allowed_actions)
    )
    ratings = []
    for i in range(n):
        player, question = PLAYERS[i % len(PLAYERS)], QUESTIONS[(i // len(PLAYERS)) % len(QUESTIONS)]
        good = i % 3 == 0
        tail = TAILS[(i // 3) % len(TAILS)]
        greet = GREETS[(i // 3) % len(GREETS)]
        raw = (
            liked.format(player=player, greet=greet, tail=tail) if good else f"{['No.', 'Hm.', 'Fine.'][i % 3]} {tail}"
        )
        exchange = Exchange.objects.create(
            npc=npc,
            persona=persona,
            source=Exchange.Source.SIMULATION,
            player_name=player,
            player_text=question,
            prompt=render_starter(spec, [], GameContext(), player, f"{question} ({i})"),
            raw_text=raw,
            reply_text=raw,
        )
        ratings.append(Rating.objects.create(exchange=exchange, player_name=player, score=1 if good else -1))
    return ratings


def register_active_adapter(persona: Persona, media: Path, tiny_model: Path) -> AdapterVersion:
    """An uploaded v1, live before any training: what every failure must leave alone."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from inference.lora import WEIGHTS_FILE, file_sha256

    out = media / "adapters" / persona.slug / "upload-v1"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    model.save_pretrained(out)
    adapter = AdapterVersion.objects.create(
        persona=persona,
        version=1,
        files_path=str(out.relative_to(media)),
        sha256=file_sha256(out / WEIGHTS_FILE),
        base_model_id=services.base_model_id(),
        rank=4,
        target_modules=["q_proj"],
        size_bytes=(out / WEIGHTS_FILE).stat().st_size,
        status=AdapterVersion.Status.ACTIVE,
    )
    persona.active_adapter = adapter
    persona.save()
    return adapter


@pytest.fixture
def start_worker(media, tiny_model, tmp_path):
    workers = []

    def start(**env) -> Worker:
        worker = Worker(media, tiny_model, tmp_path / f"worker-{len(workers)}.log", **env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill()
        worker.forget_queue()


def finished(run_pk: int):
    run = TrainingRun.objects.get(pk=run_pk)
    return run if run.status in services.TERMINAL else None


def temp_dirs(media: Path, persona: Persona) -> list[str]:
    root = media / "adapters" / persona.slug
    return sorted(p.name for p in root.glob(".tmp-*")) if root.exists() else []


# --- the pipeline through a real worker ---------------------------------------------------------


@needs_backends
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_nightly_task_trains_gates_promotes_and_tells_the_workers(alice, start_worker, media, tiny_model):
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from inference.worker import WORKERS_GROUP
    from training_tasks.tasks import nightly_training, train_persona

    persona = blacksmith(alice)
    v1 = register_active_adapter(persona, media, tiny_model)
    ratings = seed_ratings(persona)
    hidden = ratings[3].exchange  # a moderator keeps this one out
    hidden.excluded_from_training = True
    hidden.save()
    flagged = ratings[4].exchange
    PolicyFlag.objects.create(exchange=flagged, rule="action_not_allowed", status=PolicyFlag.Status.CONFIRMED)
    quiet = Persona.objects.create(slug="quiet", name="Quiet", owner=alice)  # no ratings: no run
    layer = get_channel_layer()
    listener = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(WORKERS_GROUP, listener)

    worker = start_worker(VOYAGER_TRAINING_SFT_EPOCHS="2")  # a candidate the gate can tell from v1
    worker.send(nightly_training, night=NIGHT, min_new_ratings=20)
    run = wait_for(lambda: TrainingRun.objects.filter(persona=persona).first(), worker, what="the nightly fan-out")
    run = wait_for(lambda: finished(run.pk), worker, timeout=240)

    assert run.status == TrainingRun.Status.SUCCEEDED, f"{run.status}: {run.error}\n{run.log}"
    assert not TrainingRun.objects.filter(persona=quiet).exists()
    persona.refresh_from_db()
    v1.refresh_from_db()
    v2 = persona.active_adapter
    assert v2.version == 2 and v2.status == "active" and v2.source == "training" and run.produced_version == v2
    assert v1.status == "retired" and run.base_adapter == v1
    assert (v2.absolute_path / "adapter_model.safetensors").is_file() and temp_dirs(media, persona) == []
    from inference.lora import file_sha256

    assert file_sha256(v2.absolute_path / "adapter_model.safetensors") == v2.sha256
    assert hidden.ratings.get().pk not in run.rating_ids and ratings[4].pk not in run.rating_ids
    assert set(run.rating_ids) <= {r.pk for r in ratings}
    assert run.method == "kto" and run.metrics_after["stages"] == ["sft", "kto"]
    assert run.loss_curve and run.metrics_before["pref_accuracy"] is not None
    assert (
        run.metrics_after["gate"]["passed"] and run.metrics_after["reward_margin"] > run.metrics_before["reward_margin"]
    )
    # The diversity and drift the gate compared are on the run, before and after, for moderators to read.
    shown = {"distinct_2", "distinct_openings", "distinct_replies", "reference_logp", "samples"}
    assert shown <= run.metrics_before.keys() and shown <= run.metrics_after.keys()
    warm = async_to_sync(layer.receive)(listener)
    assert warm == {
        "type": "inference.adapter_activated",
        "adapter": {"id": v2.pk, "version": 2, "path": str(v2.absolute_path), "sha256": v2.sha256},
    }

    # The same night again, and the same run again: nothing new.
    worker.send(nightly_training, night=NIGHT, min_new_ratings=20)
    worker.send(train_persona, run.pk)
    time.sleep(3)
    assert TrainingRun.objects.filter(persona=persona).count() == 1
    assert AdapterVersion.objects.filter(persona=persona).count() == 2
    assert TrainingRun.objects.get(pk=run.pk).finished_at == run.finished_at


@needs_backends
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_one_run_per_persona_at_a_time(alice, start_worker, media):
    from training_tasks.tasks import train_persona

    persona = blacksmith(alice)
    seed_ratings(persona)
    run = TrainingRun.objects.create(persona=persona, night=NIGHT)
    worker = start_worker()
    with services.persona_training_lock(persona.pk) as got:  # another run holds the persona
        assert got
        worker.send(train_persona, run.pk)
        wait_for(lambda: "PersonaBusy" in worker.output() or "Retry" in worker.output(), worker, what="a busy retry")
        time.sleep(1)
        run.refresh_from_db()
        assert run.status == TrainingRun.Status.QUEUED and run.started_at is None
        assert temp_dirs(media, persona) == []
    # Released: the retry (2 s later here) runs it, once, to a verdict (the gate's on the tiny
    # model is not this test's business: test_the_nightly_task_trains_gates_promotes... checks it).
    run = wait_for(lambda: finished(run.pk), worker, timeout=240)
    verdicts = (TrainingRun.Status.SUCCEEDED, TrainingRun.Status.GATE_REJECTED)
    assert run.status in verdicts, f"{run.status}: {run.error}\n{run.log}"
    assert run.log.count("dataset:") == 1
    assert run.metrics_after["gate"]["passed"] == (run.status == TrainingRun.Status.SUCCEEDED)


@needs_backends
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_training_leaves_the_active_version_and_the_next_run_cleans_up(
    alice, start_worker, media, tiny_model
):
    from training_tasks.tasks import train_persona

    persona = blacksmith(alice)
    v1 = register_active_adapter(persona, media, tiny_model)
    seed_ratings(persona)  # the nightly test's ratings: the run after the crash must pass the same gate
    run = TrainingRun.objects.create(persona=persona, night=NIGHT)
    slow = start_worker(VOYAGER_TRAINING_SFT_EPOCHS="400")
    slow.send(train_persona, run.pk)
    wait_for(lambda: "sft step" in TrainingRun.objects.get(pk=run.pk).log, slow, timeout=120, what="training")
    # The admin follows the run from another process: stage and percent move while it trains.
    seen = TrainingRun.objects.get(pk=run.pk).progress
    moving = wait_for(
        lambda: (r := TrainingRun.objects.get(pk=run.pk)).progress > seen and r, slow, timeout=60, what="progress"
    )
    assert moving.stage == "training" and 25 <= seen < moving.progress < 85
    slow.kill()

    run.refresh_from_db()
    persona.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING
    assert persona.active_adapter == v1 and AdapterVersion.objects.get(pk=v1.pk).status == "active"
    assert AdapterVersion.objects.filter(persona=persona).count() == 1
    leftovers = temp_dirs(media, persona)
    assert leftovers, "the dead run's temp directory should be there until the next run"

    fresh = start_worker(VOYAGER_TRAINING_SFT_EPOCHS="2")  # a candidate the gate can tell from v1
    fresh.send(train_persona, run.pk)
    run = wait_for(lambda: finished(run.pk), fresh, timeout=240)
    assert run.status == TrainingRun.Status.SUCCEEDED, f"{run.status}: {run.error}\n{run.log}"
    assert (run.stage, run.progress) == ("", 100)
    assert "previous attempt died" in run.log and all(name in run.log for name in leftovers)
    assert temp_dirs(media, persona) == []
    persona.refresh_from_db()
    assert persona.active_adapter.version == 2 and AdapterVersion.objects.get(pk=v1.pk).status == "retired"


@needs_backends
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_gate_refuses_a_candidate_that_learned_a_forbidden_action(alice, start_worker, media):
    """Players loved the NPC dancing; the policy forbids it: the candidate must not go live."""
    from training_tasks.tasks import train_persona

    persona = blacksmith(alice)
    seed_ratings(persona, n=150, liked="[[ACTION:dance wildly]] Ha! {tail}")
    run = TrainingRun.objects.create(persona=persona, night=NIGHT)
    # Long enough for the tiny model to learn the markup whole ("[[ACTION:" is many of its tokens).
    worker = start_worker(VOYAGER_TRAINING_SFT_EPOCHS="24")
    worker.send(train_persona, run.pk)
    run = wait_for(lambda: finished(run.pk), worker, timeout=240)

    assert run.status == TrainingRun.Status.GATE_REJECTED, f"{run.status}: {run.error}\n{run.log}"
    reasons = run.metrics_after["gate"]["reasons"]
    assert any("blocked_rate" in reason for reason in reasons), (run.metrics_before, run.metrics_after)
    persona.refresh_from_db()
    assert persona.active_adapter is None and not AdapterVersion.objects.filter(persona=persona).exists()
    assert run.produced_version is None and temp_dirs(media, persona) == []


@needs_backends
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_with_the_reward_model_on_the_run_trains_one_and_gates_on_its_scores(alice, start_worker, media):
    from training_tasks.tasks import train_persona

    persona = blacksmith(alice)
    seed_ratings(persona)
    run = TrainingRun.objects.create(persona=persona, night=NIGHT)
    worker = start_worker(VOYAGER_TRAINING_GATE_REWARD_MODEL="on")
    worker.send(train_persona, run.pk)
    run = wait_for(lambda: finished(run.pk), worker, timeout=240)

    assert run.status in (TrainingRun.Status.SUCCEEDED, TrainingRun.Status.GATE_REJECTED), f"{run.error}\n{run.log}"
    assert "reward model:" in run.log
    figures = run.metrics_after["reward_model"]
    assert figures["rm_pairs"] > 0 and 0.0 <= figures["rm_heldout_auc"] <= 1.0
    before, after = run.metrics_before["rm_reward"], run.metrics_after["rm_reward"]
    refused_on_reward = any(r.startswith("rm_reward did not rise") for r in run.metrics_after["gate"]["reasons"])
    assert refused_on_reward == (after <= before)
