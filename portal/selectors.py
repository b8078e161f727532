"""Reads for the portal pages and the API. A fixed number of queries per page, whatever the data size."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Exists, OuterRef, Q, Sum
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from agents_app import arena, policy
from agents_app.models import (
    AdapterVersion,
    Exchange,
    ExchangeRatings,
    GameServer,
    PersonaDayRatings,
    PlayerLink,
    Rating,
)
from agents_app.services import ServiceError
from portal import access
from portal.access import PLAYGROUND_PREFIX, playground_player_name

ANONYMOUS_PLAYER = "a player"
# Versions the playground offers; a validated one is visible only to its owner and the moderators.
PLAYGROUND_STATUSES = (AdapterVersion.Status.VALIDATED, AdapterVersion.Status.APPROVED, AdapterVersion.Status.ACTIVE)

REASON_TAGS = {
    "off_character": "off-character",
    "wrong_world": "wrong about the world",
    "rude": "rude",
    "unsafe_action": "unsafe action",
    "helpful": "helpful",
    "funny": "funny",
}
FEED_PAGE_SIZE = 20
# Long columns no page shows: the prompt as the model saw it, the raw output, the adapters' cards.
HEAVY_FIELDS = (
    "prompt",
    "raw_text",
    "adapter_version__model_card",
    "adapter_version__metrics",
    "persona__system_prompt",
)
FEED_MAX_PAGE_SIZE = 100


def linked_player_names(user) -> list[str]:
    if not user.is_authenticated:
        return []
    return list(PlayerLink.objects.filter(user=user, verified_at__isnull=False).values_list("player_name", flat=True))


def mine_q(user, names: list[str]) -> Q:
    return Q(player_name__in=names) | Q(source=Exchange.Source.PLAYGROUND, player_name=playground_player_name(user))


@dataclass
class FeedItem:
    exchange: Exchange
    shown_player: str
    player_text: str = ""  # the player's words as others see them: personal data hidden (the policy's rule)
    up: int = 0
    down: int = 0
    my_score: int | None = None
    my_tags: list[str] = field(default_factory=list)
    my_reason: str = ""

    @property
    def tag_choices(self) -> list[tuple[str, str, bool]]:
        return [(key, label, key in self.my_tags) for key, label in REASON_TAGS.items()]

    @property
    def rate_url(self) -> str:
        return f"/replies/{self.exchange.pk}/rate/"

    @property
    def unrate_url(self) -> str:
        return f"/replies/{self.exchange.pk}/unrate/"

    @property
    def where(self) -> str:
        e = self.exchange
        version = f"v{e.adapter_version.version}" if e.adapter_version_id else "base model"
        place = e.npc.game_server.name if e.npc.game_server_id else e.get_source_display()
        return f"{version} · {place} · {e.created_at:%Y-%m-%d %H:%M}"


def blank_feed_item() -> dict:
    """The rating controls' context for a reply not stored yet (the playground fills the URLs in)."""
    return {
        "rate_url": "",
        "unrate_url": "",
        "up": 0,
        "down": 0,
        "my_score": None,
        "my_tags": [],
        "my_reason": "",
        "tag_choices": [(key, label, False) for key, label in REASON_TAGS.items()],
    }


@dataclass
class FeedPage:
    items: list[FeedItem]
    next_cursor: str | None


def encode_cursor(exchange: Exchange) -> str:
    raw = f"{exchange.created_at.isoformat()}|{exchange.pk}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, pk = raw.partition("|")
        when = parse_datetime(stamp)
        if when is None:
            raise ValueError(stamp)
        return when, uuid.UUID(pk)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ServiceError("cursor: not a cursor this feed handed out (follow the 'older' link)") from None


def display_names(exchanges: list[Exchange], viewer) -> dict[str, str]:
    """Player name → what the portal may show: the name only with its owner's consent (one query)."""
    names = {e.player_name for e in exchanges}
    own = set(linked_player_names(viewer)) if viewer.is_authenticated else set()
    if viewer.is_authenticated:
        own.add(playground_player_name(viewer))
    public = set(
        PlayerLink.objects.filter(
            player_name__in=names - own, verified_at__isnull=False, show_publicly=True
        ).values_list("player_name", flat=True)
    )
    shown = {}
    for name in names:
        if name in own:
            shown[name] = "you" if name.startswith(PLAYGROUND_PREFIX) else f"{name} (you)"
        elif name in public:
            shown[name] = name
        else:
            shown[name] = ANONYMOUS_PLAYER
    return shown


