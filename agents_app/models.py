"""The game-facing domain: who the NPCs are, what they said, and what players thought.

Integrity rules live in the database (unique and check constraints), so a bug
in one process or a race between two cannot store a duplicate rating or a
second active adapter.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import IntegrityError, models, transaction
from django.db.models import F, Q
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils import timezone

slug_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9_-]{1,62}$",
    "A slug is 2-63 characters: lowercase letters, digits, '-' and '_', starting with a letter or digit.",
)


class Persona(models.Model):
    slug = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=80)
    description = models.TextField(blank=True)
    traits = models.JSONField(
        default=list, blank=True, help_text="Short trait phrases, e.g. 'gruff', 'knows the mines'."
    )
    system_prompt = models.TextField(blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="personas")
    active_adapter = models.ForeignKey(
        "AdapterVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    allowed_actions = models.JSONField(
        default=list,
        blank=True,
        help_text="Action names this persona may take in the world; anything else is blocked.",
    )
    temperature = models.FloatField(default=0.8, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)])
    top_p = models.FloatField(default=0.95, validators=[MinValueValidator(0.01), MaxValueValidator(1.0)])
    max_tokens = models.PositiveSmallIntegerField(
        default=64,
        validators=[MinValueValidator(1), MaxValueValidator(512)],
        help_text="The reply's length budget in tokens: a reply that reaches it ends on its last whole sentence.",
    )
    repetition_penalty = models.FloatField(
        default=1.15,
        validators=[MinValueValidator(1.0), MaxValueValidator(2.0)],
        help_text="1 to 2: above 1, a reply is less likely to use its own words again (1: off).",
    )
    is_public = models.BooleanField(default=True)
    canary_adapter = models.ForeignKey(
        "AdapterVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    canary_percent = models.PositiveSmallIntegerField(
        default=10,
        validators=[MaxValueValidator(100)],
        help_text="The share of live asks (0-100 %) a canary version answers while it is on trial; 0: "
        "a nightly run's candidate goes straight to active.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(temperature__gte=0) & Q(temperature__lte=2), name="persona_temperature_range"
            ),
            models.CheckConstraint(condition=Q(top_p__gt=0) & Q(top_p__lte=1), name="persona_top_p_range"),
            models.CheckConstraint(
                condition=Q(max_tokens__gte=1) & Q(max_tokens__lte=512), name="persona_max_tokens_range"
            ),
            models.CheckConstraint(
                condition=Q(repetition_penalty__gte=1) & Q(repetition_penalty__lte=2),
                name="persona_repetition_penalty_range",
            ),
            models.CheckConstraint(condition=Q(canary_percent__lte=100), name="persona_canary_percent_range"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"


class AdapterVersion(models.Model):
    class Status(models.TextChoices):
        UPLOADED = "uploaded", "Uploaded"
        VALIDATED = "validated", "Validated"
        APPROVED = "approved", "Approved"
        ACTIVE = "active", "Active"
        CANARY = "canary", "Canary (answers a share of live asks)"
        REJECTED = "rejected", "Rejected"
        RETIRED = "retired", "Retired"

    class Source(models.TextChoices):
        UPLOAD = "upload", "Upload"
        TRAINING = "training", "Training"

    persona = models.ForeignKey(Persona, on_delete=models.PROTECT, related_name="adapter_versions")
    version = models.PositiveIntegerField()
    files_path = models.CharField(max_length=500, help_text="PEFT adapter directory, relative to MEDIA_ROOT.")
    sha256 = models.CharField(max_length=64, validators=[RegexValidator(r"^[0-9a-f]{64}$")])
    base_model_id = models.CharField(max_length=200)
    rank = models.PositiveSmallIntegerField()
    target_modules = models.JSONField(default=list)
    size_bytes = models.PositiveBigIntegerField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.UPLOADED, db_index=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.UPLOAD)
    model_card = models.TextField(blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    validation_error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    status_changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["persona", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["persona", "version"], name="adapter_version_unique_per_persona"),
            models.UniqueConstraint(
                fields=["persona"], condition=Q(status="active"), name="adapter_one_active_per_persona"
            ),
            models.UniqueConstraint(
                fields=["persona"], condition=Q(status="canary"), name="adapter_one_canary_per_persona"
            ),
            models.CheckConstraint(condition=Q(version__gte=1), name="adapter_version_positive"),
            models.CheckConstraint(condition=Q(rank__gte=1) & Q(rank__lte=256), name="adapter_rank_range"),
            models.CheckConstraint(
                condition=Q(
                    status__in=["uploaded", "validated", "approved", "active", "canary", "rejected", "retired"]
                ),
                name="adapter_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.persona.slug} v{self.version} ({self.status})"

    @property
    def absolute_path(self):
        from pathlib import Path

        return Path(settings.MEDIA_ROOT) / self.files_path


def _hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class GameServer(models.Model):
    """A registered Luanti server. Its token is shown once and stored only as a hash."""

    TOKEN_PREFIX = "vgs_"  # noqa: S105 (a public prefix, not a secret)

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="game_servers")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_hint = models.CharField(
        max_length=12, editable=False, help_text="First characters of the token, to tell tokens apart."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="game_server_name_unique_per_owner"),
        ]

    def __str__(self) -> str:
        return self.name

    def set_new_token(self) -> str:
        """Give the server a fresh token; returns it in the clear (the only time it exists)."""
        raw = self.TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.token_hash = _hash_token(raw)
        self.token_hint = raw[:10]
        return raw

    def verify_token(self, raw: str) -> bool:
        return hmac.compare_digest(self.token_hash, _hash_token(raw))

    @classmethod
    def hash_token(cls, raw: str) -> str:
        return _hash_token(raw)


class PersonaShare(models.Model):
    """A private persona's owner lets one more game server use it (``agents_app.visibility``).

    Only the game server gains: its NPCs may speak as the persona. Nobody gains sight of the
    persona on the portal by it.
    """

    persona = models.ForeignKey(Persona, on_delete=models.CASCADE, related_name="shares")
    game_server = models.ForeignKey(GameServer, on_delete=models.CASCADE, related_name="persona_shares")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["persona", "game_server"]
        constraints = [
            models.UniqueConstraint(fields=["persona", "game_server"], name="persona_share_once_per_server"),
        ]

    def __str__(self) -> str:
        return f"{self.persona.slug} → {self.game_server}"


class Npc(models.Model):
    game_server = models.ForeignKey(GameServer, on_delete=models.CASCADE, related_name="npcs", null=True, blank=True)
    world_id = models.CharField(max_length=100, help_text="The NPC's id in the world, as the mod names it.")
    persona = models.ForeignKey(Persona, on_delete=models.PROTECT, related_name="npcs")
    display_name = models.CharField(max_length=80, blank=True)
    frozen_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_active_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["game_server", "world_id"]
        constraints = [
            models.UniqueConstraint(fields=["game_server", "world_id"], name="npc_unique_in_world"),
            # Playground NPCs (no game server) are keyed by world_id alone.
            models.UniqueConstraint(
                fields=["world_id"], condition=Q(game_server__isnull=True), name="npc_unique_playground"
            ),
        ]

    def __str__(self) -> str:
        return self.display_name or self.world_id

    def is_frozen(self, now=None) -> bool:
        return self.frozen_until is not None and self.frozen_until > (now or timezone.now())


class Exchange(models.Model):
    """One player turn and the NPC's reply, with the adapter version that produced it."""

    class Source(models.TextChoices):
        GAME = "game", "Game"
        PLAYGROUND = "playground", "Playground"
        SIMULATION = "simulation", "Simulation"
        ARENA = "arena", "Arena battle"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    npc = models.ForeignKey(Npc, on_delete=models.PROTECT, related_name="exchanges")
    persona = models.ForeignKey(Persona, on_delete=models.PROTECT, related_name="exchanges")
    source = models.CharField(max_length=12, choices=Source.choices, default=Source.GAME)
    player_name = models.CharField(max_length=64)
    player_text = models.TextField()
    context = models.JSONField(default=dict, blank=True)
    prompt = models.TextField(help_text="The prompt exactly as the model saw it.")
    reply_text = models.TextField(blank=True)
    raw_text = models.TextField(blank=True, help_text="The model's output before actions were parsed out.")
    actions = models.JSONField(default=list, blank=True)
    blocked_actions = models.JSONField(default=list, blank=True)
    adapter_version = models.ForeignKey(
        AdapterVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="exchanges"
    )
    base_model_id = models.CharField(max_length=200, blank=True)
    finish_reason = models.CharField(max_length=16, blank=True)
    worker_id = models.CharField(max_length=100, blank=True, help_text="The inference worker that answered.")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    total_ms = models.FloatField(null=True, blank=True)
    excluded_from_training = models.BooleanField(default=False)
    is_test = models.BooleanField(
        default=False,
        help_text="A try of a version not yet approved (the playground): out of the public feed and of training.",
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["persona", "-created_at"], name="exchange_persona_recent"),
            models.Index(fields=["npc", "-created_at"], name="exchange_npc_recent"),
            models.Index(fields=["player_name", "-created_at"], name="exchange_player_recent"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(ttft_ms__isnull=True) | Q(ttft_ms__gte=0), name="exchange_ttft_nonnegative"
            ),
            models.CheckConstraint(
                condition=Q(total_ms__isnull=True) | Q(total_ms__gte=0), name="exchange_total_nonnegative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.player_name} → {self.npc}: {self.reply_text[:40]}"


class Rating(models.Model):
    """A thumbs up or down. One per rater per exchange; changing it updates the row."""

    class Source(models.TextChoices):
        WEB = "web", "Web portal"
        GAME = "game", "In game"

    exchange = models.ForeignKey(Exchange, on_delete=models.PROTECT, related_name="ratings")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="ratings"
    )
    player_name = models.CharField(
        max_length=64, blank=True, help_text="A player not linked to a portal account, rating in game."
    )
    score = models.SmallIntegerField(choices=[(1, "👍"), (-1, "👎")])
    reason = models.CharField(max_length=500, blank=True)
    tags = models.JSONField(default=list, blank=True)
    source = models.CharField(max_length=5, choices=Source.choices, default=Source.WEB)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.CheckConstraint(condition=Q(score__in=[1, -1]), name="rating_score_plus_minus_one"),
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(player_name="")) | (Q(user__isnull=True) & ~Q(player_name="")),
                name="rating_has_exactly_one_rater",
            ),
            models.UniqueConstraint(
                fields=["exchange", "user"], condition=Q(user__isnull=False), name="rating_one_per_user"
            ),
            models.UniqueConstraint(
                fields=["exchange", "player_name"],
                condition=Q(user__isnull=True),
                name="rating_one_per_player",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rater_label}: {self.score:+d} on {self.exchange_id}"

    @property
    def rater_label(self) -> str:
        return self.user.get_username() if self.user_id else f"player:{self.player_name}"


