"""How the worker packs what is ready into fewer channel-layer messages."""

from inference.worker import _coalesce


def accepted(rid):
    return {"type": "inference.accepted", "request_id": rid, "worker_id": "w1", "worker_channel": "ch.w1"}


def delta(rid, text):
    return {"type": "inference.delta", "request_id": rid, "text": text}


def result(rid, text):
    return {"type": "inference.result", "request_id": rid, "text": text}


def test_an_acceptance_with_nothing_else_ready_goes_alone():
    assert _coalesce([accepted("a")]) == [accepted("a")]


def test_the_acceptance_rides_on_the_first_delta():
    out = _coalesce([accepted("a"), delta("a", "Hel"), delta("a", "lo")])
    assert out == [{**delta("a", "Hello"), "worker_id": "w1", "worker_channel": "ch.w1"}]


def test_a_request_accepted_and_finished_in_one_batch_is_its_result_alone():
    assert _coalesce([accepted("a"), delta("a", "Hi"), delta("a", " you"), result("a", "Hi you")]) == [
        result("a", "Hi you")
    ]


def test_deltas_of_a_request_already_streaming_are_kept_before_its_result():
    out = _coalesce([delta("a", "lo"), delta("a", " there"), result("a", "Hello there")])
    assert out == [delta("a", "lo there"), result("a", "Hello there")]


def test_each_requests_order_is_kept_when_requests_interleave():
    out = _coalesce(
        [
            accepted("a"),
            delta("b", "x"),
            delta("a", "1"),
            accepted("c"),
            delta("b", "y"),
            result("b", "xy"),
            delta("a", "2"),
        ]
    )
    assert out == [
        {**delta("a", "12"), "worker_id": "w1", "worker_channel": "ch.w1"},
        delta("b", "xy"),
        accepted("c"),
        result("b", "xy"),
    ]
