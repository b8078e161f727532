"""Any HF causal LM directory goes through the same loading, prompting and engine code."""

from pathlib import Path

import pytest
import torch

from inference.engine import AdapterRef, Result
from inference.loading import load_base_model

from .helpers import Collector, reference_tokens, request

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def qwen2_dir(tiny_model_dir: Path, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens({"extra_special_tokens": ["<|user|>", "<|assistant|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(config)  # random weights: only the plumbing is under test
    out = tmp_path_factory.mktemp("qwen2") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_a_qwen2_chat_model_loads_prompts_and_serves_a_lora(qwen2_dir, adapter_factory, make_engine):
    loaded = load_base_model(qwen2_dir)
    assert loaded.info.architecture == "Qwen2ForCausalLM" and loaded.info.uses_chat_template
    adapter = AdapterRef(
        1, 1, str(adapter_factory("qwen-lora", seed=9, targets=("q_proj", "v_proj"), base_dir=qwen2_dir))
    )
    engine = make_engine(qwen2_dir)
    collector = Collector()
    engine.submit(request("q1", "hello", adapter=adapter, max_tokens=10, ignore_eos=True), collector)
    engine.submit(request("q2", "where is the mine?", max_tokens=7, ignore_eos=True), collector)
    results = collector.wait(["q1", "q2"])
    assert all(isinstance(r, Result) for r in results.values())
    prompt = results["q1"].prompt_text
    # The player's name is said once, in the system turn; the user turn is their words alone.
    assert prompt.startswith("<|system|>You are Brann.") and prompt.endswith(
        "\nYou are talking with alice.<|end|>\n<|user|>hello<|end|>\n<|assistant|>"
    )
    expected = reference_tokens(
        qwen2_dir, [adapter, None], [results["q1"].prompt_text, results["q2"].prompt_text], [10, 7]
    )
    assert results["q1"].token_ids == expected[0] and results["q1"].adapter_id == 1
    assert results["q2"].token_ids == expected[1]
