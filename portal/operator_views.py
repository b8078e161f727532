"""What a server operator takes from the portal besides the token: the mod's zip, and a check of the connection."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.utils.timesince import timesince
from django.views.decorators.http import require_GET

from portal import access
from portal.mod_package import mod_zip
from portal.views import service_errors


@require_GET
def mod_download(request):
    response = HttpResponse(mod_zip(), content_type="application/zip")
    response["Content-Disposition"] = 'attachment; filename="voyager.zip"'
    return response


@login_required
@require_GET
@service_errors
def game_server_check(request, server_id: int):
    """Has this server's mod connected, and when last? Said on the servers page, next to the server."""
    server = access.access_game_server(server_id, request.user)
    if not server.enabled:
        messages.error(request, f"{server.name} is revoked: its token is refused, so it cannot connect.")
    elif server.last_seen_at is None:
        messages.error(
            request,
            f"{server.name} has not connected yet. Check its minetest.conf lines below, then its debug.txt: the mod "
            "says at warning level why a connection fails.",
        )
    else:
        when = timezone.localtime(server.last_seen_at).strftime("%Y-%m-%d %H:%M:%S %Z")
        messages.success(
            request,
            f"{server.name} connected: last at {when} ({timesince(server.last_seen_at)} ago).",
        )
    return redirect(reverse("game-servers") + f"#server-{server.pk}")