# --- rating statistics -------------------------------------------------------------------------------
#
# What the persona page shows (the trend per version and day, the best and worst replies) would
# otherwise aggregate every rating of the persona. These tables hold the sums. The rating services
# (agents_app.services.rating_upsert) change them in the same transaction as each rating write, and
# a rating deleted through the ORM (the admin) takes its counts with it (rating_counts_deleted).
# ``manage.py rebuild_rating_stats`` recomputes both from the ratings, e.g. after a bulk import.


def rating_day(rating: Rating):
    """The day a rating counts on: when it was first given, in the site's time zone (a change keeps it)."""
    return timezone.localdate(rating.created_at, timezone.get_default_timezone())


class PersonaDayRatings(models.Model):
    """Thumbs up and down given on one day to the replies of one persona by one adapter version."""

    # db_index off: the composite indexes below start with the persona.
    persona = models.ForeignKey(Persona, on_delete=models.CASCADE, related_name="+", db_index=False)
    adapter_version = models.ForeignKey(
        AdapterVersion,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="Empty: the base model.",
    )
    day = models.DateField()
    ups = models.IntegerField(default=0)
    downs = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["persona", "adapter_version", "day"],
                condition=Q(adapter_version__isnull=False),
                name="persona_day_ratings_one_per_version",
            ),
            models.UniqueConstraint(
                fields=["persona", "day"],
                condition=Q(adapter_version__isnull=True),
                name="persona_day_ratings_one_base",
            ),
        ]
        indexes = [models.Index(fields=["persona", "day"], name="persona_day_ratings_recent")]

    def __str__(self) -> str:
        return f"{self.persona_id} v{self.adapter_version_id or '-'} {self.day}: +{self.ups} -{self.downs}"


