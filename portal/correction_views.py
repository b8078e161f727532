"""A player writes the reply an NPC should have given, under the reply (feed, playground, persona page)."""

from __future__ import annotations

from django.contrib import messages
from django.http import JsonResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from agents_app.services import ServiceError
from portal import arena
from portal.views import _safe_next, _wants_json, service_errors


@require_POST
@service_errors
def correct(request, exchange_id):
    text = request.POST.get("text")
    if text is None:
        raise ServiceError("text: write the reply the NPC should have given")
    correction, created = arena.correction_set(user=request.user, exchange_id=exchange_id, text=text)
    if _wants_json(request):
        body = {
            "exchange": str(correction.exchange_id),
            "text": correction.text,
            "reply_text": correction.reply_text,
            "actions": correction.actions,
        }
        return JsonResponse(body, status=201 if created else 200)
    messages.success(request, "Thanks: your reply is saved, and the NPC will learn from it.")
    return redirect(_safe_next(request, "feed"))
