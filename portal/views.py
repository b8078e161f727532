"""Community pages. Each view parses its input, calls one service or selector, and answers."""

from __future__ import annotations

from functools import wraps
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents_app import modder_requests
from agents_app import services as agents_services
from agents_app.models import AdapterVersion, Persona
from agents_app.roles import role_names
from agents_app.services import InvalidFields, ServiceError
from portal import access, adapters, arena, selectors, services
from portal.forms import (
    FeedFilterForm,
    GameServerForm,
    LoginForm,
    ModderRequestForm,
    PairwiseVoteForm,
    PersonaCatalogForm,
    PersonaCreateForm,
    PersonaForm,
    PersonaShareForm,
    PlayerLinkForm,
    RatingForm,
    SignupForm,
    form_errors,
)
from portal.markdown import render_markdown
from portal.pending_votes import pending_vote_keep


def _wants_json(request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _error_status(exc: ServiceError) -> int:
    return {"not_found": 404, "forbidden": 403}.get(exc.code, 400)


def service_errors(view):
    """Answer a ServiceError with its message: JSON for fetch(), a page otherwise."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except ServiceError as exc:
            status = _error_status(exc)
            if _wants_json(request):
                return JsonResponse({"error": str(exc), "code": exc.code}, status=status)
            if status == 404:
                raise Http404(str(exc)) from exc
            return render(request, "portal/error.html", {"message": str(exc)}, status=status)

    return wrapper


def _add_field_errors(form, exc: InvalidFields) -> None:
    """A service's complaints, each under its field on the form (or above the form, named)."""
    for field, problems in exc.fields.items():
        if field in form.fields:
            form.add_error(field, problems)
        else:
            form.add_error(None, [f"{field}: {problem}" for problem in problems])


def _bound_data(request):
    return request.POST if request.method == "POST" else None


def _safe_next(request, fallback: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    ok = url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure())
    return target if ok and target else fallback


@require_GET
def home(request):
    personas = access.visible_personas(request.user).annotate(exchange_count=Count("exchanges")).order_by("name")[:50]
    page = selectors.feed_page(viewer=request.user, limit=10)
    return render(request, "portal/home.html", {"personas": personas, "recent": page.items})


# --- accounts -------------------------------------------------------------------------------------


class LoginView(auth_views.LoginView):
    """Django's login page, with failed logins counted: past the limit it answers 429 and says how long."""

    authentication_form = LoginForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.throttled is not None:
            response.status_code = 429
            response["Retry-After"] = str(form.throttled.retry_after)
        return response


login_page = LoginView.as_view()


@require_http_methods(["GET", "POST"])
def signup(request):
    if request.user.is_authenticated:
        return redirect("profile")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = services.user_signup(
            username=form.cleaned_data["username"],
            email=form.cleaned_data["email"],
            password=form.cleaned_data["password1"],
        )
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, "Welcome! Link your game name below to see your own conversations.")
        return redirect("profile")
    return render(request, "registration/signup.html", {"form": form}, status=400 if form.errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
def profile(request):
    form = PlayerLinkForm(request.POST or None)
    code = None
    if request.method == "POST":
        if form.is_valid():
            try:
                code = services.player_link_request(user=request.user, player_name=form.cleaned_data["player_name"])
            except ServiceError as exc:
                form.add_error("player_name", str(exc).split(": ", 1)[-1])
        status = 400 if form.errors else 200
    else:
        status = 200
    links = request.user.player_links.order_by("player_name")
    context = {
        "form": form,
        "code": code,
        "code_player": form.cleaned_data.get("player_name") if code else None,
        "links": links,
        "roles": role_names(request.user),
        "rating_count": access.own_ratings(request.user).count(),
        "is_modder": access.can_create_persona(request.user),
        "modder_request": modder_requests.modder_request_latest(user=request.user),
        "modder_form": ModderRequestForm(),
    }
    return render(request, "portal/profile.html", context, status=status)


@login_required
@require_POST
def modder_request(request):
    form = ModderRequestForm(request.POST)
    if form.is_valid():
        try:
            modder_requests.modder_request_create(user=request.user, motivation=form.cleaned_data["motivation"])
        except ServiceError as exc:
            messages.error(request, str(exc).split(": ", 1)[-1].capitalize())
        else:
            messages.success(request, "Your request is sent; a moderator will answer it here.")
    else:
        messages.error(request, f"Not sent: {form_errors(form)}")
    return redirect(f"{reverse('profile')}#modder")


@login_required
@require_POST
@service_errors
def link_visibility(request, link_id: int):
    show = request.POST.get("show") == "1"
    link = services.player_link_set_public(user=request.user, link_id=link_id, show=show)
    messages.success(request, f"{link.player_name} is now {'shown' if show else 'hidden'} on the portal.")
    return redirect("profile")


@login_required
@require_POST
@service_errors
def link_remove(request, link_id: int):
    services.player_link_remove(user=request.user, link_id=link_id)
    messages.success(request, "The link is removed.")
    return redirect("profile")


# --- the rating feed ------------------------------------------------------------------------------


@require_GET
@service_errors
def feed(request):
    form = FeedFilterForm(request.GET)
    if not form.is_valid():
        return render(request, "portal/error.html", {"message": form_errors(form)}, status=400)
    f = form.cleaned_data
    page = selectors.feed_page(
        viewer=request.user,
        persona_slug=f["persona"] or "",
        server_id=f["server"],
        mine=f["mine"],
        unrated=f["unrated"],
        cursor=f["cursor"] or "",
    )
    params = {k: v for k, v in request.GET.items() if k != "cursor" and v}
    older = f"?{urlencode({**params, 'cursor': page.next_cursor})}" if page.next_cursor else None
    context = {
        "items": page.items,
        "older": older,
        "filters": f,
        "personas": access.visible_personas(request.user).only("slug", "name").order_by("name"),
        "servers": selectors.feed_servers(),
        "tags": selectors.REASON_TAGS,
        "here": request.get_full_path(),
    }
    return render(request, "portal/feed.html", context)


def _log_in_again(request, exchange_id=None):
    """A rating from a tab whose session has ended: JSON that says so for fetch(); otherwise the vote is kept
    in the session (given at login, ``portal.pending_votes``) and the login page comes next."""
    back = _safe_next(request, reverse("feed"))
    login_url = f"{reverse('login')}?{urlencode({'next': back})}"
    if _wants_json(request):
        message = "your session has ended: log in again (your vote is kept until then)"
        return JsonResponse({"error": message, "code": "login_required", "login": login_url}, status=401)
    if exchange_id is not None:
        pending_vote_keep(request, exchange_id)
        messages.info(request, "Your session had ended: log in again and your vote is saved.")
    return redirect(login_url)


def csrf_failure(request, reason=""):
    """A refused CSRF check (a page older than the last login or logout): JSON for fetch(), Django's page otherwise."""
    if _wants_json(request):
        back = _safe_next(request, reverse("feed"))
        login_url = f"{reverse('login')}?{urlencode({'next': back})}"
        message = "this page is older than your last login or logout: log in again (your vote is kept until then)"
        return JsonResponse({"error": message, "code": "login_required", "login": login_url}, status=403)
    return django_csrf_failure(request, reason=reason)


@require_POST
@service_errors
def rate(request, exchange_id):
    if not request.user.is_authenticated:
        return _log_in_again(request, exchange_id)
    form = RatingForm(request.POST)
    if not form.is_valid():
        raise ServiceError(form_errors(form))
    rating, created = services.web_rating_set(
        user=request.user,
        exchange_id=exchange_id,
        score=form.cleaned_data["score"],
        tags=form.cleaned_data["tags"],
        reason=form.cleaned_data["reason"],
    )
    if _wants_json(request):
        up, down = selectors.rating_counts([rating.exchange_id]).get(rating.exchange_id, (0, 0))
        return JsonResponse(
            {"exchange": str(rating.exchange_id), "score": rating.score, "tags": rating.tags, "up": up, "down": down},
            status=201 if created else 200,
        )
    messages.success(request, "Thanks, your rating is saved.")
    return redirect(_safe_next(request, "feed"))


@require_POST
@service_errors
def unrate(request, exchange_id):
    """Undo: the viewer's own rating of this reply is taken back."""
    if not request.user.is_authenticated:
        return _log_in_again(request)
    removed = services.web_rating_remove(user=request.user, exchange_id=exchange_id)
    if _wants_json(request):
        exchange = access.access_exchange(exchange_id, request.user)
        up, down = selectors.rating_counts([exchange.pk]).get(exchange.pk, (0, 0))
        return JsonResponse({"exchange": str(exchange.pk), "score": None, "tags": [], "up": up, "down": down})
    messages.success(request, "Your rating is taken back." if removed else "You had not rated that reply.")
    return redirect(_safe_next(request, "feed"))


@require_GET
def rating_guide(request):
    return render(request, "portal/rating_guide.html")


# --- personas -------------------------------------------------------------------------------------


@require_GET
@service_errors
def persona_list(request):
    form = PersonaCatalogForm(request.GET)
    if not form.is_valid():
        return render(request, "portal/error.html", {"message": form_errors(form)}, status=400)
    f = form.cleaned_data
    sort = f["sort"] or "rating"
    entries, tags = selectors.persona_catalog(request.user, q=f["q"], tag=f["tag"], sort=sort)
    context = {
        "entries": entries,
        "tags": tags,
        "q": f["q"],
        "tag": f["tag"],
        "sort": sort,
        "sorts": selectors.CATALOG_SORTS,
        "can_create": access.can_create_persona(request.user),
    }
    return render(request, "portal/persona_list.html", context)


@require_GET
@service_errors
def persona_detail(request, slug: str):
    persona = access.access_persona(slug, request.user)
    best, worst = selectors.persona_extremes(persona, request.user)
    series = selectors.persona_trend(persona)
    context = {
        "persona": persona,
        "versions": selectors.persona_versions(persona, request.user),
        "figures": selectors.persona_version_figures(persona, request.user),
        "chart": selectors.trend_svg(series),
        "best": best,
        "worst": worst,
        "tags": selectors.REASON_TAGS,
        "here": request.get_full_path(),
        "can_upload": access.can_upload_adapter(request.user, persona),
        "can_edit": access.can_edit_persona(request.user, persona),
    }
    return render(request, "portal/persona_detail.html", context)


_PERSONA_DEFAULTS = {
    f: Persona._meta.get_field(f).default
    for f in ("temperature", "top_p", "max_tokens", "repetition_penalty", "is_public")
}


@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def persona_create(request):
    access.require_persona_creator(request.user)
    form = PersonaCreateForm(_bound_data(request), initial=_PERSONA_DEFAULTS)
    if request.method == "POST" and form.is_valid():
        try:
            persona = agents_services.persona_create(owner=request.user, **form.cleaned_data)
        except InvalidFields as exc:
            _add_field_errors(form, exc)
        else:
            messages.success(request, f"{persona.name} is created. Spawn it in game with /npc spawn {persona.slug}.")
            return redirect("persona-detail", slug=persona.slug)
    context = {"form": form, "persona": None, "errors": form_errors(form) if form.errors else ""}
    return render(request, "portal/persona_form.html", context, status=400 if form.errors else 200)


def _persona_edit_page(request, persona, *, form=None, share_form=None):
    if form is None:
        form = PersonaForm(initial={name: getattr(persona, name) for name in PersonaForm.base_fields})
    if share_form is None:
        share_form = PersonaShareForm()
    context = {
        "form": form,
        "persona": persona,
        "errors": form_errors(form) if form.errors else "",
        "shares": selectors.persona_shares(persona),
        "share_form": share_form,
        "share_errors": form_errors(share_form) if share_form.errors else "",
    }
    return render(request, "portal/persona_form.html", context, status=400 if form.errors or share_form.errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def persona_edit(request, slug: str):
    persona = access.access_persona_for_edit(slug, request.user)
    initial = {name: getattr(persona, name) for name in PersonaForm.base_fields}
    form = PersonaForm(_bound_data(request), initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            persona = agents_services.persona_update(persona=persona, **form.cleaned_data)
        except InvalidFields as exc:
            _add_field_errors(form, exc)
        else:
            messages.success(request, f"{persona.name} is saved.")
            return redirect("persona-detail", slug=persona.slug)
    return _persona_edit_page(request, persona, form=form)


@login_required
@require_POST
@service_errors
def persona_share_add(request, slug: str):
    persona = access.access_persona_for_edit(slug, request.user)
    form = PersonaShareForm(request.POST)
    if form.is_valid():
        try:
            share, created = agents_services.persona_share_add(persona=persona, server_id=form.cleaned_data["server"])
        except InvalidFields as exc:
            _add_field_errors(form, exc)
        else:
            already = "" if created else " already"
            messages.success(request, f"{persona.name} is{already} shared with {share.game_server.name}.")
            return redirect("persona-edit", slug=persona.slug)
    return _persona_edit_page(request, persona, share_form=form)


@login_required
@require_POST
@service_errors
def persona_share_remove(request, slug: str, server_id: int):
    persona = access.access_persona_for_edit(slug, request.user)
    agents_services.persona_share_remove(persona=persona, server_id=server_id)
    messages.success(request, f"{persona.name} is no longer shared with server {server_id}.")
    return redirect("persona-edit", slug=persona.slug)


@require_GET
@service_errors
def adapter_detail(request, slug: str, version: int):
    adapter = access.access_adapter_version(slug, version, request.user)
    context = {
        "adapter": adapter,
        "card": render_markdown(adapter.model_card),
        "downloadable": adapter.status in access.PUBLIC_ADAPTER_STATUSES,
        "can_review": access.can_approve_adapter(request.user) and adapter.status == "validated",
        "can_activate": adapter.status == "approved"
        and (adapter.persona.owner_id == request.user.pk or access.can_approve_adapter(request.user)),
    }
    return render(request, "portal/adapter_detail.html", context)


@require_GET
@service_errors
def adapter_download(request, slug: str, version: int):
    """An approved version's files, one at a time: ?file=weights (default) or ?file=config."""
    names = {"weights": "adapter_model.safetensors", "config": "adapter_config.json"}
    which = request.GET.get("file", "weights")
    if which not in names:
        raise ServiceError(f"file: must be weights or config, not {which[:40]!r}")
    adapter = access.access_adapter_for_download(slug, version, request.user)
    path = adapter.absolute_path / names[which]
    if not path.is_file():
        raise access.NotFound(f"adapter: the files of {slug} v{version} are missing")
    filename = f"{slug}-v{version}-{names[which]}"
    return FileResponse(path.open("rb"), as_attachment=True, filename=filename)


@csrf_exempt  # the upload limit handler must go in before CSRF reads the body; csrf_protect runs inside
@login_required
@require_http_methods(["GET", "POST"])
def adapter_upload(request, slug: str):
    if request.method == "POST" and adapters.body_too_large(request):
        message = f"files: the upload is over the {adapters.max_bytes()} byte limit"
        return render(request, "portal/error.html", {"message": message}, status=413)
    limiter = adapters.UploadLimitHandler(request)
    request.upload_handlers.insert(0, limiter)
    return _adapter_upload(request, slug, limiter)


@csrf_protect
@service_errors
def _adapter_upload(request, slug: str, limiter):
    persona = access.access_persona(slug, request.user)
    if not access.can_upload_adapter(request.user, persona):
        raise access.AccessDenied(f"persona: only its owner, with the modder role, may upload to {slug!r}")
    error = None
    if request.method == "POST":
        files = {k: request.FILES.get(k) for k in ("archive", "config", "weights") if request.FILES.get(k)}
        if limiter.too_large:
            message = f"files: the upload is over the {adapters.max_bytes()} byte limit"
            return render(request, "portal/error.html", {"message": message}, status=413)
        try:
            adapter = adapters.adapter_upload(
                user=request.user, persona_slug=slug, files=files, model_card=request.POST.get("model_card", "")
            )
        except adapters.UploadError as exc:
            error = str(exc)
        else:
            _say_how_the_upload_went(request, adapter)
            return redirect("adapter-detail", slug=slug, version=adapter.version)
    context = {"persona": persona, "error": error, "limit": adapters.max_bytes()}
    return render(request, "portal/adapter_upload.html", context, status=400 if error else 200)


def _say_how_the_upload_went(request, adapter) -> None:
    """The flash after an upload: the version's status now (an eager smoke generation may have decided it)."""
    v, statuses = f"v{adapter.version}", AdapterVersion.Status
    if adapter.status == statuses.REJECTED:
        messages.error(request, f"{v} is uploaded but was rejected: {adapter.validation_error}")
    elif adapter.status == statuses.VALIDATED:
        messages.success(request, f"{v} is uploaded and passed validation; a moderator will review it.")
    else:
        messages.success(
            request,
            f"{v} is uploaded and being validated (a short test generation); "
            "once it passes, a moderator will review it. This page shows how it went.",
        )


@login_required
@require_POST
@service_errors
def adapter_review(request, slug: str, version: int):
    decision = request.POST.get("decision", "")
    if decision == "activate":
        adapter = adapters.adapter_activate(user=request.user, persona_slug=slug, version=version)
    else:
        adapter = adapters.adapter_review(user=request.user, persona_slug=slug, version=version, decision=decision)
    messages.success(request, f"v{adapter.version} is now {adapter.get_status_display().lower()}.")
    return redirect("adapter-detail", slug=slug, version=version)


@require_GET
def leaderboard(request):
    context = {
        "personas": selectors.persona_leaderboard(request.user),
        "raters": selectors.rater_leaderboard(),
    }
    return render(request, "portal/leaderboard.html", context)


# --- compare --------------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@service_errors
def compare(request):
    if request.method == "POST":
        if not request.user.is_authenticated:
            raise access.AccessDenied("log in to compare replies")
        form = PairwiseVoteForm(request.POST)
        if not form.is_valid():
            raise ServiceError(form_errors(form))
        vote, _ = services.pairwise_vote_record(
            user=request.user,
            left_id=form.cleaned_data["left"],
            right_id=form.cleaned_data["right"],
            outcome=form.cleaned_data["outcome"],
        )
        if _wants_json(request):
            return JsonResponse({"id": vote.pk, "outcome": vote.outcome})
        messages.success(request, "Thanks, your vote is saved. Here is another pair.")
        return redirect(_safe_next(request, "compare"))
    slug = request.GET.get("persona", "")
    if slug:
        access.access_persona(slug, request.user)
    pair = selectors.compare_pair(request.user, persona_slug=slug)
    personas = access.visible_personas(request.user).only("slug", "name").order_by("name")
    context = {"pair": pair, "persona": slug, "personas": personas, **arena.battle_form_context(request.user)}
    return render(request, "portal/compare.html", context)


# --- playground -----------------------------------------------------------------------------------


@login_required
@require_GET
def playground(request):
    personas = access.visible_personas(request.user).order_by("name")
    versions = selectors.adapter_versions_for_playground(request.user)
    context = {"personas": personas, "versions": versions, "blank_item": selectors.blank_feed_item()}
    return render(request, "portal/playground.html", context)


# --- game servers ---------------------------------------------------------------------------------


def _game_servers_page(request, *, form, token=None, server=None, status=200):
    """The owner's servers; ``token`` is a fresh token for ``server``, in this answer and nowhere else."""
    servers = access.own_game_servers(request.user).annotate(npc_count=Count("npcs")).order_by("name")
    context = {
        "servers": servers,
        "form": form,
        "token": token,
        "token_server": server,
        "gateway_url": f"{'wss' if request.is_secure() else 'ws'}://{request.get_host()}/ws/luanti/",
        "http_gateway_url": f"{request.scheme}://{request.get_host()}/http/luanti/",
        "errors": form_errors(form) if form.errors else "",
    }
    return render(request, "portal/game_servers.html", context, status=status)


# {server: id, token: str}: shown by the next servers page, then gone from the session
FRESH_SERVER_KEY = "voyager.fresh_server_key"  # noqa: S105 (a session key's name, not a secret)


@never_cache  # a page with a token in it must not be kept by any cache
@login_required
@require_http_methods(["GET", "POST"])
def game_servers(request):
    if request.method == "GET" and FRESH_SERVER_KEY in request.session:
        fresh = request.session.pop(FRESH_SERVER_KEY)
        server = access.own_game_servers(request.user).filter(pk=fresh.get("server")).first()
        if server is not None:
            return _game_servers_page(request, form=GameServerForm(), token=fresh.get("token"), server=server)
    form = GameServerForm(_bound_data(request))
    if request.method == "POST" and form.is_valid():
        try:
            server, token = agents_services.game_server_create(name=form.cleaned_data["name"], owner=request.user)
        except InvalidFields as exc:
            _add_field_errors(form, exc)
        else:
            return _game_servers_page(request, form=GameServerForm(), token=token, server=server, status=201)
    return _game_servers_page(request, form=form, status=400 if form.errors else 200)


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def game_server_token(request, server_id: int):
    """GET asks for confirmation; POST replaces the token and redirects, so a reload replaces nothing."""
    server = access.access_game_server_for_new_token(server_id, request.user)
    if request.method == "GET":
        return render(request, "portal/game_server_token_confirm.html", {"server": server})
    token = agents_services.game_server_rotate_token(server=server)
    request.session[FRESH_SERVER_KEY] = {"server": server.pk, "token": token}
    messages.success(request, f"{server.name} has a new token; the old one no longer works.")
    return redirect(f"{reverse('game-servers')}#new-token")


@login_required
@require_POST
@service_errors
def game_server_revoke(request, server_id: int):
    server = access.access_game_server(server_id, request.user)
    if agents_services.game_server_revoke(server=server):
        messages.success(request, f"{server.name} is deleted; its token no longer works.")
    else:
        messages.success(
            request,
            f"{server.name}'s token no longer works. The server stays listed, revoked: its NPCs' "
            "conversations and their ratings are kept.",
        )
    return redirect("game-servers")