def rating_counts(exchange_ids: list) -> dict:
    rows = (
        Rating.objects.filter(exchange_id__in=exchange_ids)
        .values("exchange_id")
        .annotate(up=Count("id", filter=Q(score=1)), down=Count("id", filter=Q(score=-1)))
    )
    return {row["exchange_id"]: (row["up"], row["down"]) for row in rows}


def feed_items(exchanges: list[Exchange], viewer) -> list[FeedItem]:
    """Decorate a page of exchanges with counts, the viewer's rating, shown names and the players' words with
    personal data hidden: 4 queries at most."""
    if not exchanges:
        return []
    ids = [e.pk for e in exchanges]
    counts = rating_counts(ids)
    rules = policy.RuleSet.read_many({e.persona_id for e in exchanges})
    mine = {}
    if viewer.is_authenticated:
        mine = {
            r.exchange_id: r
            for r in Rating.objects.filter(exchange_id__in=ids, user=viewer).only(
                "exchange_id", "score", "tags", "reason"
            )
        }
    shown = display_names(exchanges, viewer)
    items = []
    for e in exchanges:
        up, down = counts.get(e.pk, (0, 0))
        mine_rating = mine.get(e.pk)
        items.append(
            FeedItem(
                exchange=e,
                shown_player=shown[e.player_name],
                player_text=policy.redact_personal_data(e.player_text, rules[e.persona_id]),
                up=up,
                down=down,
                my_score=mine_rating.score if mine_rating else None,
                my_tags=list(mine_rating.tags or []) if mine_rating else [],
                my_reason=mine_rating.reason if mine_rating else "",
            )
        )
    return items


def feed_page(
    *,
    viewer,
    persona_slug: str = "",
    server_id: int | None = None,
    mine: bool = False,
    unrated: bool = False,
    cursor: str = "",
    limit: int = FEED_PAGE_SIZE,
) -> FeedPage:
    """Newest replies first, keyset-paginated on (created_at, id)."""
    if not 1 <= limit <= FEED_MAX_PAGE_SIZE:
        raise ServiceError(f"limit: must be between 1 and {FEED_MAX_PAGE_SIZE}, not {limit}")
    qs = (
        access.visible_exchanges(viewer)
        .select_related("persona", "npc__game_server", "adapter_version")
        .defer(*HEAVY_FIELDS)
    )
    if persona_slug:
        qs = qs.filter(persona__slug=persona_slug)
    if server_id is not None:
        qs = qs.filter(npc__game_server_id=server_id)
    if (mine or unrated) and not viewer.is_authenticated:
        raise ServiceError("log in to filter by your own conversations or ratings", code="forbidden")
    if mine:
        qs = qs.filter(mine_q(viewer, linked_player_names(viewer)))
    if unrated:
        qs = qs.exclude(Exists(Rating.objects.filter(exchange=OuterRef("pk"), user=viewer)))
    if cursor:
        when, pk = decode_cursor(cursor)
        qs = qs.filter(Q(created_at__lt=when) | Q(created_at=when, id__lt=pk))
    rows = list(qs.order_by("-created_at", "-id")[: limit + 1])
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return FeedPage(items=feed_items(rows[:limit], viewer), next_cursor=next_cursor)


def feed_servers():
    return GameServer.objects.filter(enabled=True).order_by("name").values("id", "name")


# --- personas -------------------------------------------------------------------------------------


