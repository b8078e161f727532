"""One error shape for the whole API, and the handler that gives it to every error.

    {"error": {"code": "not_found", "message": "persona: no persona 'x'", "fields": {}}}

``code`` is stable and machine-readable (``invalid``, ``not_authenticated``, ``authentication_failed``,
``permission_denied``, ``not_found``, ``method_not_allowed``, ``unsupported_media_type``, ``parse_error``,
``throttled``, ``too_large``, ``unavailable``, ``rejected``, ``internal``...); ``message`` is for people;
``fields`` maps a request field to its problems (validation errors only; ``{}`` otherwise). A
service's ``ServiceError`` becomes the matching API error here, so no view translates them itself.
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from agents_app.services import InvalidFields, ServiceError

log = logging.getLogger("voyager.api")


def error_payload(code: str, message: str, fields: dict[str, list[str]] | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


class ErrorBody(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, for programs: invalid, not_authenticated, not_found, throttled...")
    message = serializers.CharField(help_text="For people: what is wrong, naming the field or file at fault.")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Validation errors, field by field (nested fields joined with dots); empty otherwise.",
    )


class Error(serializers.Serializer):
    """Every API error answers this."""

    error = ErrorBody()


class TooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"
    default_detail = "the request body is too large"


class Unavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "unavailable"
    default_detail = "the server cannot do this now"


def api_error(exc: ServiceError, request=None) -> exceptions.APIException:
    """The API error a service's complaint means."""
    if isinstance(exc, InvalidFields):
        return exceptions.ValidationError(exc.fields)
    if exc.code == "forbidden" and request is not None and not request.user.is_authenticated:
        return exceptions.NotAuthenticated(str(exc))  # "log in", as DRF's own permission checks answer
    if exc.code == "forbidden":
        return exceptions.PermissionDenied(str(exc))
    if exc.code == "not_found":
        return exceptions.NotFound(str(exc))
    if exc.code == "unavailable":
        return Unavailable(str(exc))
    return exceptions.ValidationError(str(exc), code=exc.code)


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(detail, list) and any(isinstance(item, dict | list) for item in detail):
        out = {}
        for index, value in enumerate(detail):
            if value:
                out.update(_flatten(value, f"{prefix}.{index}" if prefix else str(index)))
        return out
    items = detail if isinstance(detail, list) else [detail]
    return {prefix or "non_field_errors": [str(item) for item in items]}


def _validation_error(detail) -> tuple[str, dict[str, list[str]]]:
    if isinstance(detail, dict):
        fields = _flatten(detail)
        message = "; ".join(f"{name}: {' '.join(problems)}" for name, problems in fields.items())
        return message, fields
    items = detail if isinstance(detail, list) else [detail]
    return " ".join(str(item) for item in items), {}


def _code(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    if isinstance(codes, str):
        return codes
    if isinstance(codes, list) and len(codes) == 1 and isinstance(codes[0], str) and codes[0] != "invalid":
        return codes[0]  # a service's own code, carried by ValidationError(message, code=...)
    return "invalid"


def exception_handler(exc, context):
    """DRF's EXCEPTION_HANDLER: every error, the one shape (and the headers DRF would send)."""
    request = context.get("request")
    if isinstance(exc, ServiceError):
        exc = api_error(exc, request)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed) and not getattr(
        exc, "auth_header", None
    ):
        view = context.get("view")
        header = view.get_authenticate_header(request) if view is not None and request is not None else None
        if header:
            exc.auth_header = header
        else:  # no scheme to name (as DRF decides): a 401 must carry one, so this is a 403
            exc.status_code = status.HTTP_403_FORBIDDEN
    if not isinstance(exc, exceptions.APIException):
        log.exception("API %s %s failed", getattr(request, "method", "?"), getattr(request, "path", "?"))
        set_rollback()
        return Response(error_payload("internal", "the server failed; the error is logged"), status=500)

    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None) is not None:
        headers["Retry-After"] = str(int(exc.wait))
    if isinstance(exc, exceptions.ValidationError):
        message, fields = _validation_error(exc.detail)
    else:
        message, fields = str(exc.detail), {}
    set_rollback()
    return Response(error_payload(_code(exc), message, fields), status=exc.status_code, headers=headers)


def not_found_view(request, exception):
    """Django's handler404: an unknown URL under /api/ answers the API's shape, a page otherwise."""
    from django.http import JsonResponse
    from django.views import defaults

    if request.path.startswith("/api/"):
        return JsonResponse(error_payload("not_found", f"no API endpoint at {request.path}"), status=404)
    return defaults.page_not_found(request, exception)
