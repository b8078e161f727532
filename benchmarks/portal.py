"""Benchmark: the rating feed and a persona page, with a small and a large PostgreSQL database.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/voyager_bench_portal .venv/bin/python benchmarks/portal.py

The database named in DATABASE_URL (default above) is dropped and re-created each run: do not
point it at one you care about. First 10 exchanges (30 ratings) are measured, then the data grows
to --exchanges (100,000) and --ratings (300,000), loaded with COPY, and the same pages are measured
again. The persona page's statistics (trend per version per day, best and worst replies) are read
from counts the rating services keep (PersonaDayRatings, ExchangeRatings; rebuilt here after each
COPY, which bypasses the services, and timed as stats_s); "persona_cold" empties Django's cache before
every fetch, so nothing a cache could hold helps it. Each page is fetched
--repeat times through Django's test client (DEBUG off) as a logged-in rater (the costlier view:
their own ratings and links are looked up too); the SQL queries of one fetch are counted. The last
line is one JSON object: feed_p95_ms (large database), queries_small, queries_large (feed page
queries), and the persona page's numbers (persona_cold_p95_ms: the page with an empty cache).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/voyager_bench_portal"
PERSONAS, SERVERS, NPCS, RATERS = 10, 3, 60, 60
WORDS = [
    "where",
    "is",
    "the",
    "iron",
    "mine",
    "apple",
    "food",
    "sword",
    "night",
    "zombie",
    "trade",
    "story",
    "help",
    "build",
    "house",
    "river",
    "cave",
]


def recreate_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        sys.exit("benchmarks/portal.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def setup_django() -> None:
    os.environ.setdefault("DATABASE_URL", DEFAULT_DB)
    os.environ.pop("REDIS_URL", None)  # pages only: the local cache keeps Redis out of the numbers
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["DEBUG"] = "0"  # as served: no debug cursor, no debug pages
    os.environ["ALLOWED_HOSTS"] = "localhost"
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    recreate_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def base_fixtures():
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from agents_app.models import GameServer, Npc, Persona, PlayerLink

    User = get_user_model()
    owner = User.objects.create_user("owner", "o@example.org", "owner-pass-123")
    raters = [User(username=f"rater{i}", email=f"r{i}@example.org") for i in range(RATERS)]
    for r in raters:
        r.set_unusable_password()
    raters = User.objects.bulk_create(raters)
    Group.objects.get(name="player").user_set.add(*raters)
    personas = Persona.objects.bulk_create(
        Persona(
            slug=f"persona-{i}",
            name=f"Persona {i}",
            owner=owner,
            description="A bench persona.",
            traits=["brief"],
            allowed_actions=["say", "jump"],
        )
        for i in range(PERSONAS)
    )
    servers = []
    for i in range(SERVERS):
        s = GameServer(name=f"bench world {i}", owner=owner)
        s.set_new_token()
        servers.append(s)
    servers = GameServer.objects.bulk_create(servers)
    npcs = Npc.objects.bulk_create(
        Npc(game_server=servers[i % SERVERS], world_id=f"npc-{i}", persona=personas[i % PERSONAS]) for i in range(NPCS)
    )
    now = datetime.now(UTC)
    PlayerLink.objects.bulk_create(
        PlayerLink(user=raters[i], player_name=f"player{i}", verified_at=now, show_publicly=i % 2 == 0)
        for i in range(RATERS)
    )
    return raters, personas, npcs


def copy_rows(model, columns: list[str], rows) -> None:
    """COPY rows into the model's table; columns not given get the model field's default."""
    from django.db import connection

    # Fields added after this was written (NOT NULL, no database default) get the model's default.
    rest = [f for f in model._meta.concrete_fields if f.column not in columns and not f.null and not f.primary_key]
    extra = tuple(
        json.dumps(f.get_default()) if f.get_internal_type() == "JSONField" else f.get_default() for f in rest
    )
    names = [*columns, *(f.column for f in rest)]
    connection.ensure_connection()
    with (
        connection.connection.cursor() as cursor,
        cursor.copy(f"COPY {model._meta.db_table} ({', '.join(names)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row((*row, *extra))


def add_data(*, start: int, count: int, ratings_per: int, raters, npcs, rng: random.Random) -> tuple[int, int]:
    """COPY ``count`` exchanges and ``ratings_per`` ratings each (distinct raters) into the database."""
    from django.db import connection

    from agents_app.models import Exchange, Rating

    now = datetime.now(UTC)
    exchange_cols = [
        "id",
        "npc_id",
        "persona_id",
        "source",
        "player_name",
        "player_text",
        "context",
        "prompt",
        "reply_text",
        "raw_text",
        "actions",
        "blocked_actions",
        "base_model_id",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "excluded_from_training",
        "created_at",
    ]
    ids, stamps, exchanges = [], [], []
    for n in range(start, start + count):
        npc = npcs[n % len(npcs)]
        pk = uuid.UUID(int=rng.getrandbits(128), version=4)
        when = now - timedelta(seconds=(start + count - n) * 60 + rng.random())
        text = " ".join(rng.choice(WORDS) for _ in range(5))
        ids.append(pk)
        stamps.append(when)
        exchanges.append(
            (
                str(pk),
                npc.pk,
                npc.persona_id,
                "game",
                f"player{n % (RATERS * 3)}",
                text,
                json.dumps({"pos": [n % 100, 8, 3]}),
                "prompt",
                f"Reply {n}: the {text}",
                f"Reply {n}",
                json.dumps([{"name": "jump", "args": []}] if n % 3 == 0 else []),
                "[]",
                "bench",
                "stop",
                10,
                8,
                False,
                when,
            )
        )
    copy_rows(Exchange, exchange_cols, exchanges)
    rating_cols = [
        "exchange_id",
        "user_id",
        "player_name",
        "score",
        "reason",
        "tags",
        "source",
        "created_at",
        "updated_at",
    ]
    ratings = []
    for pk, when in zip(ids, stamps, strict=True):
        for rater in rng.sample(raters, ratings_per):
            score = 1 if rng.random() < 0.7 else -1
            tags = json.dumps(["helpful"] if score == 1 and rng.random() < 0.3 else [])
            ratings.append((str(pk), rater.pk, "", score, "", tags, "web", when + timedelta(minutes=5), when))
    copy_rows(Rating, rating_cols, ratings)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE agents_app_exchange; ANALYZE agents_app_rating")
    return len(exchanges), len(ratings)


def rebuild_stats() -> float:
    """COPY bypassed the rating services: recount the persona statistics, as an operator would after an import."""
    from django.db import connection

    from agents_app.models import ExchangeRatings, PersonaDayRatings
    from agents_app.services import rating_stats_rebuild

    t0 = time.perf_counter()
    rating_stats_rebuild()
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {ExchangeRatings._meta.db_table}; ANALYZE {PersonaDayRatings._meta.db_table}")
    return round(time.perf_counter() - t0, 2)


def measure(client, path: str, repeat: int, *, cold: bool = False) -> dict:
    """Warm fetches, or with ``cold`` each fetch after emptying the cache (persona statistics recomputed)."""
    from django.core.cache import cache
    from django.db import connection

    for _ in range(3):  # warm caches and the connection
        assert client.get(path).status_code == 200, path
    queries = []
    with connection.execute_wrapper(lambda execute, sql, *args: queries.append(sql) or execute(sql, *args)):
        response = client.get(path)
    assert response.status_code == 200
    times = []
    for _ in range(repeat):
        if cold:
            cache.clear()
        t0 = time.perf_counter()
        client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 2),
        "queries": len(queries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exchanges", type=int, default=100_000)
    parser.add_argument("--ratings", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    if args.ratings > args.exchanges * RATERS:
        sys.exit(f"--ratings: at most {RATERS} per exchange")
    setup_django()
    from django.test import Client

    rng = random.Random(0)
    raters, personas, npcs = base_fixtures()
    client = Client(HTTP_HOST="localhost")
    client.force_login(raters[0])
    pages = {
        "feed": "/replies/",
        "feed_filtered": f"/replies/?persona={personas[0].slug}&unrated=1",
        "persona": f"/personas/{personas[0].slug}/",
    }
    results = {}
    for label, total in (("small", 10), ("large", args.exchanges)):
        have = results.get("small", {}).get("exchanges", 0)
        t0 = time.perf_counter()
        per = max(1, round(args.ratings / args.exchanges))
        made = add_data(start=have, count=total - have, ratings_per=per, raters=raters, npcs=npcs, rng=rng)
        from agents_app.models import Exchange, Rating

        load_s = round(time.perf_counter() - t0, 2)
        results[label] = {
            "exchanges": Exchange.objects.count(),
            "ratings": Rating.objects.count(),
            "load_s": load_s,
            "stats_s": rebuild_stats(),
            "inserted": made,
        }
        for name, path in pages.items():
            results[label][name] = measure(client, path, args.repeat)
        results[label]["persona_cold"] = measure(client, pages["persona"], max(10, args.repeat // 10), cold=True)
        r = results[label]
        print(
            f"{label}: {r['exchanges']} exchanges, {r['ratings']} ratings "
            f"(loaded in {r['load_s']} s, statistics rebuilt in {r['stats_s']} s)"
        )
        for name in [*pages, "persona_cold"]:
            m = r[name]
            print(f"  {name:14s} p50 {m['p50_ms']:7.2f} ms  p95 {m['p95_ms']:7.2f} ms  {m['queries']} queries")
    summary = {
        "feed_p95_ms": results["large"]["feed"]["p95_ms"],
        "feed_p50_ms": results["large"]["feed"]["p50_ms"],
        "feed_filtered_p95_ms": results["large"]["feed_filtered"]["p95_ms"],
        "persona_p95_ms": results["large"]["persona"]["p95_ms"],
        "persona_cold_p95_ms": results["large"]["persona_cold"]["p95_ms"],
        "persona_cold_p50_ms": results["large"]["persona_cold"]["p50_ms"],
        "persona_cold_queries_large": results["large"]["persona_cold"]["queries"],
        "stats_rebuild_s": results["large"]["stats_s"],
        "queries_small": results["small"]["feed"]["queries"],
        "queries_large": results["large"]["feed"]["queries"],
        "persona_queries_small": results["small"]["persona"]["queries"],
        "persona_queries_large": results["large"]["persona"]["queries"],
        "exchanges": results["large"]["exchanges"],
        "ratings": results["large"]["ratings"],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
