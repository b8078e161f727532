from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from agents_app import adapters as lifecycle
from agents_app import arena, modder_requests, moderation, selectors, services
from agents_app.models import (
    AdapterVersion,
    Battle,
    Correction,
    Exchange,
    GameServer,
    ModderRequest,
    Npc,
    PairwiseVote,
    Persona,
    PersonaShare,
    PlayerLink,
    PolicyFlag,
    PolicyRule,
    ProtectedArea,
    RaterBlock,
    Rating,
)
from agents_app.roles import CAN_APPROVE
from agents_app.services import ServiceError


class PersonaShareInline(admin.TabularInline):
    """The game servers, besides its owner's, that may use the persona while it is private."""

    model = PersonaShare
    extra = 0
    raw_id_fields = ["game_server"]
    readonly_fields = ["created_at"]


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "owner", "active_adapter", "canary_adapter", "canary_percent", "is_public"]
    list_filter = ["is_public"]
    search_fields = ["slug", "name", "description"]
    raw_id_fields = ["owner"]
    # The canary is set and cleared by its trial (agents_app.canary); its share of asks is edited here.
    readonly_fields = ["canary_adapter", "created_at", "updated_at"]
    inlines = [PersonaShareInline]

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
        # The lifecycle moves only through the actions below (the same services as the portal):
        # an edited status would skip validation, the one-active-version rule and the workers' swap.
        "status",
    ]
    actions = ["approve_versions", "reject_versions", "activate_versions", "roll_back_to_version", "withdraw_canaries"]

    def has_add_permission(self, request):
        return False  # adapters arrive through the upload validator or training, never by hand

    def _each(self, request, queryset, verb: str, call) -> None:
        done = []
        for adapter in queryset.select_related("persona").order_by("persona__slug", "version"):
            label = f"{adapter.persona.slug} v{adapter.version}"
            try:
                changed = call(adapter)
            except ServiceError as exc:
                self.message_user(request, f"{label}: {exc}", messages.ERROR)
                continue
            self.log_change(request, changed, f"{verb} from the admin")
            done.append(label)
        if done:
            self.message_user(request, f"{verb.capitalize()}: {', '.join(done)}.", messages.SUCCESS)

    @admin.action(description="Approve the selected validated versions")
    def approve_versions(self, request, queryset):
        self._each(
            request,
            queryset,
            "approved",
            lambda a: lifecycle.version_review(user=request.user, adapter=a, decision="approve"),
        )

    @admin.action(description="Reject the selected validated versions")
    def reject_versions(self, request, queryset):
        self._each(
            request,
            queryset,
            "rejected",
            lambda a: lifecycle.version_review(user=request.user, adapter=a, decision="reject"),
        )

    @admin.action(description="Activate the selected approved versions (the workers swap them in)")
    def activate_versions(self, request, queryset):
        self._each(request, queryset, "activated", lambda a: lifecycle.version_activate(user=request.user, adapter=a))

    @admin.action(description="Roll back to the selected earlier version (one; it becomes active at once)")
    def roll_back_to_version(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to roll back to.", messages.ERROR)
            return
        self._each(
            request, queryset, "rolled back to", lambda a: lifecycle.version_rollback(user=request.user, adapter=a)
        )

    @admin.action(description="Withdraw the selected canaries (the active version answers every ask)")
    def withdraw_canaries(self, request, queryset):
        if not request.user.has_perm(CAN_APPROVE):
            self.message_user(request, "Only moderators may withdraw a canary.", messages.ERROR)
            return
        by = {"reason": f"withdrawn by {request.user.get_username()} in the admin"}
        self._each(
            request,
            queryset,
            "withdrawn",
            lambda a: lifecycle.canary_conclude(adapter=a, decision="withdraw", figures=by),
        )


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
        "is_test",
        "excluded_from_training",
    ]
    list_filter = ["source", "is_test", "excluded_from_training", "persona", "adapter_version"]
    actions = ["exclude_from_training"]
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

    @admin.action(description="Exclude the selected exchanges from training", permissions=["change"])
    def exclude_from_training(self, request, queryset):
        changed = moderation.exchanges_exclude_from_training(exchange_ids=queryset.values_list("pk", flat=True))
        for exchange in changed:
            self.log_change(request, exchange, "Excluded from training")
        already = queryset.count() - len(changed)
        note = f" ({already} already were)" if already > 0 else ""
        self.message_user(request, f"Excluded {len(changed)} exchange(s) from training{note}.", messages.SUCCESS)

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

    actions = ["block_raters", "unblock_raters"]

    @admin.display(description="Rater")
    def rater(self, obj):
        return obj.rater_label

    def has_add_permission(self, request):
        return False

    def has_block_raters_permission(self, request):
        return may_block_raters(request.user)

    @admin.action(
        description="Mark these raters as spammers (their ratings stay out of training)", permissions=["block_raters"]
    )
    def block_raters(self, request, queryset):
        blocks = moderation.raters_block(
            ratings=list(queryset), created_by=request.user, reason="marked from the ratings list"
        )
        for block in blocks:
            self.log_addition(request, block, "Marked as a spammer from the ratings list")
        self.message_user(request, f"Marked {len(blocks)} rater(s) as spammers.", messages.SUCCESS)

    @admin.action(description="Unmark these raters (their ratings count again)", permissions=["block_raters"])
    def unblock_raters(self, request, queryset):
        removed = moderation.raters_unblock(ratings=list(queryset))
        self.message_user(request, f"Unmarked {len(removed)} rater(s).", messages.SUCCESS)


