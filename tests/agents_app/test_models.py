import uuid

import pytest
from django.db import IntegrityError, transaction

from agents_app.models import AdapterVersion, Exchange, GameServer, Npc, PairwiseVote, Persona, Rating, TrainingRun
from tests.factories import make_adapter

pytestmark = pytest.mark.django_db


def make_exchange(npc, **kwargs):
    defaults = dict(npc=npc, persona=npc.persona, player_name="steve", player_text="hi", prompt="p", reply_text="hello")
    return Exchange.objects.create(**{**defaults, **kwargs})


def refused(fn):
    """True when the database itself refuses the write."""
    try:
        with transaction.atomic():
            fn()
    except IntegrityError:
        return True
    return False


def test_a_second_rating_by_the_same_user_is_refused_by_the_database(npc, alice):
    exchange = make_exchange(npc)
    Rating.objects.create(exchange=exchange, user=alice, score=1)
    assert refused(lambda: Rating.objects.create(exchange=exchange, user=alice, score=-1))


def test_a_second_rating_by_the_same_unlinked_player_is_refused(npc):
    exchange = make_exchange(npc)
    Rating.objects.create(exchange=exchange, player_name="steve", score=1, source="game")
    assert refused(lambda: Rating.objects.create(exchange=exchange, player_name="steve", score=1, source="game"))


def test_different_raters_may_rate_the_same_exchange(npc, alice, bob):
    exchange = make_exchange(npc)
    Rating.objects.create(exchange=exchange, user=alice, score=1)
    Rating.objects.create(exchange=exchange, user=bob, score=-1)
    Rating.objects.create(exchange=exchange, player_name="steve", score=1)
    assert exchange.ratings.count() == 3


def test_a_score_other_than_plus_or_minus_one_is_refused(npc, alice):
    exchange = make_exchange(npc)
    assert refused(lambda: Rating.objects.create(exchange=exchange, user=alice, score=2))
    assert refused(lambda: Rating.objects.create(exchange=exchange, user=alice, score=0))


def test_a_rating_needs_exactly_one_rater(npc, alice):
    exchange = make_exchange(npc)
    assert refused(lambda: Rating.objects.create(exchange=exchange, score=1))
    assert refused(lambda: Rating.objects.create(exchange=exchange, user=alice, player_name="steve", score=1))


def test_a_persona_has_at_most_one_active_adapter(persona):
    make_adapter(persona, 1, status=AdapterVersion.Status.ACTIVE)
    assert refused(lambda: make_adapter(persona, 2, status=AdapterVersion.Status.ACTIVE))
    make_adapter(persona, 3, status=AdapterVersion.Status.APPROVED)


def test_version_numbers_are_unique_per_persona(persona, alice):
    make_adapter(persona, 1)
    assert refused(lambda: make_adapter(persona, 1))
    other = Persona.objects.create(slug="other", name="Other", owner=alice)
    make_adapter(other, 1)


def test_an_unknown_adapter_status_is_refused(persona):
    assert refused(lambda: make_adapter(persona, 1, status="bogus"))


def test_a_hashed_token_verifies_and_the_raw_token_is_never_stored(alice):
    server = GameServer(name="world", owner=alice)
    raw = server.set_new_token()
    server.save()
    server.refresh_from_db()
    assert server.verify_token(raw)
    assert not server.verify_token(raw + "x")
    stored = [str(value) for value in GameServer.objects.filter(pk=server.pk).values().get().values()]
    assert not any(raw in value for value in stored)
    assert raw.startswith(server.token_hint)


def test_two_servers_cannot_share_a_token_hash(alice, bob):
    first = GameServer(name="a", owner=alice)
    first.set_new_token()
    first.save()
    second = GameServer(name="b", owner=bob, token_hash=first.token_hash, token_hint="x")
    assert refused(second.save)


def test_an_npc_id_is_unique_within_its_world(npc, game_server, persona):
    assert refused(lambda: Npc.objects.create(game_server=game_server, world_id=npc.world_id, persona=persona))


def test_a_pairwise_vote_needs_two_different_exchanges(npc, alice):
    exchange = make_exchange(npc)
    assert refused(lambda: PairwiseVote.objects.create(left=exchange, right=exchange, voter=alice, outcome="tie"))
    other = make_exchange(npc)
    PairwiseVote.objects.create(left=exchange, right=other, voter=alice, outcome="left")
    assert refused(lambda: PairwiseVote.objects.create(left=exchange, right=other, voter=alice, outcome="right"))


def test_one_training_run_per_persona_per_night(persona):
    TrainingRun.objects.create(persona=persona, night="2026-11-24")
    assert refused(lambda: TrainingRun.objects.create(persona=persona, night="2026-11-24"))


def test_an_exchange_that_was_rated_cannot_be_deleted(npc, alice):
    from django.db.models import ProtectedError

    exchange = make_exchange(npc)
    Rating.objects.create(exchange=exchange, user=alice, score=1)
    with pytest.raises(ProtectedError):
        exchange.delete()


def test_an_adapter_version_that_answered_cannot_be_deleted(npc, persona):
    from django.db.models import ProtectedError

    adapter = make_adapter(persona, 1)
    make_exchange(npc, adapter_version=adapter, id=uuid.uuid4())
    with pytest.raises(ProtectedError):
        adapter.delete()