class ExchangeRatings(models.Model):
    """One rated reply's net score (ups − downs) and number of ratings; best and worst are an index scan."""

    exchange = models.OneToOneField(Exchange, primary_key=True, on_delete=models.CASCADE, related_name="rating_sums")
    # The exchange's, copied here so the best and worst are one index scan (the indexes start with it).
    persona = models.ForeignKey(Persona, on_delete=models.CASCADE, related_name="+", db_index=False)
    net = models.IntegerField(default=0)
    total = models.IntegerField(default=0)

    class Meta:
        indexes = [
            # Best: net high first, then more ratings; worst: net low first, then more ratings; ties by id.
            models.Index(fields=["persona", "-net", "-total", "exchange"], name="exchange_ratings_best"),
            models.Index(fields=["persona", "net", "-total", "exchange"], name="exchange_ratings_worst"),
        ]

    def __str__(self) -> str:
        return f"{self.exchange_id}: {self.net:+d} of {self.total}"


def _counts_add(model, keys: dict, changes: dict, *, create: dict | None) -> None:
    """Add ``changes`` to the counters of the row at ``keys``; a missing row is inserted with ``create``.

    ``UPDATE ... SET n = n + d`` is exact under concurrent writers (the row lock orders them); two
    writers inserting the same missing row meet the unique constraint, and the loser adds instead.
    ``create=None``: the row must exist (the vote changed or went, so it was counted once).
    """
    adds = {name: F(name) + delta for name, delta in changes.items() if delta}
    if not adds or model.objects.filter(**keys).update(**adds):
        return
    if create is None:
        # Changing counts never made: the rating was written around the services (a bulk load).
        # Made-up numbers would be worse than none; the rebuild puts them right.
        logging.getLogger("voyager.ratings").warning(
            "%s %s: rating statistics out of step; run `manage.py rebuild_rating_stats`", model.__name__, keys
        )
        return
    try:
        with transaction.atomic():
            model.objects.create(**keys, **create, **changes)
    except IntegrityError:
        model.objects.filter(**keys).update(**adds)


