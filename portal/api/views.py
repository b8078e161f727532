"""REST API. Each view validates input, calls a service or selector, and serializes; who may see or
change what is decided in ``portal.access`` (one place per object type)."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.generics import GenericAPIView
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import IsAuthenticated, IsAuthenticatedOrReadOnly
from rest_framework.response import Response
from rest_framework.views import APIView

from agents_app import services as agents_services
from agents_app.models import AdapterVersion, PairwiseVote, Persona, Rating, TrainingRun
from agents_app.services import PERSONA_EDITABLE, ServiceError
from portal import access, adapters, selectors, services
from portal.api.errors import Error, TooLarge, api_error, error_payload
from portal.login_throttle import LoginAttempt, LoginThrottled, client_address


class ServiceErrorMixin:
    """A service's ServiceError becomes its API error before DRF handles it, so that a "log in" from a
    service is a 401 with WWW-Authenticate like DRF's own; ``portal.api.errors`` gives every error its shape."""

    def handle_exception(self, exc):
        if isinstance(exc, ServiceError):
            exc = api_error(exc, self.request)
        return super().handle_exception(exc)


SCORE_CHOICES = Rating._meta.get_field("score").choices  # one enum in the schema, shared with the model


class Newest(CursorPagination):
    ordering = "-created_at"
    page_size = 50


# --- tokens ---------------------------------------------------------------------------------------


class TooManyFailedLogins(exceptions.Throttled):
    def __init__(self, exc: LoginThrottled):
        super().__init__(detail=str(exc))  # the message says how long; Retry-After says it in seconds
        self.wait = exc.retry_after


class TokenApi(ObtainAuthToken):
    """Your API token for your username and password. Failed tries count as on the login page: past the
    limit, 429 with Retry-After."""

    def post(self, request, *args, **kwargs):
        data = request.data if hasattr(request.data, "get") else {}
        username, password = data.get("username"), data.get("password")
        if not (isinstance(username, str) and username and password):
            return super().post(request, *args, **kwargs)  # a malformed request (400), not a guess
        attempt = LoginAttempt(username=username, address=client_address(request))
        try:
            attempt.check()
        except LoginThrottled as exc:
            raise TooManyFailedLogins(exc) from None
        try:
            response = super().post(request, *args, **kwargs)
        except exceptions.ValidationError:
            attempt.failed()
            raise
        attempt.succeeded()
        return response


# --- personas -------------------------------------------------------------------------------------


