"""Persona statistics: precomputed counts that stay exact through every rating write, read by the persona page."""

import importlib
import threading
from datetime import datetime, timedelta
from unittest import mock

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from agents_app import gateway
from agents_app.models import ExchangeRatings, PersonaDayRatings, Rating
from agents_app.services import rating_upsert
from portal import selectors
from tests.factories import adapter, make_exchange, verified_link
from tests.portal.clients import client_for

pytestmark = pytest.mark.django_db


def recount(persona) -> tuple[dict, dict]:
    """What the tables must say, aggregated from every rating (what the page once did on each cold hit)."""
    ratings = Rating.objects.filter(exchange__persona=persona)
    days = {
        (row["exchange__adapter_version"], row["day"]): (row["ups"], row["downs"])
        for row in ratings.annotate(day=TruncDate("created_at"))
        .values("exchange__adapter_version", "day")
        .annotate(ups=Count("id", filter=Q(score=1)), downs=Count("id", filter=Q(score=-1)))
        .order_by()
    }
    exchanges = {
        row["exchange_id"]: (row["net"], row["total"])
        for row in ratings.values("exchange_id").annotate(net=Sum("score"), total=Count("id")).order_by()
    }
    return days, exchanges


def stored(persona) -> tuple[dict, dict]:
    days = {
        (row.adapter_version_id, row.day): (row.ups, row.downs)
        for row in PersonaDayRatings.objects.filter(persona=persona)
        if row.ups or row.downs
    }
    exchanges = {row.exchange_id: (row.net, row.total) for row in ExchangeRatings.objects.filter(persona=persona)}
    return days, {k: v for k, v in exchanges.items() if v[1]}


def at(day: int):
    """Ratings given ``day`` days ago (auto_now_add reads timezone.now)."""
    when = timezone.now().replace(hour=12) - timedelta(days=day)
    return mock.patch("django.utils.timezone.now", return_value=when)


def test_counts_stay_exact_through_new_changed_repeated_and_deleted_ratings(alice, bob, charlie, persona, npc):
    v1 = adapter(persona, 1)
    first, second = make_exchange(npc, adapter_version=v1), make_exchange(npc)
    rating_upsert(exchange=first, score=1, user=alice)
    rating_upsert(exchange=first, score=-1, user=bob)
    rating_upsert(exchange=second, score=-1, player_name="steve", source="game")
    assert stored(persona) == recount(persona)
    assert stored(persona)[1] == {first.pk: (0, 2), second.pk: (-1, 1)}

    rating_upsert(exchange=first, score=-1, user=alice)  # a changed vote: out of ups, into downs
    rating_upsert(exchange=first, score=-1, user=alice, reason="again")  # the same vote again: no change
    assert stored(persona) == recount(persona)
    assert stored(persona)[1][first.pk] == (-2, 2)

    Rating.objects.get(exchange=first, user=bob).delete()  # the admin deletes one
    Rating.objects.filter(exchange=second).delete()  # ... or a whole selection
    assert stored(persona) == recount(persona)
    assert stored(persona)[1] == {first.pk: (-1, 1)}


def test_ratings_given_in_game_count_too_and_a_linked_player_changes_the_same_vote(alice, persona, npc, game_server):
    verified_link(alice, "alice_mc")
    exchange = make_exchange(npc)
    gateway.rating_from_game(server=game_server, exchange_id=exchange.pk, player="alice_mc", score=1)
    gateway.rating_from_game(server=game_server, exchange_id=exchange.pk, player="steve", score=1)
    assert stored(persona) == recount(persona) and stored(persona)[1][exchange.pk] == (2, 2)
    rating_upsert(exchange=exchange, score=-1, user=alice)  # alice again, from the portal: her vote changes
    assert stored(persona) == recount(persona) and stored(persona)[1][exchange.pk] == (0, 2)


def test_a_changed_vote_stays_on_the_day_it_was_first_given(alice, bob, persona, npc):
    exchange = make_exchange(npc)
    with at(3):
        rating_upsert(exchange=exchange, score=1, user=alice)
    with at(1):
        rating_upsert(exchange=exchange, score=1, user=bob)
    rating_upsert(exchange=exchange, score=-1, user=alice)  # today, but the rating is from 3 days ago
    days = stored(persona)[0]
    assert stored(persona) == recount(persona)
    assert sorted(days.values()) == [(0, 1), (1, 0)] and len(days) == 2


