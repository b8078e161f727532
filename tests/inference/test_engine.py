"""The engine: continuous batching with per-request LoRA must change nothing but speed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from inference.engine import AdapterRef, EngineStopped, Error, Overloaded, Result
from inference.prompt import Sampling, Turn

from .helpers import Collector, npc_persona, reference_tokens, request

TEXTS = [
    "hi",
    "can I have some apples please?",
    "where is the old mine, and is it far from the village well?",
    "follow me",
    "tell me about yourself, I have heard so many stories about you from the people at the market square",
    "jump!",
    "what time is it?",
    "stop following me and wait here until I come back from the lake shore",
]


def adapter_specs(adapter_factory) -> list[AdapterRef]:
    """Eight adapters with different ranks and target modules (they must coexist)."""
    shapes = [
        (4, ("q_proj", "v_proj")),
        (8, ("q_proj", "v_proj")),
        (2, ("k_proj", "o_proj")),
        (4, ("gate_proj", "up_proj", "down_proj")),
        (6, ("q_proj", "k_proj", "v_proj", "o_proj")),
        (1, ("v_proj",)),
        (4, ("q_proj", "v_proj", "down_proj")),
        (8, ("o_proj", "up_proj")),
    ]
    return [
        AdapterRef(id=i + 1, version=1, path=str(adapter_factory(f"a{i}", seed=100 + i, r=r, targets=t)))
        for i, (r, t) in enumerate(shapes)
    ]


def run_alone(engine, req) -> Result:
    collector = Collector()
    engine.submit(req, collector)
    result = collector.wait([req.request_id])[req.request_id]
    assert isinstance(result, Result), result
    return result


def test_mixed_adapter_batch_matches_peft_and_solo_runs(make_engine, adapter_factory, tiny_model_dir):
    refs = adapter_specs(adapter_factory)
    plan = [(refs[i], TEXTS[i], 8 + i) for i in range(8)] + [
        (None, "hello there", 10),
        (refs[2], "who are you?", 14),
        (None, "bye", 9),
        (refs[5], "any news about the north tower?", 12),
    ]
    memory = [Turn("alice", "hi", "Hm. alice."), Turn("alice", "jump!", "[[ACTION:jump]] Aye.")]
    # max_prefill_tokens=1 admits one newcomer per step: every request joins a batch already decoding.
    engine = make_engine(adapter_slots=8, max_prefill_tokens=1)
    collector = Collector()
    for i, (ref, text, n) in enumerate(plan):
        engine.submit(
            request(f"r{i}", text, adapter=ref, max_tokens=n, ignore_eos=True, memory=memory[: i % 3]), collector
        )
    results = collector.wait([f"r{i}" for i in range(len(plan))])
    assert all(isinstance(r, Result) for r in results.values()), results

    expected = reference_tokens(
        tiny_model_dir,
        [p[0] for p in plan],
        [results[f"r{i}"].prompt_text for i in range(len(plan))],
        [p[2] for p in plan],
    )
    for i, (ref, _text, n) in enumerate(plan):
        got = results[f"r{i}"]
        assert got.completion_tokens == n and got.finish_reason == "length"
        assert got.token_ids == expected[i], f"r{i} differs from PEFT generate"
        assert got.adapter_id == (ref.id if ref else None)

    # The same requests alone through the engine give the same tokens.
    for i in (0, 3, 8, 11):
        ref, text, n = plan[i]
        alone = run_alone(
            engine, request(f"solo{i}", text, adapter=ref, max_tokens=n, ignore_eos=True, memory=memory[: i % 3])
        )
        assert alone.token_ids == results[f"r{i}"].token_ids


def test_one_rows_adapter_never_touches_the_others(make_engine, adapter_factory):
    huge = AdapterRef(id=99, version=1, path=str(adapter_factory("huge", seed=7, std=50.0)))
    calm = AdapterRef(id=1, version=1, path=str(adapter_factory("calm", seed=8)))
    engine = make_engine()

    def batch(with_huge: bool) -> dict[str, Result]:
        collector = Collector()
        tag = "h" if with_huge else "n"
        reqs = [
            request(f"{tag}-calm", "hi there", adapter=calm, max_tokens=16, ignore_eos=True),
            request(f"{tag}-plain", "can I have an apple?", max_tokens=16, ignore_eos=True),
        ]
        if with_huge:
            reqs.append(request(f"{tag}-huge", "hi there", adapter=huge, max_tokens=16, ignore_eos=True))
        for r in reqs:
            engine.submit(r, collector)
        return collector.wait([r.request_id for r in reqs])  # type: ignore[return-value]

    with_huge, without = batch(True), batch(False)
    assert with_huge["h-calm"].token_ids == without["n-calm"].token_ids
    assert with_huge["h-plain"].token_ids == without["n-plain"].token_ids
    assert with_huge["h-huge"].token_ids != with_huge["h-calm"].token_ids  # the huge adapter does act on its own row


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.002)


def test_hot_swap_keeps_running_requests_on_the_old_version(make_engine, adapter_factory):
    v1 = AdapterRef(id=5, version=1, path=str(adapter_factory("v1", seed=1)))
    v2 = AdapterRef(id=5, version=2, path=str(adapter_factory("v2", seed=2)))
    engine = make_engine(adapter_slots=2)
    solo_v1 = run_alone(engine, request("solo-v1", max_tokens=60, adapter=v1, ignore_eos=True)).token_ids
    solo_v2 = run_alone(engine, request("solo-v2", max_tokens=20, adapter=v2, ignore_eos=True)).token_ids
    assert solo_v1[:20] != solo_v2

    gate = threading.Event()
    collector = Collector()

    def on_event(event):
        collector(event)
        gate.wait(10)  # hold the engine while the new version is activated

    engine.submit(request("old", max_tokens=60, adapter=v1, ignore_eos=True), on_event)
    wait_until(lambda: engine.stats()["running"] == 1)
    engine.submit(request("new", max_tokens=20, adapter=v2, ignore_eos=True), collector)  # v2 is now the active version
    gate.set()
    results = collector.wait(["old", "new"])
    assert (results["old"].adapter_version, results["old"].token_ids) == (1, solo_v1)
    assert (results["new"].adapter_version, results["new"].token_ids) == (2, solo_v2)


def test_a_new_adapter_waits_for_a_slot_while_all_are_pinned(make_engine, adapter_factory):
    a = AdapterRef(id=1, version=1, path=str(adapter_factory("slot-a", seed=3)))
    b = AdapterRef(id=2, version=1, path=str(adapter_factory("slot-b", seed=4)))
    engine = make_engine(adapter_slots=1)
    collector = Collector()
    engine.submit(request("a", max_tokens=30, adapter=a, ignore_eos=True), collector)
    engine.submit(request("b", max_tokens=5, adapter=b, ignore_eos=True), collector)
    results = collector.wait(["a", "b"])
    assert results["a"].adapter_id == 1 and results["b"].adapter_id == 2
    # b could only start once a released the single slot.
    assert results["b"].ttft_ms >= results["a"].total_ms - 1.0
    assert (
        run_alone(engine, request("b2", max_tokens=5, adapter=b, ignore_eos=True)).token_ids == results["b"].token_ids
    )


def test_cancel_stops_a_running_request_and_a_waiting_one(make_engine):
    engine = make_engine(max_batch_size=1)
    collector = Collector()
    engine.submit(request("long", max_tokens=250, ignore_eos=True), collector)
    engine.submit(request("queued", max_tokens=5), collector)
    wait_until(lambda: engine.stats()["running"] == 1)
    assert engine.cancel("queued") and engine.cancel("long")
    results = collector.wait(["long", "queued"])
    assert results["long"].finish_reason == "cancelled" and results["long"].completion_tokens < 250
    assert results["queued"].finish_reason == "cancelled" and results["queued"].completion_tokens == 0
    assert not engine.cancel("nobody")


def test_a_full_queue_refuses_at_once(make_engine):
    engine = make_engine(max_queue=2, max_batch_size=1)
    release = threading.Event()
    collector = Collector()

    def blocking(event):
        collector(event)
        release.wait(10)

    engine.submit(request("busy", max_tokens=3, ignore_eos=True), blocking)
    wait_until(lambda: engine.stats()["running"] == 1)  # engine thread is now stuck in the callback
    engine.submit(request("w1"), collector)
    engine.submit(request("w2"), collector)
    started = time.monotonic()
    with pytest.raises(Overloaded):
        engine.submit(request("w3"), collector)
    assert time.monotonic() - started < 0.1
    release.set()
    results = collector.wait(["busy", "w1", "w2"])
    assert all(isinstance(r, Result) for r in results.values())


def test_missing_and_corrupt_adapters_fail_only_their_request(make_engine, adapter_factory, tmp_path):
    good = AdapterRef(id=1, version=1, path=str(adapter_factory("good", seed=5)))
    corrupt_dir = tmp_path / "corrupt"
    corrupt_dir.mkdir()
    (corrupt_dir / "adapter_config.json").write_text((Path(good.path) / "adapter_config.json").read_text())
    (corrupt_dir / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    wrong_dir = tmp_path / "wrong-shape"
    wrong_dir.mkdir()
    (wrong_dir / "adapter_config.json").write_text((Path(good.path) / "adapter_config.json").read_text())
    save_file(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 17),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 4),
        },
        str(wrong_dir / "adapter_model.safetensors"),
    )
    engine = make_engine()
    collector = Collector()
    engine.submit(request("ok1", adapter=good, max_tokens=6, ignore_eos=True), collector)
    engine.submit(request("missing", adapter=AdapterRef(2, 1, str(tmp_path / "nope"))), collector)
    engine.submit(request("corrupt", adapter=AdapterRef(3, 1, str(corrupt_dir))), collector)
    engine.submit(request("shape", adapter=AdapterRef(4, 1, str(wrong_dir))), collector)
    engine.submit(request("badsha", adapter=AdapterRef(5, 1, good.path, sha256="0" * 64)), collector)
    engine.submit(request("ok2", max_tokens=6, ignore_eos=True), collector)
    results = collector.wait(["ok1", "missing", "corrupt", "shape", "badsha", "ok2"])
    for rid, fragment in [
        ("missing", "does not exist"),
        ("corrupt", "corrupt safetensors"),
        ("shape", "wrong shape"),
        ("badsha", "sha256"),
    ]:
        err = results[rid]
        assert isinstance(err, Error) and err.code == "adapter_error" and fragment in err.message, err
    assert isinstance(results["ok1"], Result) and results["ok1"].adapter_id == 1
    assert isinstance(results["ok2"], Result) and results["ok2"].completion_tokens == 6


def test_max_tokens_is_honoured_and_checked(make_engine):
    engine = make_engine()
    collector = Collector()
    engine.submit(request("three", max_tokens=3, ignore_eos=True), collector)
    engine.submit(request("zero", max_tokens=0), collector)
    engine.submit(request("huge", max_tokens=10_000), collector)
    results = collector.wait(["three", "zero", "huge"])
    assert (results["three"].completion_tokens, results["three"].finish_reason) == (3, "length")
    assert results["zero"].code == "invalid" and results["huge"].code == "invalid"


def test_a_prompt_that_would_forge_a_control_token_is_refused_as_invalid_and_the_engine_goes_on(make_engine):
    engine = make_engine()
    # A special token spanning the template's ": " between the player's name and their words.
    engine.tokenizer.add_tokens(["e: h"], special_tokens=True)
    collector = Collector()
    engine.submit(request("forged", "hi", player="alice"), collector)
    engine.submit(request("fine", "hi", player="bob"), collector)
    results = collector.wait(["forged", "fine"])
    assert isinstance(results["forged"], Error) and results["forged"].code == "invalid"
    assert "control token" in results["forged"].message
    assert isinstance(results["fine"], Result)


def test_stop_with_drain_finishes_accepted_requests_then_refuses(make_engine):
    engine = make_engine(max_batch_size=2)
    collector = Collector()
    ids = [f"d{i}" for i in range(4)]
    for rid in ids:
        engine.submit(request(rid, max_tokens=10, ignore_eos=True), collector)
    engine.stop(drain=True, timeout=60)
    results = collector.wait(ids, timeout=1)
    assert all(r.finish_reason == "length" and r.completion_tokens == 10 for r in results.values())
    with pytest.raises(EngineStopped):
        engine.submit(request("late"), collector)


def test_sampling_is_reproducible_per_seed(make_engine):
    engine = make_engine()
    hot = npc_persona(sampling=Sampling(temperature=1.0, top_p=0.95, top_k=50))
    runs = [
        run_alone(engine, request(f"s{i}", persona=hot, seed=seed, max_tokens=20, ignore_eos=True))
        for i, seed in enumerate((11, 11, 12))
    ]
    assert runs[0].token_ids == runs[1].token_ids
    assert runs[0].token_ids != runs[2].token_ids


def test_prompt_context_and_memory_reach_the_model(make_engine):
    engine = make_engine()
    result = run_alone(
        engine,
        request(
            "ctx",
            "hi",
            memory=[Turn("alice", "hello", "Hm.")],
            context={"pos": [1, 2, 3], "time_of_day": 0.5, "nearby": ["bob"]},
        ),
    )
    assert "alice: hello" in result.prompt_text and "pos 1 2 3; time noon; nearby bob" in result.prompt_text
    assert result.prompt_tokens > 0 and result.ttft_ms <= result.total_ms


def test_preload_makes_an_adapter_resident_before_its_first_request(make_engine, adapter_factory):
    ref = AdapterRef(id=7, version=3, path=str(adapter_factory("pre", seed=12)))
    engine = make_engine(adapter_slots=2)
    engine.preload(ref)
    wait_until(lambda: (7, 3) in engine.slots.by_key)
    result = run_alone(engine, request("after-preload", adapter=ref, max_tokens=4, ignore_eos=True))
    assert (result.adapter_id, result.adapter_version) == (7, 3)
    engine.preload(AdapterRef(id=8, version=1, path="/nonexistent"))  # only logged
    assert run_alone(engine, request("still-fine", max_tokens=2, ignore_eos=True)).completion_tokens == 2


def test_the_repetition_penalty_scores_the_replys_own_tokens_only(make_engine, tiny_model_dir):
    """Each greedy token is the argmax of the model's logits with the reply's earlier word tokens
    penalised (a positive score divided by the penalty, a negative one multiplied); the prompt's
    are not, nor punctuation and markup brackets, which a reply repeats by rights."""
    from transformers import AutoModelForCausalLM

    penalty = 1.8
    persona = npc_persona(sampling=Sampling(temperature=0.0, repetition_penalty=penalty))
    engine = make_engine()
    texts = ["hi", "jump!", "where is the old mine?"]
    penalised = [
        run_alone(engine, request(f"p{i}", t, persona=persona, max_tokens=24, ignore_eos=True))
        for i, t in enumerate(texts)
    ]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for result in penalised:
        prompt_ids = engine.tokenizer.encode(result.prompt_text, add_special_tokens=False)
        ids = torch.tensor([prompt_ids + result.token_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
        for step, token in enumerate(result.token_ids):
            scores = logits[step].clone()
            for seen in set(result.token_ids[:step]):
                if not any(ch.isalnum() for ch in engine.tokenizer.decode([seen])):
                    continue
                scores[seen] = scores[seen] / penalty if scores[seen] > 0 else scores[seen] * penalty
            assert int(scores.argmax()) == token, f"step {step}"


def test_a_penalised_word_loses_to_a_fresh_one_and_punctuation_is_free():
    from inference.engine import _penalize_repeats

    logits = torch.tensor([2.0, 1.9, -1.0, 3.0])  # 0 and 2 are words the reply used, 3 is "."
    penalizable = torch.tensor([True, True, True, False])
    _penalize_repeats(logits, [0, 2, 3, 0], 1.5, penalizable)
    assert torch.allclose(logits, torch.tensor([2.0 / 1.5, 1.9, -1.5, 3.0]))
    assert int(logits[:3].argmax()) == 1


def test_a_burst_of_newcomers_is_prefilled_in_chunks_between_the_decode_steps(make_engine):
    engine = make_engine(max_prefill_tokens=8, prompt_cache_mb=0)
    collector = Collector()
    # Holding the engine's lock keeps its thread waiting: the test takes the steps itself.
    with engine._lock, torch.inference_mode():
        engine.submit(request("streaming", max_tokens=200, ignore_eos=True), collector)
        while not engine._running:
            engine._step(set())
        for i in range(4):
            engine.submit(request(f"new{i}", TEXTS[i + 1], max_tokens=100, ignore_eos=True), collector)
        streaming = engine._running[0]
        before, steps = len(streaming.stream.tokens), 0
        while len(engine._running) < 5:
            engine._step(set())
            steps += 1
            assert len(streaming.stream.tokens) == before + steps  # never stalled: a token every step
        prompt_tokens = sum(len(job.prompt.input_ids) for job in engine._running[1:])
        assert prompt_tokens > 8 * 4  # the burst took several chunks...
        assert steps == -(-prompt_tokens // 8)  # ...of 8 tokens each, end to end


@pytest.mark.parametrize("chunk", [3, 17])
def test_chunked_prefill_gives_the_tokens_of_one_prefill(make_engine, adapter_factory, chunk):
    refs = adapter_specs(adapter_factory)[:3]
    memory = [Turn("alice", "hi", "Hm. alice.")]
    results = {}
    for size in (chunk, 4096):
        engine = make_engine(adapter_slots=4, max_prefill_tokens=size, prompt_cache_mb=0)
        collector = Collector()
        for i, text in enumerate(TEXTS[:6]):
            engine.submit(
                request(
                    f"{size}-{i}",
                    text,
                    adapter=refs[i % 3] if i % 2 else None,
                    memory=memory,
                    max_tokens=10,
                    ignore_eos=True,
                ),
                collector,
            )
        results[size] = [r.token_ids for _, r in sorted(collector.wait([f"{size}-{i}" for i in range(6)]).items())]
    assert results[chunk] == results[4096]
