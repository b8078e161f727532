"""Lower-precision base weights: close to float32, LoRA still in full precision."""

from __future__ import annotations

import pytest
import torch

from inference.batched_lora import LoraBank
from inference.corpus import generate_dialogues
from inference.engine import AdapterRef, Result
from inference.loading import load_base_model, weight_dtype
from inference.prompt import build_prompt
from inference.runner import DecoderRunner

from .helpers import Collector, request

# The bound the bfloat16 path is held to: next-token distributions within this KL of float32's.
MAX_KL = 0.02


def last_logits(model_dir, dtype, prompts):
    loaded = load_base_model(model_dir, dtype=dtype)
    with torch.inference_mode():
        return DecoderRunner(loaded.model, len(prompts), 512).prefill(0, prompts).float()


def test_bfloat16_next_token_distributions_stay_close_to_float32_on_the_real_model(real_model_dir, real_tokenizer):
    prompts = [
        build_prompt(real_tokenizer, d.persona, d.memory, d.context, d.player, d.text, 400).input_ids
        for d in generate_dialogues(8, seed=3)
    ]
    full, half = (
        last_logits(real_model_dir, torch.float32, prompts),
        last_logits(real_model_dir, torch.bfloat16, prompts),
    )
    p, q = torch.log_softmax(full, -1), torch.log_softmax(half, -1)
    kl = (p.exp() * (p - q)).sum(-1)
    assert kl.max() < MAX_KL, kl
    assert (full.argmax(-1) == half.argmax(-1)).sum() >= 7  # greedy picks the same next token almost always


def test_with_bfloat16_weights_lora_stays_float32_and_still_acts(make_engine, adapter_factory, tiny_model_dir):
    ref = AdapterRef(id=1, version=1, path=str(adapter_factory("bf16", seed=5)))
    engine = make_engine(tiny_model_dir, weights=torch.bfloat16)
    collector = Collector()
    engine.submit(request("with", adapter=ref, max_tokens=12, ignore_eos=True), collector)
    engine.submit(request("without", max_tokens=12, ignore_eos=True), collector)
    results = collector.wait(["with", "without"])
    assert all(isinstance(r, Result) and r.completion_tokens == 12 for r in results.values()), results
    assert results["with"].token_ids != results["without"].token_ids
    assert engine.loaded.model.dtype == torch.bfloat16
    assert all(w.A.dtype == torch.float32 and w.B.dtype == torch.float32 for w in engine.bank.wrappers.values())


def test_the_weights_setting_names_its_choices():
    assert weight_dtype("float32") == torch.float32 and weight_dtype("bfloat16") == torch.bfloat16
    assert weight_dtype("auto") in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="weights must be auto, float32 or bfloat16, not 'int3'"):
        weight_dtype("int3")


def test_a_lora_bank_on_bfloat16_weights_adds_the_same_delta_as_float32(tiny_model_dir, adapter_factory):
    from inference.lora import load_adapter

    path = adapter_factory("delta", seed=9)
    deltas = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_base_model(tiny_model_dir, dtype=dtype).model
        bank = LoraBank(model, 1)
        bank.write(1, load_adapter(path, model))
        wrapper = next(iter(bank.wrappers.values()))
        bank.state.set_packed([(1, 0, 5)])
        x = torch.randn(1, 5, wrapper.in_features, generator=torch.Generator().manual_seed(0))
        out = torch.zeros(1, 5, wrapper.out_features, dtype=dtype)
        wrapper.add_delta(x.to(dtype), out)
        deltas[dtype] = out.float()
    assert deltas[torch.float32].abs().max() > 0.1  # the adapter does act
    assert torch.allclose(deltas[torch.float32], deltas[torch.bfloat16], rtol=2e-2, atol=2e-2)


def test_the_device_setting_names_its_choices():
    from inference.loading import inference_device

    assert inference_device("cpu") == torch.device("cpu")
    assert inference_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda, not 'tpu'"):
        inference_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            inference_device("cuda")
