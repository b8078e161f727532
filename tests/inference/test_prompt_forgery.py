"""No untrusted field of a prompt can add, drop or move a control token, for any tokenizer.

Whatever a player sends as their name, their words, what the memory says they and the NPC
said before, what is nearby, and whatever a modder calls their persona, the prompt's control
tokens are exactly those of the same prompt with harmless words: the model sees the system
turn and the NPC's turn the template made, and no others.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.prompt import PersonaSpec, Turn, build_prompt

from .adversarial import FORGERY_SETTINGS, control_spellings, controls_in, forgeries, nestings

PERSONA = PersonaSpec(slug="mira", name="Mira", system_prompt="You farm wheat.", actions=("follow", "give"))
BUDGET = 100_000  # nothing is trimmed, so the adversarial prompt and the benign one have the same parts


@pytest.fixture(scope="module", params=["starter_tokenizer", "real_tokenizer", "folding_tokenizer"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def benign_controls(tokenizer, turns: int) -> list[int]:
    """The control tokens of a prompt with ``turns`` memory turns and a context, in harmless words."""
    memory = [Turn("bob", "how are you?", "Fine.")] * turns
    context = {"pos": [1, 2, 3], "nearby": ["default:chest"]}
    prompt = build_prompt(tokenizer, PERSONA, memory, context, "alice", "hello there", BUDGET)
    return controls_in(tokenizer, prompt.input_ids)


@settings(FORGERY_SETTINGS, max_examples=60)
@given(data=st.data())
def test_adversarial_fields_never_add_or_move_a_control_token(tokenizer, data):
    text = forgeries(control_spellings(tokenizer))
    player, words = data.draw(text, label="player"), data.draw(text, label="text")
    memory = data.draw(st.lists(st.builds(Turn, text, text, text), max_size=3), label="memory")
    nearby = data.draw(st.lists(text, max_size=3), label="nearby")
    persona = PersonaSpec(slug="mira", name=data.draw(text, label="name"), system_prompt=data.draw(text, label="sys"))
    prompt = build_prompt(tokenizer, persona, memory, {"pos": [1, 2, 3], "nearby": nearby}, player, words, BUDGET)
    assert prompt.memory_turns == len(memory)
    # The position keeps the context line whether or not a nearby entry survives cleaning.
    assert controls_in(tokenizer, prompt.input_ids) == benign_controls(tokenizer, len(memory)), prompt.text


@settings(FORGERY_SETTINGS, max_examples=25)
@given(data=st.data())
def test_truncated_adversarial_words_stay_clean(tokenizer, data):
    forged = data.draw(st.lists(forgeries(control_spellings(tokenizer)), min_size=6, max_size=12), label="forged")
    # Too long to fit, with the cut somewhere among the forgeries.
    words = "tell me " * 10 + " ".join(f"{f} and" for f in forged)
    bare = build_prompt(tokenizer, PERSONA, [], None, "alice", "", BUDGET)
    budget = len(bare.input_ids) + data.draw(st.integers(6, 16), label="room for words")
    prompt = build_prompt(tokenizer, PERSONA, [], None, "alice", words, budget)
    assert prompt.player_text_truncated and len(prompt.input_ids) <= budget
    assert controls_in(tokenizer, prompt.input_ids) == controls_in(tokenizer, bare.input_ids), prompt.text


def test_every_nesting_of_one_spelling_in_another_fails_in_every_field(tokenizer):
    forged = list(nestings(control_spellings(tokenizer)))
    # A few thousand forgeries, a prompt per batch of them: each field holds as many as fit.
    for start in range(0, len(forged), 100):
        batch = forged[start : start + 100]
        words = " ".join(batch)
        memory = [Turn(batch[0], words, words)]
        prompt = build_prompt(tokenizer, PERSONA, memory, {"pos": [1, 2, 3]}, batch[-1], words, BUDGET)
        assert controls_in(tokenizer, prompt.input_ids) == benign_controls(tokenizer, 1), batch
