from django.contrib import admin, messages
from django.utils.html import format_html

from agents_app import services
from agents_app.models import (
    AdapterVersion,
    Exchange,
    GameServer,
    Npc,
    PairwiseVote,
    Persona,
    PlayerLink,
    PolicyFlag,
    Rating,
    TrainingRun,
)


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "owner", "active_adapter", "is_public", "updated_at"]
    list_filter = ["is_public"]
    search_fields = ["slug", "name", "description"]
    raw_id_fields = ["owner"]
    readonly_fields = ["created_at", "updated_at"]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "active_adapter":
            kwargs["queryset"] = AdapterVersion.objects.select_related("persona")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(AdapterVersion)
class AdapterVersionAdmin(admin.ModelAdmin):
    list_display = ["persona", "version", "status", "source", "rank", "size_bytes", "created_at"]
    list_filter = ["status", "source", "persona"]
    search_fields = ["persona__slug", "persona__name", "sha256", "base_model_id"]
    list_select_related = ["persona"]
    # What was uploaded and trained is history: only the lifecycle fields change.
    readonly_fields = [
        "persona",
        "version",
        "files_path",
        "sha256",
        "base_model_id",
        "rank",
        "target_modules",
        "size_bytes",
        "source",
        "created_by",
        "created_at",
        "status_changed_at",
        "validation_error",
    ]

    def has_add_permission(self, request):
        return False  # adapters arrive through the upload validator or training, never by hand


@admin.register(GameServer)
class GameServerAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "token_hint", "enabled", "last_seen_at", "created_at"]
    list_filter = ["enabled"]
    search_fields = ["name", "owner__username"]
    raw_id_fields = ["owner"]
    readonly_fields = ["token_hint", "created_at", "last_seen_at"]
    actions = ["rotate_token"]

    def save_model(self, request, obj, form, change):
        if not change:
            raw = obj.set_new_token()
            super().save_model(request, obj, form, change)
            self.message_user(
                request,
                format_html(
                    "Token for <b>{}</b>, shown only now: <code>{}</code>. Put it in the server's "
                    "minetest.conf as <code>voyager.token</code>.",
                    obj.name,
                    raw,
                ),
                messages.WARNING,
            )
        else:
            super().save_model(request, obj, form, change)

    @admin.action(description="Issue a new token (the old one stops working)")
    def rotate_token(self, request, queryset):
        for server in queryset:
            raw = services.game_server_rotate_token(server=server)
            self.message_user(
                request, format_html("New token for <b>{}</b>: <code>{}</code>", server.name, raw), messages.WARNING
            )


@admin.register(Npc)
class NpcAdmin(admin.ModelAdmin):
    list_display = ["world_id", "display_name", "persona", "game_server", "frozen_until", "last_active_at"]
    list_filter = ["persona", "game_server"]
    search_fields = ["world_id", "display_name"]
    list_select_related = ["persona", "game_server"]
    readonly_fields = ["created_at", "last_active_at"]


class RatingInline(admin.TabularInline):
    model = Rating
    extra = 0
    can_delete = False
    readonly_fields = ["user", "player_name", "score", "reason", "tags", "source", "created_at", "updated_at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Exchange)
class ExchangeAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "persona",
        "npc",
        "player_name",
        "short_reply",
        "adapter_version",
        "source",
        "excluded_from_training",
    ]
    list_filter = ["source", "persona", "excluded_from_training", "adapter_version"]
    search_fields = ["player_name", "player_text", "reply_text", "id"]
    list_select_related = ["persona", "npc", "adapter_version__persona"]
    date_hierarchy = "created_at"
    inlines = [RatingInline]
    # An exchange is a record of what happened; only the training exclusion may change.
    readonly_fields = [
        "id",
        "npc",
        "persona",
        "source",
        "player_name",
        "player_text",
        "context",
        "prompt",
        "reply_text",
        "raw_text",
        "actions",
        "blocked_actions",
        "adapter_version",
        "base_model_id",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "total_ms",
        "created_at",
    ]

    @admin.display(description="Reply")
    def short_reply(self, obj):
        return obj.reply_text[:60]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Rating)
class RatingAdmin(admin.ModelAdmin):
    list_display = ["exchange", "rater", "score", "source", "updated_at"]
    list_filter = ["score", "source"]
    search_fields = ["player_name", "user__username", "reason"]
    raw_id_fields = ["exchange", "user"]
    readonly_fields = [
        "exchange",
        "user",
        "player_name",
        "score",
        "reason",
        "tags",
        "source",
        "created_at",
        "updated_at",
    ]

    @admin.display(description="Rater")
    def rater(self, obj):
        return obj.rater_label

    def has_add_permission(self, request):
        return False


@admin.register(PairwiseVote)
class PairwiseVoteAdmin(admin.ModelAdmin):
    list_display = ["left", "right", "outcome", "voter", "created_at"]
    list_filter = ["outcome"]
    raw_id_fields = ["left", "right", "voter"]
    readonly_fields = ["left", "right", "voter", "outcome", "created_at"]

    def has_add_permission(self, request):
        return False


@admin.register(PlayerLink)
class PlayerLinkAdmin(admin.ModelAdmin):
    list_display = ["player_name", "user", "verified_at", "show_publicly"]
    list_filter = [("verified_at", admin.EmptyFieldListFilter), "show_publicly"]
    search_fields = ["player_name", "user__username"]
    raw_id_fields = ["user"]
    readonly_fields = ["code_expires_at", "verified_at", "created_at"]


@admin.register(PolicyFlag)
class PolicyFlagAdmin(admin.ModelAdmin):
    list_display = ["created_at", "rule", "severity", "status", "exchange"]
    list_filter = ["status", "severity", "rule"]
    search_fields = ["rule", "detail", "exchange__reply_text"]
    raw_id_fields = ["exchange"]
    readonly_fields = ["exchange", "rule", "severity", "action", "detail", "created_at", "reviewed_by", "reviewed_at"]


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["persona", "night", "status", "method", "produced_version", "started_at", "finished_at"]
    list_filter = ["status", "method", "persona"]
    search_fields = ["persona__slug", "log", "error"]
    list_select_related = ["persona", "produced_version"]
    readonly_fields = [
        "persona",
        "night",
        "status",
        "method",
        "base_adapter",
        "produced_version",
        "rating_ids",
        "pairwise_vote_ids",
        "data_counts",
        "metrics_before",
        "metrics_after",
        "loss_curve",
        "log",
        "error",
        "created_at",
        "started_at",
        "finished_at",
    ]

    def has_add_permission(self, request):
        return False
