"""A vote given without JavaScript from a tab whose session had ended: kept in the new anonymous session
and given once its rater logs in (the session's data survives the login), so nobody rates twice.

With JavaScript the browser keeps such a vote itself (static/portal/portal.js).
"""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver

from agents_app.services import ServiceError

log = logging.getLogger("voyager.portal")
SESSION_KEY = "voyager.pending_vote"


def pending_vote_keep(request, exchange_id) -> None:
    """Keep what the rating form posted (the service checks it when it is given)."""
    request.session[SESSION_KEY] = {
        "exchange": str(exchange_id)[:64],
        "score": request.POST.get("score", "")[:4],
        "tags": [t[:40] for t in request.POST.getlist("tags")[:20]],
        "reason": request.POST.get("reason", "")[:600],
    }


@receiver(user_logged_in, dispatch_uid="voyager-pending-vote")
def pending_vote_give(sender, request, user, **kwargs) -> None:
    vote = request.session.pop(SESSION_KEY, None) if request is not None and hasattr(request, "session") else None
    if not vote:
        return
    from portal import services  # services import the selectors, which need the app registry ready

    try:
        services.web_rating_set(
            user=user, exchange_id=vote["exchange"], score=vote["score"], tags=vote["tags"], reason=vote["reason"]
        )
    except ServiceError as exc:
        messages.error(request, f"Your vote from before you logged in was not saved: {exc}")
    else:
        messages.success(request, "Your vote from before you logged in is saved.")