def rating_counts_change(*, exchange: Exchange, day, old_score: int | None, new_score: int | None) -> None:
    """Move one rating's vote in the statistics: None → ±1 (new), ±1 → ∓1 (changed), ±1 → None (removed).

    Call inside the transaction that writes the rating. A test of an unapproved version moves nothing:
    no public figure counts tests.
    """
    if exchange.is_test:
        return
    ups = (new_score == 1) - (old_score == 1)
    downs = (new_score == -1) - (old_score == -1)
    first = old_score is None  # only a new vote may start a row
    _counts_add(
        PersonaDayRatings,
        {"persona_id": exchange.persona_id, "adapter_version_id": exchange.adapter_version_id, "day": day},
        {"ups": ups, "downs": downs},
        create={} if first else None,
    )
    _counts_add(
        ExchangeRatings,
        {"exchange_id": exchange.pk},
        {"net": ups - downs, "total": ups + downs},
        create={"persona_id": exchange.persona_id} if first else None,
    )


@receiver(post_delete, sender=Rating, dispatch_uid="voyager-rating-counts-deleted")
def rating_counts_deleted(sender, instance: Rating, **kwargs) -> None:
    """A deleted rating (admin, queryset) leaves the statistics in its transaction (post_delete runs in it)."""
    exchange = (
        Exchange.objects.only("persona_id", "adapter_version_id", "is_test").filter(pk=instance.exchange_id).first()
    )
    if exchange is not None:
        rating_counts_change(exchange=exchange, day=rating_day(instance), old_score=instance.score, new_score=None)


