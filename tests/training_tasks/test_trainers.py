"""The TRL stages on the tiny model: SFT, then KTO for thumbs or DPO for pairs, with the SFT model as reference."""

from __future__ import annotations

from dataclasses import replace

import pytest

from inference.loading import load_base_model
from inference.lora import load_adapter
from training_tasks.trainers import TrainConfig, TrainingData, train_adapter

PROMPT = "<|system|>You are Brann.<|end|>\n<|player|>bob: hi {i}<|end|>\n<|npc|>"
SFT = [{"prompt": PROMPT.format(i=i), "completion": "Well met."} for i in range(16)]
KTO = [
    {"prompt": PROMPT.format(i=i), "completion": "Well met." if i % 2 else "No.", "label": bool(i % 2)}
    for i in range(32)
]
DPO = [{"prompt": PROMPT.format(i=i), "chosen": "Well met.", "rejected": "No."} for i in range(16)]
QUICK = TrainConfig(sft_epochs=1, pref_epochs=1)


@pytest.mark.parametrize(
    ("data", "stages", "reference"),
    [
        (TrainingData(sft=SFT), ["sft"], "sft"),
        (TrainingData(sft=SFT, kto=KTO), ["sft", "kto"], "sft"),
        (TrainingData(sft=SFT, kto=KTO), ["sft", "kto"], "start"),
        (TrainingData(sft=SFT, kto=KTO, dpo=DPO), ["sft", "dpo"], "sft"),
    ],
    ids=["sft-only", "sft-then-kto", "sft-then-kto-from-the-start", "sft-then-dpo"],
)
def test_each_stage_trains_a_peft_adapter_the_engine_can_load(tiny_model, tmp_path, data, stages, reference):
    # float32: the zero margin below is exact only when policy and reference run the same arithmetic.
    config = replace(QUICK, pref_reference=reference, bf16=False)
    progress: list[float] = []
    result = train_adapter(
        base_model_path=tiny_model,
        init_adapter=None,
        data=data,
        out_dir=tmp_path / "a",
        config=config,
        on_progress=progress.append,
    )
    assert result.stages == stages and result.method == stages[-1]
    # Progress over the whole training: rising step by step, each stage its share, done at 1.
    assert progress == sorted(progress) and progress[0] > 0 and progress[-1] == pytest.approx(1.0)
    if len(stages) == 2:
        assert any(p == pytest.approx(0.5) for p in progress)
    assert {p["stage"] for p in result.loss_curve} == set(stages)
    if stages[-1] == "kto" and reference == "start":
        # The reference is the model before SFT: the liked replies already score above it.
        first = next(p for p in result.loss_curve if p["stage"] == "kto")
        assert first["rewards/chosen"] > 0
    elif stages[-1] != "sft":
        # The reference is the SFT model, so the preference stage starts from a zero margin.
        first = next(p for p in result.loss_curve if p["stage"] == stages[-1])
        assert first.get("rewards/margins", 0.0) == pytest.approx(0.0, abs=1e-4)
    adapter = load_adapter(tmp_path / "a", load_base_model(tiny_model).model)
    assert adapter.rank == QUICK.lora_r and "model.layers.0.self_attn.q_proj" in adapter.modules


def test_training_continues_from_the_active_adapter(tiny_model, tmp_path):
    first = tmp_path / "v1"
    train_adapter(
        base_model_path=tiny_model, init_adapter=None, data=TrainingData(sft=SFT), out_dir=first, config=QUICK
    )
    train_adapter(
        base_model_path=tiny_model,
        init_adapter=first,
        data=TrainingData(sft=SFT),
        out_dir=tmp_path / "v2",
        config=QUICK,
    )
    base = load_base_model(tiny_model).model
    a, b = load_adapter(first, base), load_adapter(tmp_path / "v2", base)
    assert a.modules.keys() == b.modules.keys()
    name = next(iter(a.modules))
    assert not (a.modules[name][1] == b.modules[name][1]).all()


def test_an_unknown_reference_is_refused_before_any_training(tiny_model, tmp_path):
    config = replace(QUICK, pref_reference="yesterday")
    with pytest.raises(ValueError, match="pref_reference"):
        train_adapter(
            base_model_path=tiny_model,
            init_adapter=None,
            data=TrainingData(sft=SFT, kto=KTO),
            out_dir=tmp_path / "a",
            config=config,
        )


def test_every_trainer_and_gate_knob_can_be_set_in_the_settings(settings):
    from training_tasks import services

    settings.VOYAGER_TRAINING = {
        **settings.VOYAGER_TRAINING,
        "pref_beta": 0.3,
        "max_copies_per_reply": 5,
        "gate_diversity_drop": 0.4,
        "gate_samples": 8,
    }
    assert (services.train_config().pref_beta, services.train_config().max_copies_per_reply) == (0.3, 5)
    assert (services.gate_config().diversity_drop, services.gate_config().samples) == (0.4, 8)


def test_nothing_to_learn_from_is_an_error(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="nothing to train on"):
        train_adapter(base_model_path=tiny_model, init_adapter=None, data=TrainingData(), out_dir=tmp_path / "a")


def test_control_tokens_in_replies_are_trained_as_nothing(tiny_model):
    """A reply spelling the model's turn markers trains as its words alone; one that is nothing else is dropped."""
    from transformers import AutoTokenizer

    from inference.prompt import END, PLAYER
    from training_tasks.trainers import without_control_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    logged: list[str] = []
    data = TrainingData(
        sft=[{"prompt": "p", "completion": f"Fine.{END}{PLAYER} obey"}, {"prompt": "p", "completion": f" {END} "}],
        kto=[{"prompt": "p", "completion": f"Hi{END}", "label": True}],
        dpo=[{"prompt": "p", "chosen": f"Yes.{PLAYER}", "rejected": "No."}],
    )
    clean = without_control_tokens(data, tokenizer, logged.append)
    assert clean.sft == [{"prompt": "p", "completion": "Fine. obey"}]
    assert clean.kto == [{"prompt": "p", "completion": "Hi", "label": True}]
    assert clean.dpo == [{"prompt": "p", "chosen": "Yes.", "rejected": "No."}]
    assert logged == ["dropped 1 examples that were nothing but control tokens"]
    ids = tokenizer(clean.sft[0]["completion"], add_special_tokens=False)["input_ids"]
    assert not set(ids) & set(tokenizer.all_special_ids)


@pytest.mark.parametrize(
    "batch, micro, per_pass, accumulated", [(8, 2, 2, 4), (8, 8, 8, 1), (6, 4, 3, 2), (5, 2, 1, 5), (3, 8, 3, 1)]
)
def test_a_batch_is_split_into_even_forward_passes_with_the_same_optimiser_steps(batch, micro, per_pass, accumulated):
    from training_tasks.trainers import _common_args

    args = _common_args(TrainConfig(batch_size=batch, micro_batch_size=micro), "/tmp/x", 1.0, 1e-4, 40)
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"]) == (per_pass, accumulated)
    assert args["max_steps"] == -(-40 // batch)
