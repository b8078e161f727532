"""Arena pages: the vote on a battle (which names the versions) and the versions' leaderboard.

The battle itself is asked for and streamed over /ws/arena/ (``portal.arena_consumers``) from the
compare page.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from portal import arena
from portal.views import _wants_json, service_errors


@require_POST
@service_errors
def battle_vote(request, battle_id):
    battle, reveal = arena.battle_vote(
        user=request.user, battle_id=battle_id, outcome=request.POST.get("outcome", "")[:20]
    )
    if _wants_json(request):
        return JsonResponse({"battle": str(battle.pk), "outcome": battle.outcome, **reveal})
    messages.success(request, f"Thanks. Left was {reveal['left']}, right was {reveal['right']}.")
    return redirect("compare")


@require_GET
def versions_leaderboard(request):
    return render(request, "portal/arena_leaderboard.html", {"boards": arena.version_boards(request.user)})
