"""Streaming: deltas are whole sentences, never split a UTF-8 character, hide action markup, and a reply ends well."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.actions import parse_actions
from inference.engine import TURN_SPEAKERS, Result
from inference.prompt import END, NPC
from inference.reply import ReplyShaper

from .helpers import Collector, request


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
    text = "Grü! ☀日?\nЖ ok"
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
    assert deltas == ["Grü!", " ☀日?", "\nЖ ok"]  # a sentence at a time, the unfinished one at the end
    assert "".join(deltas) == result.text
    assert not any("\ufffd" in d for d in deltas)


def shape(tokenizer, raw: str, reason: str = "stop", speakers=("Bram the Miner", "alice", *TURN_SPEAKERS)):
    """Feed ``raw`` token by token: (deltas, final text, actions, stopped early)."""
    shaper = ReplyShaper(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), speakers)
    deltas = []
    for token in tokenizer.encode(raw, add_special_tokens=False):
        if delta := shaper.push(token):
            deltas.append(delta)
        if shaper.stopped:
            break
    text, _raw, actions, tail = shaper.finish(reason)
    if tail:
        deltas.append(tail)
    assert "".join(deltas) == text  # the protocol's promise: deltas concatenate to the reply
    return deltas, text, actions, shaper.stopped


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_the_shaper_holds_partial_characters_and_markup(tokenizer):
    raw = "Grüße, Zoë! ☀ [[ACTION:give default:apple 2]] Take it [[ACTION:jump]], 日本 [[ACTION:say hi"
    deltas, final, actions, _ = shape(tokenizer, raw)
    assert final == parse_actions(raw)[0] == "Grüße, Zoë! ☀ Take it, 日本"
    assert actions == [{"name": "give", "args": ["default:apple", "2"]}, {"name": "jump", "args": []}]
    assert not any("\ufffd" in d or "[" in d or "ACTION" in d for d in deltas)


def test_a_sentence_end_inside_markup_is_not_one(tokenizer):
    deltas, final, actions, _ = shape(tokenizer, "Aye. [[ACTION:say Hello! All of you.]] Done. Bye")
    assert deltas[:2] == ["Aye.", " Done."] and final == "Aye. Done. Bye"
    assert actions == [{"name": "say", "args": ["Hello!", "All", "of", "you."]}]


def test_a_repeated_sentence_ends_the_reply_before_it(tokenizer):
    raw = "I will be your guide. Follow the road. I will be your guide. Follow the road. I will"
    deltas, final, _, stopped = shape(tokenizer, raw)
    assert stopped and final == "I will be your guide. Follow the road."
    assert "".join(deltas) == final


def test_a_repeat_that_only_differs_in_case_and_punctuation_is_still_a_repeat(tokenizer):
    _, final, _, stopped = shape(tokenizer, "Hello there! hello, THERE. More")
    assert stopped and final == "Hello there!"


def test_another_speakers_turn_ends_the_reply(tokenizer):
    _, final, actions, stopped = shape(tokenizer, "Aye, I know the mine.\nalice: and the lake? [[ACTION:jump]]")
    assert stopped and final == "Aye, I know the mine." and actions == []
    _, final, _, stopped = shape(tokenizer, "Sure.\nUser: thanks")
    assert stopped and final == "Sure."


def test_a_speaker_prefix_is_removed(tokenizer):
    prefixed = ("Bram the Miner: Hi, alice.", "Bram: Hi, alice.", "alice: Hi, alice.", "  BRAM : Hi, alice.")
    for raw in prefixed:
        deltas, final, _, _ = shape(tokenizer, raw)
        assert final == "Hi, alice." and deltas[0].startswith("Hi"), raw
    # A colon later in the reply is just a colon.
    assert shape(tokenizer, "Two things: iron and coal.")[1] == "Two things: iron and coal."


def test_out_of_tokens_a_reply_ends_on_its_last_whole_sentence(tokenizer):
    deltas, final, actions, _ = shape(tokenizer, "Go north. Then east past the [[ACTION:jump]] river and", "length")
    assert final == "Go north." and deltas == ["Go north."] and actions == []
    # Not one sentence in the whole budget: it ends on a whole word, marked as cut.
    _, final, _, _ = shape(tokenizer, "the long road to the north of the", "length")
    assert final == "the long road to the north of…"


def test_max_tokens_cuts_a_scripted_reply(make_engine, multibyte_model):
    model_dir, chain, _ = multibyte_model
    engine = make_engine(model_dir)
    collector = Collector()
    engine.submit(request("cut", "hi", max_tokens=5), collector)
    result = collector.wait(["cut"])["cut"]
    assert result.token_ids == chain[:5] and result.finish_reason == "length"
    assert result.text == "Grü!" and "".join(collector.deltas("cut")) == result.text
    # Cut inside its first sentence, a reply ends on a whole word, marked as cut.
    cut = Collector()
    engine.submit(request("cut-short", "hi", max_tokens=4), cut)
    result = cut.wait(["cut-short"])["cut-short"]
    assert result.finish_reason == "length" and result.text == "Grü…"