def old_trend(persona, days=90) -> list[tuple[str, list]]:
    """The trend as the page computed it before the statistics were kept (every rating, aggregated)."""
    since = timezone.now() - timedelta(days=days)
    rows = (
        Rating.objects.filter(exchange__persona=persona, created_at__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("exchange__adapter_version__version", "day")
        .annotate(up=Count("id", filter=Q(score=1)), total=Count("id"))
        .order_by("exchange__adapter_version__version", "day")
    )
    series: dict[str, list] = {}
    for row in rows:
        version = row["exchange__adapter_version__version"]
        label = f"v{version}" if version is not None else "base model"
        series.setdefault(label, []).append((row["day"].isoformat(), row["up"] / row["total"], row["total"]))
    return list(series.items())


def test_the_trend_is_the_one_the_ratings_give(alice, bob, charlie, persona, npc):
    v1, v2 = adapter(persona, 1, status="retired"), adapter(persona, 2)
    raters = (alice, bob, charlie)
    for day in range(12, 0, -1):
        version = None if day > 9 else v1 if day > 4 else v2
        with at(day):
            for i in range(3):
                exchange = make_exchange(npc, text=f"q{day}-{i}", adapter_version=version)
                for j, user in enumerate(raters[: i + 1]):
                    rating_upsert(exchange=exchange, score=1 if (day + i + j) % 3 else -1, user=user)
    mind = Rating.objects.get(exchange=exchange, user=alice)
    rating_upsert(exchange=exchange, score=-mind.score, user=alice)  # a change of mind, today
    new = [(s.version, s.points) for s in selectors.persona_trend(persona)]
    assert new == old_trend(persona)
    assert {label for label, _ in new} == {"v1", "v2", "base model"} and sum(len(p) for _, p in new) == 12
    body = client_for(charlie).get("/personas/miner/").content.decode()
    assert body.count("<polyline") == 3 and "v2: 6 ratings" in body


def test_best_and_worst_come_in_order_of_net_score_then_of_ratings(alice, bob, charlie, persona, npc):
    replies = {}
    for name, scores in {
        "loved": (1, 1, 1),
        "liked by two of three": (1, 1, -1),
        "liked once": (1,),
        "split": (1, -1),
        "hated": (-1, -1),
        "disliked once": (-1,),
    }.items():
        replies[name] = make_exchange(npc, reply=name)
        for user, score in zip((alice, bob, charlie), scores, strict=False):
            rating_upsert(exchange=replies[name], score=score, user=user)
    best, worst = selectors.persona_extremes(persona, charlie)
    assert [i.exchange.reply_text for i in best] == ["loved", "liked by two of three", "liked once"]
    assert [i.exchange.reply_text for i in worst] == ["hated", "disliked once"]
    assert (best[0].up, best[0].down) == (3, 0)


def test_rebuilding_recounts_ratings_that_were_loaded_in_bulk(alice, bob, persona, npc):
    exchange = make_exchange(npc)
    rating_upsert(exchange=exchange, score=1, user=alice)
    loaded = make_exchange(npc)
    Rating.objects.bulk_create([Rating(exchange=loaded, user=bob, score=-1)])  # bypasses the services
    rating_upsert(exchange=loaded, score=1, user=bob)  # a change to a vote never counted: no made-up numbers
    assert stored(persona) != recount(persona) and loaded.pk not in stored(persona)[1]
    call_command("rebuild_rating_stats", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert stored(persona) == recount(persona)


def test_the_migration_counts_the_ratings_already_given(alice, bob, persona, npc):
    for i, user in enumerate((alice, bob)):
        rating_upsert(exchange=make_exchange(npc, text=f"q{i}"), score=1 - 2 * i, user=user)
    PersonaDayRatings.objects.all().delete()
    ExchangeRatings.objects.all().delete()
    importlib.import_module("agents_app.migrations.0004_persona_stats").backfill(apps, None)
    assert stored(persona) == recount(persona) and len(stored(persona)[1]) == 2


@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers need PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_concurrent_raters_of_one_reply_are_all_counted(persona, npc, django_user_model):
    raters = [django_user_model.objects.create_user(f"rater{i}") for i in range(8)]
    exchange = make_exchange(npc, created_at=datetime.now(tz=timezone.get_default_timezone()))
    start = threading.Barrier(len(raters))
    errors = []

    def rate(user, score):
        try:
            start.wait()
            rating_upsert(exchange=exchange, score=score, user=user)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=rate, args=(u, 1 if i % 3 else -1)) for i, u in enumerate(raters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert stored(persona) == recount(persona) and stored(persona)[1][exchange.pk] == (2, 8)