def may_block_raters(user) -> bool:
    """Whoever may keep exchanges out of training (moderators) may keep a rater's ratings out too."""
    return user.has_perm("agents_app.add_raterblock") or user.has_perm("agents_app.change_exchange")


@admin.register(RaterBlock)
class RaterBlockAdmin(admin.ModelAdmin):
    """Raters marked as spammers: their ratings and pairwise votes are left out of every training snapshot."""

    list_display = ["__str__", "reason", "created_by", "created_at"]
    search_fields = ["player_name", "user__username", "reason"]
    raw_id_fields = ["user"]
    fields = ["user", "player_name", "reason", "created_by", "created_at"]
    readonly_fields = ["created_by", "created_at"]
    list_select_related = ["user", "created_by"]

    def has_view_permission(self, request, obj=None):
        return super().has_view_permission(request, obj) or may_block_raters(request.user)

    def has_add_permission(self, request):
        return may_block_raters(request.user)

    def has_change_permission(self, request, obj=None):
        return may_block_raters(request.user)

    def has_delete_permission(self, request, obj=None):
        return may_block_raters(request.user)  # unmarking a rater is deleting the block

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)


@admin.register(PairwiseVote)
class PairwiseVoteAdmin(admin.ModelAdmin):
    list_display = ["left", "right", "outcome", "voter", "created_at"]
    list_filter = ["outcome"]
    raw_id_fields = ["left", "right", "voter"]
    readonly_fields = ["left", "right", "voter", "outcome", "created_at"]

    def has_add_permission(self, request):
        return False


@admin.register(Battle)
class BattleAdmin(admin.ModelAdmin):
    """Arena battles: what was asked, both replies (each with the version that gave it) and the vote."""

    list_display = ["created_at", "persona", "user", "player_text", "left_version", "right_version", "outcome"]
    list_filter = ["outcome", "persona"]
    list_select_related = ["persona", "user", "left__adapter_version", "right__adapter_version"]
    raw_id_fields = ["left", "right", "user", "vote"]
    readonly_fields = ["persona", "user", "player_text", "left", "right", "outcome", "vote", "created_at", "voted_at"]

    @admin.display(description="Left")
    def left_version(self, obj):
        return arena.version_label(obj.left.adapter_version)

    @admin.display(description="Right")
    def right_version(self, obj):
        return arena.version_label(obj.right.adapter_version)

    def has_add_permission(self, request):
        return False