class PairwiseVote(models.Model):
    class Outcome(models.TextChoices):
        LEFT = "left", "Left is better"
        RIGHT = "right", "Right is better"
        TIE = "tie", "Tie"
        BOTH_BAD = "both_bad", "Both bad"

    left = models.ForeignKey(Exchange, on_delete=models.PROTECT, related_name="+")
    right = models.ForeignKey(Exchange, on_delete=models.PROTECT, related_name="+")
    voter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="pairwise_votes"
    )
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=~Q(left=F("right")), name="pairwise_distinct_exchanges"),
            models.CheckConstraint(
                condition=Q(outcome__in=["left", "right", "tie", "both_bad"]), name="pairwise_outcome_valid"
            ),
            models.UniqueConstraint(fields=["voter", "left", "right"], name="pairwise_one_vote_per_pair"),
        ]

    def __str__(self) -> str:
        return f"{self.left_id} vs {self.right_id}: {self.outcome}"


class Battle(models.Model):
    """Two versions of one persona answer the same words in one engine batch, and the player picks.

    ``left`` and ``right`` are the exchanges as the page showed them (the sides drawn at random);
    each keeps the adapter version that answered it, which the page names only after the vote.
    A vote with a preference also becomes a ``PairwiseVote``, so it reaches training like any other.
    """

    class Outcome(models.TextChoices):
        LEFT = "left", "Left is better"
        RIGHT = "right", "Right is better"
        TIE = "tie", "Tie"
        BOTH_BAD = "both_bad", "Both bad"
        SKIP = "skip", "Skipped"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    persona = models.ForeignKey(Persona, on_delete=models.PROTECT, related_name="battles")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="battles")
    player_text = models.TextField()
    left = models.ForeignKey(Exchange, on_delete=models.PROTECT, related_name="+")
    right = models.ForeignKey(Exchange, on_delete=models.PROTECT, related_name="+")
    outcome = models.CharField(max_length=8, choices=Outcome.choices, blank=True)
    vote = models.ForeignKey(PairwiseVote, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    voted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=~Q(left=F("right")), name="battle_distinct_exchanges"),
            models.CheckConstraint(
                condition=Q(outcome__in=["", "left", "right", "tie", "both_bad", "skip"]), name="battle_outcome_valid"
            ),
            models.CheckConstraint(
                condition=Q(outcome="", voted_at__isnull=True) | (~Q(outcome="") & Q(voted_at__isnull=False)),
                name="battle_voted_at_with_outcome",
            ),
        ]

    def __str__(self) -> str:
        return f"battle {self.pk} ({self.outcome or 'open'})"


class Correction(models.Model):
    """The reply a player wanted instead of the one they got: a demonstration for supervised training.

    ``text`` is what they wrote, ``[[ACTION:...]]`` markup included (checked against the persona's
    allowed actions when it was written); ``reply_text`` is the same without the markup. One per
    player per exchange; writing again replaces it. Moderated like ratings: the exchange's own
    exclusion, the correction's, and a block on the corrector keep it out of training.
    """

    class Source(models.TextChoices):
        WEB = "web", "Web portal"
        GAME = "game", "In game"

    exchange = models.ForeignKey(Exchange, on_delete=models.PROTECT, related_name="corrections")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="corrections"
    )
    player_name = models.CharField(
        max_length=64, blank=True, help_text="A player not linked to a portal account, correcting in game."
    )
    text = models.TextField(help_text="The reply the player wanted, action markup included.")
    reply_text = models.TextField(help_text="What players would have seen: the text without its markup.")
    actions = models.JSONField(default=list, blank=True)
    source = models.CharField(max_length=5, choices=Source.choices, default=Source.WEB)
    excluded_from_training = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(player_name="")) | (Q(user__isnull=True) & ~Q(player_name="")),
                name="correction_has_exactly_one_author",
            ),
            models.UniqueConstraint(
                fields=["exchange", "user"], condition=Q(user__isnull=False), name="correction_one_per_user"
            ),
            models.UniqueConstraint(
                fields=["exchange", "player_name"],
                condition=Q(user__isnull=True),
                name="correction_one_per_player",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rater_label}: {self.reply_text[:40]!r} for {self.exchange_id}"

    @property
    def rater_label(self) -> str:
        return self.user.get_username() if self.user_id else f"player:{self.player_name}"


