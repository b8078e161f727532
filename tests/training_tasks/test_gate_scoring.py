"""The gate's held-out scoring: the batched reply log-probabilities equal a plain one-at-a-time forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training_tasks import gate


def one_at_a_time(model, tokenizer, prompt: str, completion: str) -> float:
    """The definition, without batching, padding or shortcuts: full logits, every position."""
    p = tokenizer.encode(prompt, add_special_tokens=False)
    c = tokenizer.encode(completion + tokenizer.eos_token, add_special_tokens=False)
    ids = (p + c)[-512:]
    n = min(len(c), len(ids) - 1)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits.float()[0]
    logp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)
    return float(logp[len(ids) - 1 - n :].mean())


# Lengths that differ (so batches pad, and sorting by length reorders), and one past the 512-token cut.
ITEMS = [
    ("Brann, where is the forge?", "By the river, past the mill."),
    ("hi", "Well met, traveller. What brings you to the square on a day like this one?"),
    ("Tell me everything. " * 60, "No."),
    ("What do you sell?", "Iron picks and shovels, and a sword when the ore allows it."),
    ("?", ""),
]


@pytest.fixture(scope="module")
def scorer(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def adapted(scorer):
    """The same model under a LoRA adapter with random (not zero) weights, as PEFT loads a trained one."""
    from peft import LoraConfig, get_peft_model

    model, _ = scorer
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    return get_peft_model(AutoModelForCausalLM.from_pretrained(model.name_or_path, dtype=torch.float32), config).eval()


@pytest.mark.parametrize("which", ["base", "adapter"])
def test_batched_scores_equal_one_at_a_time_in_the_input_order(scorer, adapted, which, monkeypatch):
    monkeypatch.setattr(gate, "bf16_is_fast", lambda: False)
    base, tokenizer = scorer
    model = base if which == "base" else adapted
    expected = [one_at_a_time(model, tokenizer, p, c) for p, c in ITEMS]
    got = gate.reply_logps(model, tokenizer, ITEMS, batch_size=2)
    assert got == pytest.approx(expected, abs=1e-4)
    # The adapter changes the scores: the test would notice an adapter left out of the forward.
    if which == "adapter":
        plain = gate.reply_logps(base, tokenizer, ITEMS, batch_size=2)
        assert max(abs(a - b) for a, b in zip(got, plain)) > 1e-3


def test_bf16_scoring_stays_close_to_float32(scorer, monkeypatch):
    model, tokenizer = scorer
    monkeypatch.setattr(gate, "bf16_is_fast", lambda: False)
    exact = gate.reply_logps(model, tokenizer, ITEMS)
    monkeypatch.setattr(gate, "bf16_is_fast", lambda: True)
    rounded = gate.reply_logps(model, tokenizer, ITEMS)
    assert rounded != exact
    assert rounded == pytest.approx(exact, abs=0.05)