def wilson_interval(ups: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a thumbs-up share: wide for a handful of ratings, narrow for many."""
    if total <= 0:
        return 0.0, 1.0
    p = ups / total
    centre = p + z * z / (2 * total)
    margin = z * ((p * (1 - p) + z * z / (4 * total)) / total) ** 0.5
    scale = 1 + z * z / total
    return max(0.0, (centre - margin) / scale), min(1.0, (centre + margin) / scale)


CATALOG_SORTS = {"rating": "best rated", "activity": "most active (30 days)", "newest": "newest", "name": "name"}
CATALOG_ACTIVITY_DAYS = 30


@dataclass
class CatalogEntry:
    persona: object
    exchange_count: int
    recent_count: int
    ups: int
    total: int

    @property
    def share(self) -> int | None:
        return round(100 * self.ups / self.total) if self.total else None

    @property
    def score(self) -> float:
        return wilson_interval(self.ups, self.total)[0] if self.total else -1.0


def persona_catalog(viewer, *, q: str = "", tag: str = "", sort: str = "rating") -> tuple[list[CatalogEntry], list]:
    """The personas the viewer may see, searched (name, slug, description), narrowed to one trait tag, sorted.

    Returns (entries, every tag among the visible personas). Two queries: the personas with their exchange
    counts, and their thumbs from the per-day counts. Tags are matched here, not in SQL: JSON list lookups
    differ between PostgreSQL and SQLite, and a catalogue is a few hundred rows.
    """
    if sort not in CATALOG_SORTS:
        raise ServiceError(f"sort: must be one of {', '.join(CATALOG_SORTS)}, not {sort[:40]!r}")
    since = timezone.now() - timedelta(days=CATALOG_ACTIVITY_DAYS)
    public = Q(exchanges__is_test=False)
    personas = list(
        access.visible_personas(viewer)
        .select_related("active_adapter")
        .annotate(
            exchange_count=Count("exchanges", filter=public, distinct=True),
            recent_count=Count("exchanges", filter=public & Q(exchanges__created_at__gte=since), distinct=True),
        )
    )
    all_tags = sorted({t for p in personas for t in (p.traits or []) if isinstance(t, str)}, key=str.lower)
    q = (q or "").strip().lower()
    if q:
        personas = [p for p in personas if q in f"{p.name}\n{p.slug}\n{p.description}".lower()]
    if tag:
        personas = [p for p in personas if tag in (p.traits or [])]
    thumbs = {
        row["persona_id"]: (row["ups"] or 0, (row["ups"] or 0) + (row["downs"] or 0))
        for row in PersonaDayRatings.objects.filter(persona__in=[p.pk for p in personas])
        .values("persona_id")
        .annotate(ups=Sum("ups"), downs=Sum("downs"))
    }
    entries = [CatalogEntry(p, p.exchange_count, p.recent_count, *thumbs.get(p.pk, (0, 0))) for p in personas]
    order = {
        "rating": lambda e: (-e.score, e.persona.name.lower()),
        "activity": lambda e: (-e.recent_count, -e.exchange_count, e.persona.name.lower()),
        "newest": lambda e: (-e.persona.created_at.timestamp(), e.persona.name.lower()),
        "name": lambda e: e.persona.name.lower(),
    }[sort]
    return sorted(entries, key=order), all_tags


@dataclass
class VersionFigures:
    """One column of a persona page's side-by-side table: a version (None: the base model) and its figures."""

    label: str
    adapter: object | None
    ups: int = 0
    total: int = 0
    exchanges: int = 0
    policy_hits: int = 0
    battle: object | None = None  # its arena standing (bradley_terry.Rating), if it fought

    @property
    def share(self) -> int | None:
        return round(100 * self.ups / self.total) if self.total else None

    @property
    def interval(self) -> tuple[int, int] | None:
        if not self.total:
            return None
        low, high = wilson_interval(self.ups, self.total)
        return round(100 * low), round(100 * high)


def persona_version_figures(persona, viewer) -> list[VersionFigures]:
    """Each version the viewer may see, newest first, then the base model: thumbs (with a 95% interval),
    exchanges and policy hits, each from one grouped query (tests of unapproved versions not counted),
    and its arena rating (the leaderboard's Bradley–Terry fit)."""
    from agents_app.models import PolicyFlag

    versions = list(persona_versions(persona, viewer))
    columns = {v.pk: VersionFigures(f"v{v.version}", v) for v in versions}
    columns[None] = VersionFigures("base model", None)
    for row in (
        PersonaDayRatings.objects.filter(persona=persona)
        .values("adapter_version_id")
        .annotate(ups=Sum("ups"), downs=Sum("downs"))
    ):
        if row["adapter_version_id"] in columns:
            column = columns[row["adapter_version_id"]]
            column.ups, column.total = row["ups"] or 0, (row["ups"] or 0) + (row["downs"] or 0)
    for row in (
        Exchange.objects.filter(persona=persona, is_test=False).values("adapter_version_id").annotate(n=Count("id"))
    ):
        if row["adapter_version_id"] in columns:
            columns[row["adapter_version_id"]].exchanges = row["n"]
    for row in (
        PolicyFlag.objects.filter(exchange__persona=persona, exchange__is_test=False)
        .values("exchange__adapter_version_id")
        .annotate(n=Count("id"))
    ):
        if row["exchange__adapter_version_id"] in columns:
            columns[row["exchange__adapter_version_id"]].policy_hits = row["n"]
    for _, standings in arena.leaderboard([persona]):
        for standing in standings:
            key = standing.version.pk if standing.version else None
            if key in columns:
                columns[key].battle = standing.rating
    base = columns.pop(None)
    shown = list(columns.values())
    if base.total or base.exchanges or base.battle or not shown:
        shown.append(base)
    return shown


@dataclass
class TrendSeries:
    version: str
    points: list[tuple[str, float, int]]  # (day, share of thumbs up, ratings that day)


def persona_trend(persona, *, days: int = 90) -> list[TrendSeries]:
    """Share of thumbs up per adapter version per day: one query over the precomputed day counts.

    ``PersonaDayRatings`` holds a row per version per day (kept by the rating services), so this
    reads at most versions × ``days`` rows, however many ratings there are.
    """
    since = timezone.localdate(timezone.now() - timedelta(days=days), timezone.get_default_timezone())
    rows = (
        PersonaDayRatings.objects.filter(persona=persona, day__gte=since)
        .filter(Q(ups__gt=0) | Q(downs__gt=0))
        .values_list("adapter_version__version", "day", "ups", "downs")
        .order_by("adapter_version__version", "day")
    )
    series: dict[str, TrendSeries] = {}
    for version, day, ups, downs in rows:
        label = f"v{version}" if version is not None else "base model"
        s = series.setdefault(label, TrendSeries(label, []))
        s.points.append((day.isoformat(), ups / (ups + downs), ups + downs))
    return list(series.values())


def trend_svg(series: list[TrendSeries], width: int = 560, height: int = 180) -> dict:
    """Coordinates for an inline SVG line chart, computed here so the template only draws."""
    days = sorted({p[0] for s in series for p in s.points})
    if not days:
        return {"lines": [], "width": width, "height": height, "days": []}
    pad = 30
    right = 90  # room for each line's label and latest share
    step = (width - pad - right) / max(len(days) - 1, 1)
    # A single day sits in the middle, so one day of ratings is a labelled point, not a dot on the axis.
    x_of = {d: pad + i * step for i, d in enumerate(days)} if len(days) > 1 else {days[0]: (width - right + pad) / 2}
    colours = ["#2f5d3a", "#c0392b", "#2874a6", "#b9770e", "#7d3c98", "#566573"]
    lines = []
    for i, s in enumerate(series):
        pts = [(round(x_of[d], 1), round(pad + (1 - share) * (height - 2 * pad), 1), n) for d, share, n in s.points]
        last_share = s.points[-1][1]
        lines.append(
            {
                "label": s.version,
                "colour": colours[i % len(colours)],
                "points": " ".join(f"{x},{y}" for x, y, _ in pts),
                "dots": pts,
                "latest": f"{s.version} {round(100 * last_share)}%",
                "latest_x": pts[-1][0] + 8,
                "latest_y": pts[-1][1] + 4,
                "ratings": sum(n for _, _, n in s.points),
            }
        )
    return {
        "lines": lines,
        "width": width,
        "height": height,
        "days": [days[0], days[-1]],
        "one_day": len(days) == 1,
        "pad": pad,
        "mid_y": height / 2,
        "bottom": height - pad,
        "axis_right": width - right,
    }


def persona_extremes(persona, viewer, *, n: int = 3) -> tuple[list[FeedItem], list[FeedItem]]:
    """The best (net score > 0) and the worst (net < 0) rated replies, with live counts.

    Each side's ids are the first ``n`` entries of an index on the precomputed net scores
    (``ExchangeRatings``: most net first, then most ratings, then by id); the replies come in one
    query after (cheaper to plan than the join from the scores).
    """
    sums = ExchangeRatings.objects.filter(persona=persona).values_list("exchange_id", flat=True)
    best_ids = list(sums.filter(net__gt=0).order_by("-net", "-total", "exchange_id")[:n])
    worst_ids = list(sums.filter(net__lt=0).order_by("net", "-total", "exchange_id")[:n])
    rows = list(
        access.visible_exchanges(viewer)
        .filter(pk__in=best_ids + worst_ids)
        .select_related("persona", "npc__game_server", "adapter_version")
        .defer(*HEAVY_FIELDS)
    )
    items = {i.exchange.pk: i for i in feed_items(rows, viewer)}
    return [items[i] for i in best_ids if i in items], [items[i] for i in worst_ids if i in items]


def persona_shares(persona):
    """The game servers a persona is shared with, for its owner's edit page and the API."""
    return persona.shares.select_related("game_server__owner").order_by("game_server__name", "game_server_id")


def persona_versions(persona, viewer):
    return access.visible_adapter_versions(viewer).filter(persona=persona).order_by("-version")


# --- leaderboards ---------------------------------------------------------------------------------


def persona_leaderboard(viewer, *, limit: int = 20) -> list[dict]:
    # From the per-day counts kept with each rating (PersonaDayRatings), not from every rating.
    rows = list(
        PersonaDayRatings.objects.filter(persona__in=access.visible_personas(viewer))
        .values("persona__slug", "persona__name")
        .annotate(up=Sum("ups"), total=Sum("ups") + Sum("downs"))
        .filter(total__gt=0)
        .order_by("-total")[:200]
    )
    for row in rows:
        # Wilson lower bound: a persona with 3/3 does not beat one with 950/1000.
        n, p, z = row["total"], row["up"] / row["total"], 1.96
        row["score"] = (p + z * z / (2 * n) - z * ((p * (1 - p) + z * z / (4 * n)) / n) ** 0.5) / (1 + z * z / n)
        row["share"] = round(100 * p)
    rows.sort(key=lambda r: -r["score"])
    return rows[:limit]


def rater_leaderboard(*, limit: int = 20) -> list[dict]:
    return list(
        Rating.objects.filter(user__isnull=False)
        .values("user__username")
        .annotate(ratings=Count("id"))
        .order_by("-ratings", "user__username")[:limit]
    )


# --- compare --------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9']+")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "am",
        "i",
        "me",
        "my",
        "you",
        "your",
        "we",
        "it",
        "to",
        "of",
        "in",
        "on",
        "at",
        "do",
        "does",
        "can",
        "could",
        "please",
    ]
)


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower())) - _STOP


