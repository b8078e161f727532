"""Streaming: deltas follow token boundaries, never split a UTF-8 character, hide action markup."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.actions import parse_actions
from inference.engine import Result, StreamDecoder
from inference.prompt import END, NPC

from .conftest import Collector, request


def scripted_model(tokenizer_dir: Path, out: Path, text: str) -> tuple[Path, list[int]]:
    """A Llama whose greedy output after <|npc|> is exactly ``text`` then <|end|>.

    Attention and MLP outputs are zeroed, so the last hidden state is the
    current token's (normalised) embedding, and lm_head maps each token of the
    chain to the next one. Deterministic output lets us test the streaming of
    tokens that carry only part of a character.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    chain = [
        tokenizer.convert_tokens_to_ids(NPC),
        *tokenizer.encode(text, add_special_tokens=False),
        tokenizer.convert_tokens_to_ids(END),
    ]
    assert len(set(chain)) == len(chain), "the scripted chain needs distinct tokens"
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=chain[-1],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        emb = torch.nn.functional.normalize(torch.randn(len(tokenizer), 64), dim=-1)
        model.model.embed_tokens.weight.copy_(emb)
        head = torch.zeros(len(tokenizer), 64)
        for current, following in zip(chain, chain[1:]):
            head[following] = 20.0 * emb[current]
        model.lm_head.weight.copy_(head)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, chain[1:-1]


@pytest.fixture(scope="module")
def multibyte_model(tiny_model_dir: Path, tmp_path_factory) -> tuple[Path, list[int], str]:
    # Every token distinct (the scripted chain needs that), several characters split over tokens.
    text = "Grü ☀日Ж ok"
    out, chain = scripted_model(tiny_model_dir, tmp_path_factory.mktemp("scripted") / "m", text)
    return out, chain, text


def test_deltas_never_split_a_character_and_concatenate_to_the_text(make_engine, multibyte_model):
    model_dir, chain, text = multibyte_model
    engine = make_engine(model_dir)
    # The test only means something if some tokens are partial characters.
    assert sum("\ufffd" in engine.tokenizer.decode([t]) for t in chain) >= 6
    collector = Collector()
    engine.submit(request("utf8", "hi", max_tokens=len(chain) + 5), collector)
    result = collector.wait(["utf8"])["utf8"]
    assert isinstance(result, Result)
    assert result.finish_reason == "stop" and result.token_ids == chain
    assert result.raw_text == result.text == text
    deltas = collector.deltas("utf8")
    assert len(deltas) >= 4
    assert "".join(deltas) == result.text
    assert not any("\ufffd" in d for d in deltas)


def test_stream_decoder_holds_partial_characters_and_markup(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    raw = "Grüße, Zoë! ☀ [[ACTION:give default:apple 2]] Take it [[ACTION:jump]], 日本 [[ACTION:say hi"
    stream = StreamDecoder(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    deltas = [d for t in tokenizer.encode(raw, add_special_tokens=False) if (d := stream.push(t))]
    final, actions = parse_actions(raw)
    deltas.append(stream.finish(final))
    assert final == "Grüße, Zoë! ☀ Take it, 日本"
    assert actions == [{"name": "give", "args": ["default:apple", "2"]}, {"name": "jump", "args": []}]
    assert "".join(deltas) == final
    assert not any("\ufffd" in d or "[" in d or "ACTION" in d for d in deltas)


def test_max_tokens_cuts_a_scripted_reply(make_engine, multibyte_model):
    model_dir, chain, _ = multibyte_model
    engine = make_engine(model_dir)
    collector = Collector()
    engine.submit(request("cut", "hi", max_tokens=4), collector)
    result = collector.wait(["cut"])["cut"]
    assert result.token_ids == chain[:4] and result.finish_reason == "length"
    assert result.text == "Grü" and "".join(collector.deltas("cut")) == result.text