class RaterBlock(models.Model):
    """A rater a moderator marked as a spammer: their ratings and votes stay out of training.

    The rater is a portal account or, for ratings given in game by a player with no linked
    account, the bare player name. A verified player link ties the two, so blocking either
    side blocks the person.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="rater_blocks"
    )
    player_name = models.CharField(
        max_length=64, blank=True, help_text="A player known only by their game name (no portal account)."
    )
    reason = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(player_name="")) | (Q(user__isnull=True) & ~Q(player_name="")),
                name="rater_block_has_exactly_one_rater",
            ),
            models.UniqueConstraint(fields=["user"], condition=Q(user__isnull=False), name="rater_block_one_per_user"),
            models.UniqueConstraint(
                fields=["player_name"], condition=Q(user__isnull=True), name="rater_block_one_per_player"
            ),
        ]

    def __str__(self) -> str:
        return self.rater_label

    @property
    def rater_label(self) -> str:
        return self.user.get_username() if self.user_id else f"player:{self.player_name}"


class PlayerLink(models.Model):
    """Ties a game name to a portal account once the player types the code in game."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="player_links")
    player_name = models.CharField(max_length=64)
    code_hash = models.CharField(max_length=64, blank=True, editable=False)
    code_expires_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    show_publicly = models.BooleanField(
        default=False, help_text="The player agrees to their name being shown on the portal."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["player_name"], condition=Q(verified_at__isnull=False), name="player_link_one_verified_owner"
            ),
            models.UniqueConstraint(fields=["user", "player_name"], name="player_link_unique_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.player_name} ↔ {self.user}"

    @property
    def verified(self) -> bool:
        return self.verified_at is not None


class PolicyFlag(models.Model):
    class Severity(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        SEVERE = "severe", "Severe"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CONFIRMED = "confirmed", "Confirmed"
        DISMISSED = "dismissed", "Dismissed"

    exchange = models.ForeignKey(Exchange, on_delete=models.PROTECT, related_name="policy_flags")
    rule = models.CharField(max_length=64, db_index=True)
    severity = models.CharField(max_length=8, choices=Severity.choices, default=Severity.WARNING)
    action = models.JSONField(null=True, blank=True, help_text="The action the rule stopped, if any.")
    detail = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN, db_index=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(severity__in=["info", "warning", "severe"]), name="policy_flag_severity_valid"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["open", "confirmed", "dismissed"]), name="policy_flag_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rule} ({self.severity}) on {self.exchange_id}"


class PolicyRule(models.Model):
    """One rule's settings, edited in the admin and read on every reply (no deploy needed).

    A rule with no row runs with its defaults (``agents_app.policy.DEFAULTS``); a row with no
    persona sets it for every persona, and a row for one persona overrides that for the persona.
    """

    class Rule(models.TextChoices):
        ACTION_NOT_ALLOWED = "action_not_allowed", "Action not on the persona's allowlist"
        ARG_OUT_OF_BOUNDS = "arg_out_of_bounds", "Action argument out of bounds"
        ITEM_NOT_GIVEABLE = "item_not_giveable", "Item that may not be given"
        RATE_LIMIT = "rate_limit", "Actions per minute per NPC"
        ACTION_LOOP = "action_loop", "Same action repeated"
        WORLD_CHANGE = "world_change", "World-changing action"
        BLOCKED_TERM = "blocked_term", "Blocked term in the reply"
        PERSONAL_DATA = "personal_data", "Personal data in the reply"
        BREAKING_CHARACTER = "breaking_character", "Breaking character"

    rule = models.CharField(max_length=32, choices=Rule.choices)
    persona = models.ForeignKey(
        Persona,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="policy_rules",
        help_text="Empty: the rule's settings for every persona.",
    )
    enabled = models.BooleanField(default=True)
    severity = models.CharField(
        max_length=8, choices=PolicyFlag.Severity.choices, blank=True, help_text="Empty: the rule's default severity."
    )
    params = models.JSONField(default=dict, blank=True, help_text="The rule's settings; see the rule's defaults.")
    freeze_seconds = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0)],
        help_text="How long a severe hit freezes the NPC; empty: VOYAGER_POLICY_FREEZE_SECONDS.",
    )
    note = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["rule", "persona"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule"], condition=Q(persona__isnull=True), name="policy_rule_one_global_per_rule"
            ),
            models.UniqueConstraint(
                fields=["rule", "persona"], condition=Q(persona__isnull=False), name="policy_rule_one_per_persona"
            ),
            models.CheckConstraint(
                condition=Q(freeze_seconds__isnull=True) | Q(freeze_seconds__gte=0), name="policy_rule_freeze_nonneg"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rule} ({self.persona.slug if self.persona_id else 'every persona'})"