class PersonaOutput(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.get_username", read_only=True)
    active_version = serializers.IntegerField(source="active_adapter.version", read_only=True, allow_null=True)

    class Meta:
        model = Persona
        fields = [
            "slug",
            "name",
            "description",
            "traits",
            "allowed_actions",
            "temperature",
            "top_p",
            "max_tokens",
            "repetition_penalty",
            "is_public",
            "owner",
            "active_version",
            "created_at",
        ]


class PersonaInput(serializers.ModelSerializer):
    traits = serializers.ListField(child=serializers.CharField(max_length=80), max_length=20, required=False)
    allowed_actions = serializers.ListField(child=serializers.CharField(max_length=40), max_length=40, required=False)

    class Meta:
        model = Persona
        fields = ["slug", *PERSONA_EDITABLE]  # what the persona service accepts, and nothing else


class PersonaListApi(ServiceErrorMixin, GenericAPIView):
    pagination_class = None
    serializer_class = PersonaOutput

    def get_queryset(self):
        return access.visible_personas(self.request.user).select_related("owner", "active_adapter").order_by("slug")

    @extend_schema(operation_id="personas_list")
    def get(self, request):
        return Response(PersonaOutput(self.get_queryset(), many=True).data)

    @extend_schema(request=PersonaInput, responses={201: PersonaOutput})
    def post(self, request):
        if not access.can_create_persona(request.user):
            raise exceptions.PermissionDenied("only modders may create personas")
        data = PersonaInput(data=request.data)
        data.is_valid(raise_exception=True)
        persona = agents_services.persona_create(owner=request.user, **data.validated_data)
        return Response(PersonaOutput(persona).data, status=status.HTTP_201_CREATED)


class PersonaDetailApi(ServiceErrorMixin, GenericAPIView):
    serializer_class = PersonaOutput

    def get(self, request, slug):
        return Response(PersonaOutput(access.access_persona(slug, request.user)).data)

    @extend_schema(request=PersonaInput, responses=PersonaOutput)
    def patch(self, request, slug):
        persona = access.access_persona_for_edit(slug, request.user)
        data = PersonaInput(persona, data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        if "slug" in data.validated_data and data.validated_data["slug"] != persona.slug:
            raise exceptions.ValidationError({"slug": "a persona's slug cannot change (NPCs refer to it)"})
        changes = {name: value for name, value in data.validated_data.items() if name != "slug"}
        persona = agents_services.persona_update(persona=persona, **changes)
        return Response(PersonaOutput(persona).data)


class PersonaShareOutput(serializers.Serializer):
    server = serializers.IntegerField(source="game_server_id")
    name = serializers.CharField(source="game_server.name")
    owner = serializers.CharField(source="game_server.owner.get_username")
    created_at = serializers.DateTimeField()


class PersonaShareInput(serializers.Serializer):
    server = serializers.IntegerField(min_value=1, help_text="the game server's id, from its owner")


class PersonaShareListApi(ServiceErrorMixin, GenericAPIView):
    """The game servers a persona is shared with: they may use it while it is private. Its owner's only."""

    permission_classes = [IsAuthenticated]
    pagination_class = None
    serializer_class = PersonaShareOutput

    @extend_schema(operation_id="persona_shares_list", responses=PersonaShareOutput(many=True))
    def get(self, request, slug):
        persona = access.access_persona_for_edit(slug, request.user)
        return Response(PersonaShareOutput(selectors.persona_shares(persona), many=True).data)

    @extend_schema(request=PersonaShareInput, responses={201: PersonaShareOutput, 200: PersonaShareOutput})
    def post(self, request, slug):
        """Share the persona with a game server; sharing again with the same one answers 200."""
        persona = access.access_persona_for_edit(slug, request.user)
        data = PersonaShareInput(data=request.data)
        data.is_valid(raise_exception=True)
        share, created = agents_services.persona_share_add(persona=persona, server_id=data.validated_data["server"])
        return Response(
            PersonaShareOutput(share).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class PersonaShareDetailApi(ServiceErrorMixin, APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(operation_id="persona_share_delete", responses={204: None})
    def delete(self, request, slug, server_id):
        """Stop sharing: the server's NPCs' next asks for the persona are answered unknown_persona."""
        persona = access.access_persona_for_edit(slug, request.user)
        agents_services.persona_share_remove(persona=persona, server_id=server_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- adapter versions -----------------------------------------------------------------------------


class AdapterVersionOutput(serializers.ModelSerializer):
    persona = serializers.CharField(source="persona.slug")
    status_detail = serializers.SerializerMethodField(help_text="What the status means for this version, in words.")

    class Meta:
        model = AdapterVersion
        fields = [
            "id",
            "persona",
            "version",
            "status",
            "status_detail",
            "source",
            "base_model_id",
            "rank",
            "target_modules",
            "size_bytes",
            "sha256",
            "model_card",
            "metrics",
            "validation_error",
            "created_at",
            "status_changed_at",
        ]

    def get_status_detail(self, adapter) -> str:
        v, statuses = f"v{adapter.version}", AdapterVersion.Status
        if adapter.status == statuses.UPLOADED:
            return (
                f"{v} is uploaded and being validated (a short test generation); poll it: the status becomes "
                "validated (then a moderator reviews it) or rejected (validation_error says why)."
            )
        if adapter.status == statuses.VALIDATED:
            return f"{v} passed validation; a moderator will review it."
        if adapter.status == statuses.REJECTED:
            return f"{v} was rejected. {adapter.validation_error}".strip()
        return f"{v} is {adapter.get_status_display().lower()}."


class AdapterVersionListApi(ServiceErrorMixin, GenericAPIView):
    serializer_class = AdapterVersionOutput
    pagination_class = Newest

    @extend_schema(
        operation_id="adapter_versions_list",
        parameters=[OpenApiParameter("persona", str, description="a persona's slug")],
    )
    def get(self, request):
        qs = access.visible_adapter_versions(request.user).select_related("persona")
        if request.query_params.get("persona"):
            qs = qs.filter(persona__slug=request.query_params["persona"])
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(AdapterVersionOutput(page, many=True).data)


class AdapterVersionDetailApi(ServiceErrorMixin, GenericAPIView):
    serializer_class = AdapterVersionOutput

    def get(self, request, slug, version):
        return Response(AdapterVersionOutput(access.access_adapter_version(slug, version, request.user)).data)


class AdapterUploadInput(serializers.Serializer):
    config = serializers.FileField(required=False, help_text="adapter_config.json")
    weights = serializers.FileField(required=False, help_text="adapter_model.safetensors")
    archive = serializers.FileField(required=False, help_text="a zip holding both files")
    model_card = serializers.CharField(required=False, allow_blank=True, max_length=adapters.MAX_CARD_CHARS)


class AdapterUploadApi(ServiceErrorMixin, GenericAPIView):
    """Upload a new version of your persona's adapter (modders): structure checked at once, then a smoke
    generation moves it from uploaded to validated (or rejected).

    201: the version is stored; its status is `uploaded` (the smoke generation runs in a worker: poll the
    version) or `validated` (it already passed). 422 `rejected`: the version is stored but its smoke generation
    has already failed; the message gives the reason and `Location` the version. 400 names the file or field
    at fault and stores nothing; 413 when the body is over VOYAGER_MAX_UPLOAD_BYTES."""

    permission_classes = [IsAuthenticated]
    parser_classes = [MultiPartParser]
    serializer_class = AdapterVersionOutput
    throttle_scope = "votes"
    extra_error_statuses = (422, 503)

    def initial(self, request, *args, **kwargs):
        # Before authentication: SessionAuthentication's CSRF check reads the body.
        if adapters.body_too_large(request._request):
            raise TooLarge(f"files: the upload is over the {adapters.max_bytes()} byte limit")
        self.limiter = adapters.UploadLimitHandler(request._request)
        request._request.upload_handlers.insert(0, self.limiter)
        super().initial(request, *args, **kwargs)

    @extend_schema(
        request={"multipart/form-data": AdapterUploadInput},
        responses={201: AdapterVersionOutput, 422: Error},
    )
    def post(self, request, slug):
        data = AdapterUploadInput(data=request.data)
        data.is_valid(raise_exception=True)
        if self.limiter.too_large:
            raise TooLarge(f"files: the upload is over the {adapters.max_bytes()} byte limit")
        d = data.validated_data
        adapter = adapters.adapter_upload(
            user=request.user,
            persona_slug=slug,
            files={k: d[k] for k in ("config", "weights", "archive") if d.get(k)},
            model_card=d.get("model_card", ""),
        )
        location = reverse("api-adapter", args=[adapter.persona.slug, adapter.version])
        if adapter.status == AdapterVersion.Status.REJECTED:  # an eager smoke generation has already failed
            # Stored (the version number is taken, the row says why), so nothing is rolled back: an answer, not a raise.
            message = f"v{adapter.version} is rejected: {adapter.validation_error}"
            return Response(
                error_payload("rejected", message),
                status=status.HTTP_422_UNPROCESSABLE_ENTITY,
                headers={"Location": location},
            )
        return Response(
            AdapterVersionOutput(adapter).data, status=status.HTTP_201_CREATED, headers={"Location": location}
        )


# --- exchanges ------------------------------------------------------------------------------------


class ExchangeOutput(serializers.Serializer):
    id = serializers.UUIDField(source="exchange.pk")
    persona = serializers.CharField(source="exchange.persona.slug")
    adapter_version = serializers.IntegerField(source="exchange.adapter_version.version", allow_null=True)
    source = serializers.CharField(source="exchange.source")
    player = serializers.CharField(source="shown_player", help_text="the name only with its owner's consent")
    player_text = serializers.CharField(help_text="the player's words, personal data hidden as in NPC replies")
    context = serializers.JSONField(source="exchange.context")
    reply_text = serializers.CharField(source="exchange.reply_text")
    actions = serializers.JSONField(source="exchange.actions")
    blocked_actions = serializers.JSONField(source="exchange.blocked_actions")
    created_at = serializers.DateTimeField(source="exchange.created_at")
    up = serializers.IntegerField()
    down = serializers.IntegerField()
    my_score = serializers.IntegerField(allow_null=True)


class ExchangeFilter(serializers.Serializer):
    persona = serializers.SlugField(required=False, max_length=63)
    server = serializers.IntegerField(required=False, min_value=1)
    mine = serializers.BooleanField(required=False, default=False)
    unrated = serializers.BooleanField(required=False, default=False)
    cursor = serializers.CharField(required=False, max_length=200)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=selectors.FEED_MAX_PAGE_SIZE, default=20)


class ExchangePage(serializers.Serializer):
    results = ExchangeOutput(many=True)
    next_cursor = serializers.CharField(allow_null=True)


class ExchangeListApi(ServiceErrorMixin, APIView):
    @extend_schema(operation_id="exchanges_list", parameters=[ExchangeFilter], responses=ExchangePage)
    def get(self, request):
        f = ExchangeFilter(data=request.query_params)
        f.is_valid(raise_exception=True)
        d = f.validated_data
        page = selectors.feed_page(
            viewer=request.user,
            persona_slug=d.get("persona", ""),
            server_id=d.get("server"),
            mine=d["mine"],
            unrated=d["unrated"],
            cursor=d.get("cursor", ""),
            limit=d["limit"],
        )
        return Response(ExchangePage({"results": page.items, "next_cursor": page.next_cursor}).data)


class ExchangeDetailApi(ServiceErrorMixin, APIView):
    @extend_schema(responses=ExchangeOutput)
    def get(self, request, pk):
        exchange = access.access_exchange(pk, request.user)
        return Response(ExchangeOutput(selectors.feed_items([exchange], request.user)[0]).data)


# --- ratings --------------------------------------------------------------------------------------


class RatingOutput(serializers.ModelSerializer):
    class Meta:
        model = Rating
        fields = ["id", "exchange", "score", "tags", "reason", "source", "created_at", "updated_at"]


class RatingInput(serializers.Serializer):
    exchange = serializers.UUIDField()
    score = serializers.ChoiceField(choices=SCORE_CHOICES)
    tags = serializers.ListField(child=serializers.ChoiceField(choices=list(selectors.REASON_TAGS)), required=False)
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True)


class RatingListApi(ServiceErrorMixin, GenericAPIView):
    permission_classes = [IsAuthenticated]
    serializer_class = RatingOutput
    pagination_class = Newest
    throttle_scope = "votes"

    @extend_schema(operation_id="ratings_list")
    def get(self, request):
        page = self.paginate_queryset(access.own_ratings(request.user))
        return self.get_paginated_response(RatingOutput(page, many=True).data)

    @extend_schema(request=RatingInput, responses={201: RatingOutput, 200: RatingOutput})
    def post(self, request):
        """Rate an exchange; rating it again changes your rating (200)."""
        data = RatingInput(data=request.data)
        data.is_valid(raise_exception=True)
        d = data.validated_data
        rating, created = services.web_rating_set(
            user=request.user,
            exchange_id=d["exchange"],
            score=d["score"],
            tags=d.get("tags", []),
            reason=d.get("reason", ""),
        )
        return Response(RatingOutput(rating).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class RatingUpdate(serializers.Serializer):
    score = serializers.ChoiceField(choices=SCORE_CHOICES, required=False)
    tags = serializers.ListField(child=serializers.ChoiceField(choices=list(selectors.REASON_TAGS)), required=False)
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True)


class RatingDetailApi(ServiceErrorMixin, GenericAPIView):
    permission_classes = [IsAuthenticated]
    serializer_class = RatingOutput
    throttle_scope = "votes"

    def _own(self, pk) -> Rating:
        rating = access.own_ratings(self.request.user).filter(pk=pk).first()
        if rating is None:
            raise exceptions.NotFound(f"rating: you have no rating {pk}")
        return rating

    def get(self, request, pk):
        return Response(RatingOutput(self._own(pk)).data)

    @extend_schema(request=RatingUpdate, responses=RatingOutput)
    def patch(self, request, pk):
        rating = self._own(pk)
        data = RatingUpdate(data=request.data)
        data.is_valid(raise_exception=True)
        d = data.validated_data
        rating, _ = services.web_rating_set(
            user=request.user,
            exchange_id=rating.exchange_id,
            score=d.get("score", rating.score),
            tags=d.get("tags", rating.tags),
            reason=d.get("reason", rating.reason),
        )
        return Response(RatingOutput(rating).data)


# --- pairwise votes -------------------------------------------------------------------------------


class PairwiseOutput(serializers.ModelSerializer):
    class Meta:
        model = PairwiseVote
        fields = ["id", "left", "right", "outcome", "created_at"]


class PairwiseInput(serializers.Serializer):
    left = serializers.UUIDField()
    right = serializers.UUIDField()
    outcome = serializers.ChoiceField(choices=PairwiseVote.Outcome.choices)


class PairwiseListApi(ServiceErrorMixin, GenericAPIView):
    permission_classes = [IsAuthenticated]
    serializer_class = PairwiseOutput
    pagination_class = Newest
    throttle_scope = "votes"

    @extend_schema(operation_id="pairwise_votes_list")
    def get(self, request):
        page = self.paginate_queryset(access.own_pairwise_votes(request.user))
        return self.get_paginated_response(PairwiseOutput(page, many=True).data)

    @extend_schema(request=PairwiseInput, responses={201: PairwiseOutput, 200: PairwiseOutput})
    def post(self, request):
        data = PairwiseInput(data=request.data)
        data.is_valid(raise_exception=True)
        d = data.validated_data
        vote, created = services.pairwise_vote_record(
            user=request.user, left_id=d["left"], right_id=d["right"], outcome=d["outcome"]
        )
        return Response(PairwiseOutput(vote).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


# --- training runs --------------------------------------------------------------------------------


class TrainingRunOutput(serializers.ModelSerializer):
    persona = serializers.CharField(source="persona.slug")
    produced_version = serializers.IntegerField(source="produced_version.version", allow_null=True)

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "persona",
            "night",
            "status",
            "method",
            "produced_version",
            "data_counts",
            "metrics_before",
            "metrics_after",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]


class TrainingRunListApi(ServiceErrorMixin, GenericAPIView):
    permission_classes = [IsAuthenticatedOrReadOnly]
    serializer_class = TrainingRunOutput
    pagination_class = Newest

    @extend_schema(operation_id="training_runs_list")
    def get(self, request):
        qs = access.visible_training_runs(request.user).select_related("persona", "produced_version")
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(TrainingRunOutput(page, many=True).data)