@admin.register(Correction)
class CorrectionAdmin(admin.ModelAdmin):
    """Replies players wrote for an NPC to learn from: moderated like ratings (excluded, spam)."""

    list_display = ["updated_at", "exchange", "rater", "reply_text", "source", "excluded_from_training"]
    list_filter = ["source", "excluded_from_training", "exchange__persona"]
    search_fields = ["text", "player_name", "user__username"]
    list_select_related = ["user", "exchange"]
    raw_id_fields = ["exchange", "user"]
    readonly_fields = [
        "exchange",
        "user",
        "player_name",
        "text",
        "reply_text",
        "actions",
        "source",
        "excluded_from_training",
        "created_at",
        "updated_at",
    ]
    actions = ["exclude_corrections", "include_corrections", "block_correctors"]

    @admin.display(description="Author")
    def rater(self, obj):
        return obj.rater_label

    def has_add_permission(self, request):
        return False

    def has_block_raters_permission(self, request):
        return may_block_raters(request.user)

    @admin.action(description="Exclude the selected corrections from training", permissions=["block_raters"])
    def exclude_corrections(self, request, queryset):
        changed = moderation.corrections_exclude(correction_ids=queryset.values_list("pk", flat=True), excluded=True)
        for correction in changed:
            self.log_change(request, correction, "Excluded from training")
        self.message_user(request, f"Excluded {len(changed)} correction(s) from training.", messages.SUCCESS)

    @admin.action(description="Let the selected corrections train again", permissions=["block_raters"])
    def include_corrections(self, request, queryset):
        changed = moderation.corrections_exclude(correction_ids=queryset.values_list("pk", flat=True), excluded=False)
        for correction in changed:
            self.log_change(request, correction, "Included in training again")
        self.message_user(request, f"Included {len(changed)} correction(s) again.", messages.SUCCESS)

    @admin.action(
        description="Mark their authors as spammers (their corrections and ratings stay out of training)",
        permissions=["block_raters"],
    )
    def block_correctors(self, request, queryset):
        blocks = moderation.raters_block(
            ratings=list(queryset), created_by=request.user, reason="marked from the corrections list"
        )
        for block in blocks:
            self.log_addition(request, block, "Marked as a spammer from the corrections list")
        self.message_user(request, f"Marked {len(blocks)} author(s) as spammers.", messages.SUCCESS)


@admin.register(PlayerLink)
class PlayerLinkAdmin(admin.ModelAdmin):
    list_display = ["player_name", "user", "verified_at", "show_publicly"]
    list_filter = [("verified_at", admin.EmptyFieldListFilter), "show_publicly"]
    search_fields = ["player_name", "user__username"]
    raw_id_fields = ["user"]
    readonly_fields = ["code_expires_at", "verified_at", "created_at"]