class ProtectedArea(models.Model):
    """A box of the world where no NPC may change blocks (dig, place, ...)."""

    game_server = models.ForeignKey(
        GameServer,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="protected_areas",
        help_text="Empty: the box is protected on every server.",
    )
    name = models.CharField(max_length=100)
    min_x = models.IntegerField()
    min_y = models.IntegerField()
    min_z = models.IntegerField()
    max_x = models.IntegerField()
    max_y = models.IntegerField()
    max_z = models.IntegerField()
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(min_x__lte=F("max_x")) & Q(min_y__lte=F("max_y")) & Q(min_z__lte=F("max_z")),
                name="protected_area_min_le_max",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def contains(self, pos) -> bool:
        x, y, z = pos
        return self.min_x <= x <= self.max_x and self.min_y <= y <= self.max_y and self.min_z <= z <= self.max_z


class TrainingRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        GATE_REJECTED = "gate_rejected", "Rejected by the gate"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped (not enough data)"

    class Method(models.TextChoices):
        KTO = "kto", "KTO"
        DPO = "dpo", "DPO"
        SFT = "sft", "SFT"

    persona = models.ForeignKey(Persona, on_delete=models.PROTECT, related_name="training_runs")
    night = models.DateField(help_text="The nightly slot this run belongs to; one run per persona per night.")
    status = models.CharField(max_length=14, choices=Status.choices, default=Status.QUEUED, db_index=True)
    method = models.CharField(max_length=4, choices=Method.choices, blank=True)
    base_adapter = models.ForeignKey(AdapterVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    produced_version = models.ForeignKey(
        AdapterVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    rating_ids = models.JSONField(default=list, blank=True, help_text="Exactly which ratings went into the dataset.")
    pairwise_vote_ids = models.JSONField(default=list, blank=True)
    correction_ids = models.JSONField(default=list, blank=True, help_text="The corrections that went in.")
    data_counts = models.JSONField(default=dict, blank=True)
    metrics_before = models.JSONField(default=dict, blank=True)
    metrics_after = models.JSONField(default=dict, blank=True)
    loss_curve = models.JSONField(default=list, blank=True)
    # Where a running run is, for the admin to follow: the stage, and the share of the whole run done.
    stage = models.CharField(max_length=40, blank=True)
    progress = models.PositiveSmallIntegerField(default=0, help_text="Percent of the run done.")
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["persona", "night"], name="training_run_once_per_night"),
        ]

    def __str__(self) -> str:
        return f"{self.persona.slug} {self.night} ({self.status})"


class ModderRequest(models.Model):
    """A player asks for the modder role from the profile; a moderator approves or refuses it in the admin.

    One open request per user at a time; a refused one may be followed by a new request.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REFUSED = "refused", "Refused"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="modder_requests")
    motivation = models.TextField(max_length=1000, help_text="What the player means to build, in their words.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    note = models.TextField(blank=True, max_length=1000, help_text="The moderator's answer, shown to the player.")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["user"], condition=Q(status="pending"), name="modder_request_one_pending_per_user"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} asks to be a modder ({self.status})"
