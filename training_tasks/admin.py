"""The training runs' admin: the loss curve as an inline SVG, and before/after metrics side by side."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from agents_app.models import TrainingRun

STAGE_COLOURS = {"sft": "#2b6cb0", "kto": "#c05621", "dpo": "#2f855a"}
COMPARED = (
    "pref_accuracy",
    "reward_margin",
    "liked_logp",
    "disliked_logp",
    "blocked_rate",
    "policy_hit_rate",
    "empty_rate",
    "distinct_2",
    "distinct_openings",
    "distinct_replies",
    "reference_logp",
)


def loss_curve_svg(curve: list[dict[str, Any]], width: int = 480, height: int = 160) -> SafeString:
    """One polyline per stage, steps laid end to end; no JavaScript, no external assets."""
    points = [p for p in curve or [] if isinstance(p.get("loss"), (int, float))]
    if not points:
        return mark_safe("<em>no loss recorded</em>")  # noqa: S308 (a constant)
    losses = [float(p["loss"]) for p in points]
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0
    pad = 24
    step_x = (width - 2 * pad) / max(1, len(points) - 1)
    lines: dict[str, list[str]] = {}
    for i, (point, loss) in enumerate(zip(points, losses)):
        x = pad + i * step_x
        y = pad + (height - 2 * pad) * (1 - (loss - low) / span)
        lines.setdefault(str(point.get("stage", "")), []).append(f"{x:.1f},{y:.1f}")
    polylines = format_html_join(
        "",
        '<polyline fill="none" stroke="{}" stroke-width="2" points="{}"><title>{}</title></polyline>',
        ((STAGE_COLOURS.get(stage, "#555"), " ".join(xy), stage) for stage, xy in lines.items()),
    )
    legend = format_html_join(" ", '<tspan fill="{}">{}</tspan>', ((STAGE_COLOURS.get(s, "#555"), s) for s in lines))
    return format_html(
        '<svg width="{}" height="{}" role="img" aria-label="training loss" style="background:#fafafa">'
        '<text x="4" y="14" font-size="11">loss {} → {}</text>'
        '<text x="{}" y="14" font-size="11" text-anchor="end">{}</text>{}</svg>',
        width,
        height,
        f"{losses[0]:.3f}",
        f"{losses[-1]:.3f}",
        width - 4,
        legend,
        polylines,
    )


def metrics_table(before: dict[str, Any], after: dict[str, Any]) -> SafeString:
    rows = [(key, before.get(key, "—"), after.get(key, "—")) for key in COMPARED if key in before or key in after]
    if not rows:
        return mark_safe("<em>not evaluated</em>")  # noqa: S308 (a constant)
    gate = (after or {}).get("gate") or {}
    verdict = "passed" if gate.get("passed") else "; ".join(gate.get("reasons", [])) or "—"
    body = format_html_join("", "<tr><th>{}</th><td>{}</td><td>{}</td></tr>", rows)
    return format_html(
        "<table><thead><tr><th></th><th>active (before)</th><th>candidate</th></tr></thead>"
        "<tbody>{}</tbody></table><p>gate: {}</p>",
        body,
        verdict,
    )


class TrainingRunChartsMixin:
    @admin.display(description="loss curve")
    def loss_chart(self, obj) -> SafeString:
        return loss_curve_svg(obj.loss_curve)

    @admin.display(description="held-out metrics")
    def metrics_table(self, obj) -> SafeString:
        return metrics_table(obj.metrics_before or {}, obj.metrics_after or {})


@admin.register(TrainingRun)
class TrainingRunAdmin(TrainingRunChartsMixin, admin.ModelAdmin):
    list_display = ["persona", "night", "status", "where", "method", "produced_version", "started_at", "finished_at"]
    list_filter = ["status", "method", "persona"]
    search_fields = ["persona__slug", "log", "error"]
    list_select_related = ["persona", "produced_version"]
    readonly_fields = [
        "loss_chart",
        "metrics_table",
        "persona",
        "night",
        "status",
        "where",
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

    @admin.display(description="progress")
    def where(self, obj) -> SafeString | str:
        if obj.status != TrainingRun.Status.RUNNING:
            return "—"
        return format_html(
            '<progress max="100" value="{}"></progress> {}% {}', obj.progress, obj.progress, obj.stage or ""
        )

    def has_add_permission(self, request):
        return False