class FlagStatusFilter(admin.SimpleListFilter):
    """The queue opens on open flags; 'All' shows the reviewed ones too."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [*PolicyFlag.Status.choices, ("all", "All")]

    def choices(self, changelist):
        current = self.value() or PolicyFlag.Status.OPEN
        for value, label in self.lookup_choices:
            yield {
                "selected": current == value,
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": label,
            }

    def queryset(self, request, queryset):
        value = self.value() or PolicyFlag.Status.OPEN
        return queryset if value == "all" else queryset.filter(status=value)


def _json_short(value, limit=80) -> str:
    import json

    text = json.dumps(value, ensure_ascii=False) if value else "—"
    return text if len(text) <= limit else text[: limit - 1] + "…"


@admin.register(PolicyFlag)
class PolicyFlagAdmin(admin.ModelAdmin):
    """The moderators' policy-audit queue: each flag with the full exchange it was raised on."""

    list_display = [
        "created_at",
        "rule",
        "severity",
        "status",
        "persona",
        "npc",
        "player_words",
        "reply",
        "actions_taken",
        "actions_blocked",
        "adapter_version",
        "server",
    ]
    list_filter = [
        FlagStatusFilter,
        "rule",
        "severity",
        ("exchange__persona", admin.RelatedOnlyFieldListFilter),
        ("exchange__adapter_version", admin.RelatedOnlyFieldListFilter),
        ("exchange__npc__game_server", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["rule", "detail", "exchange__reply_text", "exchange__player_text", "exchange__player_name"]
    list_select_related = ["exchange__persona", "exchange__npc__game_server", "exchange__adapter_version__persona"]
    list_per_page = 50
    date_hierarchy = "created_at"
    actions = [
        "confirm_flags",
        "dismiss_flags",
        "exclude_from_training",
        "freeze_npcs",
        "unfreeze_npcs",
        "retire_adapter_versions",
    ]
    fields = [
        "rule",
        "severity",
        "status",
        "detail",
        "action",
        "exchange_link",
        "persona",
        "npc",
        "server",
        "player_words",
        "shown_reply",
        "model_output",
        "actions_taken",
        "actions_blocked",
        "adapter_version",
        "worker",
        "excluded_from_training",
        "created_at",
        "reviewed_by",
        "reviewed_at",
    ]
    readonly_fields = [f for f in fields if f != "status"]
    change_list_template = "admin/agents_app/policyflag/change_list.html"
    change_form_template = "admin/agents_app/policyflag/change_form.html"
    # The change form's buttons for working the queue one flag after another: decide (or skip), then the next.
    NEXT_DECISIONS = {"_confirm_next": PolicyFlag.Status.CONFIRMED, "_dismiss_next": PolicyFlag.Status.DISMISSED}

    def has_add_permission(self, request):
        return False  # flags are raised by the policy, never by hand

    def has_delete_permission(self, request, obj=None):
        return False  # the audit trail stays

    # --- the exchange, shown in full ------------------------------------------------------------

    @admin.display(description="Persona", ordering="exchange__persona__slug")
    def persona(self, obj):
        return obj.exchange.persona.slug

    @admin.display(description="NPC")
    def npc(self, obj):
        npc = obj.exchange.npc
        frozen = " ❄" if npc.is_frozen() else ""
        return f"{npc}{frozen}"

    @admin.display(description="Server")
    def server(self, obj):
        return obj.exchange.npc.game_server or "playground"

    @admin.display(description="Player said")
    def player_words(self, obj):
        return f"{obj.exchange.player_name}: {obj.exchange.player_text}"

    @admin.display(description="Reply shown")
    def reply(self, obj):
        text = obj.exchange.reply_text
        return text if len(text) <= 120 else text[:119] + "…"

    @admin.display(description="Reply shown")
    def shown_reply(self, obj):
        return obj.exchange.reply_text

    @admin.display(description="Model wrote")
    def model_output(self, obj):
        return obj.exchange.raw_text

    @admin.display(description="Actions taken")
    def actions_taken(self, obj):
        return _json_short(obj.exchange.actions)

    @admin.display(description="Actions blocked")
    def actions_blocked(self, obj):
        return _json_short(obj.exchange.blocked_actions)

    @admin.display(description="Adapter version")
    def adapter_version(self, obj):
        adapter = obj.exchange.adapter_version
        return f"{adapter.persona.slug} v{adapter.version} ({adapter.status})" if adapter else "base model"

    @admin.display(description="Worker")
    def worker(self, obj):
        return obj.exchange.worker_id or "—"

    @admin.display(description="Excluded from training", boolean=True)
    def excluded_from_training(self, obj):
        return obj.exchange.excluded_from_training

    @admin.display(description="Exchange")
    def exchange_link(self, obj):
        url = reverse("admin:agents_app_exchange_change", args=[obj.exchange_id])
        return format_html('<a href="{}">{}</a>', url, obj.exchange_id)

    # --- who may do what --------------------------------------------------------------------------

    def has_exclude_permission(self, request):
        return request.user.has_perm("agents_app.change_exchange")

    def has_freeze_permission(self, request):
        return request.user.has_perm("agents_app.change_npc")

    def has_retire_permission(self, request):
        return request.user.has_perm("agents_app.change_adapterversion")

    # --- bulk actions: each change lands in the admin log -----------------------------------------

    def _log(self, request, objects, message: str) -> None:
        for obj in objects:
            self.log_change(request, obj, message)

    def _review(self, request, queryset, status: str, verb: str) -> None:
        changed = moderation.flags_review(flags=list(queryset), user=request.user, status=status)
        self._log(request, changed, f"{verb} the flag")
        self.message_user(request, f"{verb} {len(changed)} flag(s).", messages.SUCCESS)

    @admin.action(description="Confirm the selected flags", permissions=["change"])
    def confirm_flags(self, request, queryset):
        self._review(request, queryset, PolicyFlag.Status.CONFIRMED, "Confirmed")

    @admin.action(description="Dismiss the selected flags", permissions=["change"])
    def dismiss_flags(self, request, queryset):
        self._review(request, queryset, PolicyFlag.Status.DISMISSED, "Dismissed")

    @admin.action(description="Exclude their exchanges from training", permissions=["exclude"])
    def exclude_from_training(self, request, queryset):
        ids = queryset.values_list("exchange_id", flat=True)
        changed = moderation.exchanges_exclude_from_training(exchange_ids=ids)
        self._log(request, changed, "Excluded from training (policy audit)")
        self.message_user(request, f"Excluded {len(changed)} exchange(s) from training.", messages.SUCCESS)

    @admin.action(description="Freeze their NPCs (until unfrozen)", permissions=["freeze"])
    def freeze_npcs(self, request, queryset):
        changed = moderation.npcs_freeze(npc_ids=queryset.values_list("exchange__npc_id", flat=True))
        self._log(request, changed, "Frozen until a moderator unfreezes it (policy audit)")
        self.message_user(request, f"Froze {len(changed)} NPC(s).", messages.SUCCESS)

    @admin.action(description="Unfreeze their NPCs", permissions=["freeze"])
    def unfreeze_npcs(self, request, queryset):
        changed = moderation.npcs_unfreeze(npc_ids=queryset.values_list("exchange__npc_id", flat=True))
        self._log(request, changed, "Unfrozen (policy audit)")
        self.message_user(request, f"Unfroze {len(changed)} NPC(s).", messages.SUCCESS)

    @admin.action(description="Retire the adapter versions that answered", permissions=["retire"])
    def retire_adapter_versions(self, request, queryset):
        ids = queryset.filter(exchange__adapter_version__isnull=False).values_list(
            "exchange__adapter_version_id", flat=True
        )
        changed = lifecycle.versions_retire(adapter_ids=ids)
        self._log(request, changed, "Retired (policy audit)")
        self.message_user(request, f"Retired {len(changed)} adapter version(s).", messages.SUCCESS)

    def save_model(self, request, obj, form, change):
        if change and "status" in form.changed_data:
            obj.reviewed_by, obj.reviewed_at = request.user, timezone.now()
        super().save_model(request, obj, form, change)
        decision = next((s for key, s in self.NEXT_DECISIONS.items() if key in request.POST), None)
        if change and decision is not None:
            for flag in moderation.flags_review(flags=[obj], user=request.user, status=decision):
                self.log_change(request, flag, f"{flag.get_status_display()} the flag (queue)")

    # --- the queue, one flag after another ----------------------------------------------------------

    def response_change(self, request, obj):
        if any(key in request.POST for key in (*self.NEXT_DECISIONS, "_skip_next")):
            return self._go_to_next(request, after=obj)
        return super().response_change(request, obj)

    def _go_to_next(self, request, after=None):
        flag = selectors.next_open_flag(after=after)
        if flag is None:
            self.message_user(request, "The queue is empty: no open flag is left.", messages.SUCCESS)
            return redirect(reverse("admin:agents_app_policyflag_changelist"))
        return redirect(reverse("admin:agents_app_policyflag_change", args=[flag.pk]))

    def next_view(self, request):
        if not self.has_change_permission(request):
            raise PermissionDenied
        return self._go_to_next(request)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "open_flags": PolicyFlag.objects.filter(status="open").count()}
        return super().change_view(request, object_id, form_url, extra_context=extra_context)

    # --- counts per persona and version over time -------------------------------------------------

    def get_urls(self):
        urls = [
            path(
                "summary/",
                self.admin_site.admin_view(self.summary_view),
                name="agents_app_policyflag_summary",
            ),
            path("next/", self.admin_site.admin_view(self.next_view), name="agents_app_policyflag_next"),
        ]
        return urls + super().get_urls()

    def summary_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        asked = request.GET.get("days", "14")
        days = min(max(int(asked), 1), 90) if asked.isdigit() else 14
        context = {
            **self.admin_site.each_context(request),
            "title": "Policy flags per persona and adapter version",
            "opts": self.model._meta,
            **selectors.flag_counts(days=days),
        }
        return TemplateResponse(request, "admin/agents_app/policyflag/summary.html", context)


@admin.register(PolicyRule)
class PolicyRuleAdmin(admin.ModelAdmin):
    """The policy's settings, read on every reply: a change here applies at once, no deploy."""

    list_display = ["rule", "persona", "enabled", "severity", "freeze_seconds", "params", "updated_at"]
    list_filter = ["rule", "enabled", ("persona", admin.RelatedOnlyFieldListFilter)]
    list_editable = ["enabled"]
    raw_id_fields = ["persona"]
    readonly_fields = ["defaults", "updated_at"]
    fields = ["rule", "persona", "enabled", "severity", "freeze_seconds", "params", "defaults", "note", "updated_at"]

    @admin.display(description="The rule's defaults")
    def defaults(self, obj):
        import json

        from agents_app.policy import DEFAULTS

        if not obj or not obj.rule:
            return format_html("<pre>{}</pre>", json.dumps(DEFAULTS, indent=2))
        return format_html("<pre>{}</pre>", json.dumps(DEFAULTS.get(obj.rule, {}), indent=2))


@admin.register(ProtectedArea)
class ProtectedAreaAdmin(admin.ModelAdmin):
    list_display = ["name", "game_server", "enabled", "min_x", "min_y", "min_z", "max_x", "max_y", "max_z"]
    list_filter = ["enabled", "game_server"]
    search_fields = ["name"]


@admin.register(ModderRequest)
class ModderRequestAdmin(admin.ModelAdmin):
    """Players asking for the modder role from their profile; approving one gives the role."""

    list_display = ["created_at", "user", "short_motivation", "status", "decided_by", "decided_at"]
    list_filter = ["status"]
    search_fields = ["user__username", "motivation"]
    list_select_related = ["user", "decided_by"]
    fields = ["user", "motivation", "status", "note", "decided_by", "decided_at", "created_at"]
    readonly_fields = ["user", "motivation", "status", "decided_by", "decided_at", "created_at"]
    actions = ["approve_requests", "refuse_requests"]

    @admin.display(description="Motivation")
    def short_motivation(self, obj):
        return obj.motivation[:80]

    def has_add_permission(self, request):
        return False  # players ask from their profile

    def has_delete_permission(self, request, obj=None):
        return False

    def _decide(self, request, queryset, approve: bool, verb: str) -> None:
        changed = modder_requests.modder_requests_decide(
            requests=list(queryset), moderator=request.user, approve=approve
        )
        for req in changed:
            self.log_change(request, req, f"{verb} the request")
        self.message_user(request, f"{verb} {len(changed)} request(s).", messages.SUCCESS)

    @admin.action(description="Approve: give them the modder role", permissions=["change"])
    def approve_requests(self, request, queryset):
        self._decide(request, queryset, True, "Approved")

    @admin.action(description="Refuse the selected requests", permissions=["change"])
    def refuse_requests(self, request, queryset):
        self._decide(request, queryset, False, "Refused")