def compare_pair(viewer, *, persona_slug: str = "", window: int = 200):
    """Two replies of one persona to similar player words that the viewer has not compared yet.

    Similarity is word overlap (Jaccard) over the persona's latest ``window`` replies: enough to
    pair "where is iron?" with "where can I find iron", cheap enough for every page view.
    """
    personas = access.visible_personas(viewer)
    if persona_slug:
        personas = personas.filter(slug=persona_slug)
    recent = list(
        Exchange.objects.filter(persona__in=personas, is_test=False)
        .exclude(reply_text="")
        .select_related("persona", "adapter_version", "npc__game_server")
        .order_by("-created_at")[:window]
    )
    voted = set()
    if viewer.is_authenticated:
        ids = [e.pk for e in recent]
        voted = {
            frozenset(p)
            for p in access.own_pairwise_votes(viewer)
            .filter(left_id__in=ids, right_id__in=ids)
            .values_list("left_id", "right_id")
        }
    best, best_score = None, 0.0
    words = {e.pk: _words(e.player_text) for e in recent}
    for i, a in enumerate(recent):
        for b in recent[i + 1 :]:
            if a.persona_id != b.persona_id or a.reply_text == b.reply_text:
                continue
            if frozenset((a.pk, b.pk)) in voted:
                continue
            wa, wb = words[a.pk], words[b.pk]
            score = len(wa & wb) / len(wa | wb) if wa | wb else 0.0
            if score > best_score:
                best, best_score = (a, b), score
    if best is None or best_score < 0.3:
        return None
    left, right = best
    items = feed_items([left, right], viewer)
    return items[0], items[1], best_score


def adapter_versions_for_playground(viewer):
    return (
        access.visible_adapter_versions(viewer)
        .filter(status__in=PLAYGROUND_STATUSES)
        .select_related("persona")
        .order_by("persona__name", "-version")
    )
