"""The reward model (TRL's RewardTrainer on the ratings) and the gate option that uses it."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.processes import run_manage
from training_tasks.dataset import Example, HeldOut, heldout_ranking
from training_tasks.gate import GateConfig, gate_decide
from training_tasks.reward import (
    RewardModelConfig,
    reward_heldout_metrics,
    reward_pairs,
    reward_scores,
    train_reward_model,
)
from training_tasks.trainers import TrainingData

PROMPT = "<|system|>You are Brann.<|end|>\n<|player|>{player}: {text}<|end|>\n<|npc|>"
PLAYERS = ["bob", "kim", "luna", "emma"]
TEXTS = ["hi", "where is the forge?", "can you jump?", "tell me about yourself"]
GREETS = ["Well met, {p}.", "Hello, {p}! The forge is warm.", "Welcome back, {p}.", "Good day, {p}. Mind the anvil."]
GRUNTS = ["No.", "Hm. Go away.", "Not now.", "Steel does not lie."]


def prompt(i: int) -> str:
    return PROMPT.format(player=PLAYERS[i % 4], text=TEXTS[(i // 4) % 4])


def ratings(n: int) -> TrainingData:
    """Players liked the greetings and disliked the grunts."""
    kto = []
    for i in range(n):
        kto.append({"prompt": prompt(i), "completion": GREETS[i % 4].format(p=PLAYERS[i % 4]), "label": True})
        kto.append({"prompt": prompt(i + 1), "completion": GRUNTS[i % 4], "label": False})
    return TrainingData(kto=kto)


# --- pure parts ------------------------------------------------------------------------------------


def test_same_prompt_pairs_come_first_and_the_rest_is_capped_without_repeats():
    data = ratings(8)
    data.dpo = [{"prompt": "P", "chosen": "yes", "rejected": "no"}] * 3
    pairs = reward_pairs(data, max_pairs=20, seed=1)
    assert len(pairs) == 20
    assert sum(p == {"chosen": "Pyes", "rejected": "Pno"} for p in pairs) == 3
    cross = [p for p in pairs if p["chosen"] != "Pyes"]
    assert len({(p["chosen"], p["rejected"]) for p in cross}) == 17  # 17 of the 64 liked × disliked, none twice
    assert all(
        "Well met" in p["chosen"] or "Hello" in p["chosen"] or "Welcome" in p["chosen"] or "Good day" in p["chosen"]
        for p in cross
    )
    assert len(reward_pairs(data, max_pairs=1000)) == 3 + 64
    assert reward_pairs(TrainingData(kto=[r for r in data.kto if r["label"]]), max_pairs=10) == []


def test_the_held_out_ranking_is_the_auc_of_liked_over_disliked_with_pairs_counted_in():
    heldout = HeldOut(
        liked=[Example("1", "p", "aaaa", True), Example("2", "p", "aa", True)],
        disliked=[Example("3", "p", "aaa", False), Example("4", "p", "a", False)],
    )

    def by_length(items):
        return [float(len(completion)) for _prompt, completion in items]

    # Liked 4 beats both; liked 2 beats 1 of 2: 3 of 4.
    assert heldout_ranking(by_length, heldout)["auc"] == 0.75
    heldout.pairs = [{"prompt": "p", "chosen": "bb", "rejected": "b"}] * 4
    ranking = heldout_ranking(by_length, heldout)
    assert ranking["pair_accuracy"] == 1.0 and ranking["auc"] == round((3 + 4) / (4 + 4), 4)


def test_with_the_reward_model_on_the_gate_refuses_a_candidate_whose_reward_falls():
    before = {"pref_accuracy": 0.6, "reward_margin": 0.1, "rm_reward": 0.5}
    rises = {"pref_accuracy": 0.7, "reward_margin": 0.3, "rm_reward": 0.9}
    falls = {**rises, "rm_reward": 0.2}
    on = GateConfig(reward_model="on")
    assert gate_decide(before, rises, on) == (True, [])
    passed, reasons = gate_decide(before, falls, on)
    assert not passed and reasons == ["rm_reward did not rise (0.5 → 0.2)"]
    assert gate_decide(before, {**rises, "rm_reward": 0.5}, on)[0] is False  # level is not a rise
    assert gate_decide(before, {**rises, "rm_reward": 0.55}, GateConfig(reward_model="on", rm_min_gain=0.1))[0] is False
    # Off (the default), the reward model's figure is not read; on, a missing one fails closed.
    assert gate_decide(before, falls, GateConfig()) == (True, [])
    assert gate_decide(before, {k: v for k, v in rises.items() if k != "rm_reward"}, on) == (
        False,
        ["no reward-model score to compare on"],
    )


def test_an_unknown_reward_model_setting_is_refused_with_its_name(settings):
    from training_tasks import services

    with pytest.raises(ValueError, match="reward_model='yes please': expected one of off, on"):
        GateConfig(reward_model="yes please")
    settings.VOYAGER_TRAINING = {**settings.VOYAGER_TRAINING, "gate_reward_model": "maybe"}
    with pytest.raises(ImproperlyConfigured, match="VOYAGER_TRAINING: gate reward_model='maybe'"):
        services.gate_config()
    settings.VOYAGER_TRAINING = {**settings.VOYAGER_TRAINING, "gate_reward_model": "on"}
    assert services.gate_config().reward_model == "on"


def test_a_bad_reward_model_variable_stops_the_process(tmp_path):
    result = run_manage("check", VOYAGER_VAR_DIR=str(tmp_path), VOYAGER_TRAINING_GATE_REWARD_MODEL="sometimes")
    assert result.returncode != 0
    assert "VOYAGER_TRAINING_GATE_REWARD_MODEL='sometimes' must be 'off' or 'on'" in result.stderr


# --- on the tiny model -------------------------------------------------------------------------------


def test_the_reward_model_learns_to_rank_liked_replies_above_disliked_ones(tiny_model):
    config = RewardModelConfig(max_pairs=256, epochs=2, learning_rate=2e-3, batch_size=16)
    model = train_reward_model(base_model_path=tiny_model, data=ratings(32), config=config)
    assert model.pairs == 256 and model.loss_curve and model.loss_curve[0]["stage"] == "reward"

    fresh = PROMPT.format(player="noor", text="hello there")
    liked, disliked = reward_scores(model.model, model.tokenizer, [(fresh, "Well met, noor."), (fresh, "Go away.")])
    assert liked > disliked
    heldout = HeldOut(
        liked=[Example(str(i), fresh, GREETS[i].format(p="noor"), True) for i in range(4)],
        disliked=[Example(str(4 + i), fresh, GRUNTS[i], False) for i in range(4)],
    )
    metrics = reward_heldout_metrics(model, heldout)
    assert metrics["rm_heldout_auc"] >= 0.9 and metrics["rm_liked"] > metrics["rm_disliked"]
    # The held-out figure is a ranking: swap the labels and it turns around.
    swapped = HeldOut(liked=heldout.disliked, disliked=heldout.liked)
    assert reward_heldout_metrics(model, swapped)["rm_heldout_auc"] == pytest.approx(1 - metrics["rm_heldout_auc"])


def test_a_reward_model_needs_both_liked_and_disliked_replies(tiny_model):
    only_liked = TrainingData(kto=[r for r in ratings(4).kto if r["label"]])
    with pytest.raises(ValueError, match="both liked and disliked"):
        train_reward_model(base_model_path=tiny_model, data=only_liked)


def test_each_adapter_directory_is_probed_under_an_id_of_its_own():
    # The engine keeps loaded adapters by id: two candidates under one id would both answer as the first.
    from training_tasks.simulation import _probe_id

    first, second = _probe_id("/tmp/candidate-a"), _probe_id("/tmp/candidate-b")
    assert first != second
    assert _probe_id("/tmp/candidate-a") == first
