"""HTTP endpoints of the game-facing side: the game server's policy check, metrics and health."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema, inline_serializer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from rest_framework import authentication, exceptions, permissions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from agents_app import policy, visibility
from agents_app.models import GameServer, Npc, Persona
from agents_app.observability import register_collector
from agents_app.services import game_server_authenticate

# --- the game server's policy check ---------------------------------------------------------------


class GameServerAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <game server token>``, the token the mod connects with."""

    def authenticate(self, request):
        scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        server = game_server_authenticate(token.strip())
        if server is None:
            raise exceptions.AuthenticationFailed("bad or disabled game server token")
        return (_ServerUser(server), server)

    def authenticate_header(self, request):
        return 'Bearer realm="game server"'


class GameServerAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "agents_app.views.GameServerAuthentication"
    name = "gameServerToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "The game server's token (vgs_...)."}


class _ServerUser:
    """What DRF sees as ``request.user`` for a game server: authenticated, and nobody's account."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    pk = None

    def __init__(self, server: GameServer) -> None:
        self.server = server

    def __str__(self) -> str:
        return f"game server {self.server.name}"


class IsGameServer(permissions.BasePermission):
    def has_permission(self, request, view):
        return isinstance(request.auth, GameServer)


class PolicyCheckApi(APIView):
    """May an NPC of this persona take this action now? Nothing is stored; no flag is raised."""

    authentication_classes = [GameServerAuthentication]
    permission_classes = [IsGameServer]
    throttle_classes = []  # the game server is trusted with its own budget; asks are rate-limited at the gateway

    class Input(serializers.Serializer):
        class ActionInput(serializers.Serializer):
            name = serializers.RegexField(r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)
            args = serializers.ListField(
                child=serializers.CharField(max_length=64, allow_blank=True), max_length=8, default=list
            )

        class ContextInput(serializers.Serializer):
            pos = serializers.ListField(child=serializers.FloatField(), min_length=3, max_length=3, required=False)

        persona = serializers.SlugField(max_length=63)
        npc = serializers.CharField(max_length=64, required=False)
        action = ActionInput()
        context = ContextInput(required=False)

    @extend_schema(
        operation_id="policy_check",
        request=Input,
        responses=inline_serializer(
            "PolicyCheckOutput",
            {"allowed": serializers.BooleanField(), "rule": serializers.CharField(required=False)},
        ),
    )
    def post(self, request):
        data = self.Input(data=request.data)
        data.is_valid(raise_exception=True)
        persona = Persona.objects.filter(
            visibility.usable_by_server(request.auth), slug=data.validated_data["persona"]
        ).first()
        if persona is None:  # or not one this server may use: the same answer, so as not to reveal it
            raise exceptions.NotFound(f"persona: no persona named {data.validated_data['persona']!r}")
        npc = None
        if data.validated_data.get("npc"):
            npc = Npc.objects.filter(game_server=request.auth, world_id=data.validated_data["npc"]).first()
        if npc is not None and npc.is_frozen():
            return Response({"allowed": False, "rule": "npc_frozen", "detail": "a moderator or the policy froze it"})
        verdict = policy.check_actions(
            persona, [dict(data.validated_data["action"])], npc, context=data.validated_data.get("context") or {}
        )
        if verdict.blocked:
            hit = verdict.hits[0]
            return Response({"allowed": False, "rule": hit.rule, "detail": hit.detail})
        return Response({"allowed": True})


# --- metrics and health -----------------------------------------------------------------------------


@never_cache
@require_GET
def metrics(request):
    register_collector()
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)


@never_cache
@require_GET
def healthz(request):
    """The process is alive and serving (no dependency is asked)."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_redis() -> str | None:
    if not settings.REDIS_URL:
        return None
    import redis

    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_workers() -> tuple[str | None, int]:
    from inference.heartbeat import heartbeats

    if settings.VOYAGER_EMBEDDED_WORKER:
        return None, 1  # the engine starts inside this process on the first game connection
    try:
        alive = len(heartbeats().snapshot())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}", 0
    return (None if alive else "no inference worker has a fresh heartbeat"), alive


@never_cache
@require_GET
def readyz(request):
    """Ready for traffic: the database answers, Redis answers (when configured), a worker is alive."""
    checks = {"database": _check_database(), "redis": _check_redis()}
    checks["workers"], workers = _check_workers()
    ready = all(problem is None for problem in checks.values())
    body = {
        "status": "ready" if ready else "unavailable",
        "checks": {name: problem or "ok" for name, problem in checks.items()},
        "workers": workers,
    }
    if not settings.REDIS_URL:
        body["checks"]["redis"] = "not configured"
    return JsonResponse(body, status=200 if ready else 503)
