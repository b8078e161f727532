"""The OpenAPI schema: every operation lists the errors it can answer, each in the one error shape."""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework.permissions import AllowAny, IsAuthenticatedOrReadOnly

from portal.api.errors import Error

ERROR_MEANINGS = {
    400: "invalid: the input is wrong; `fields` names each bad field",
    401: "not_authenticated or authentication_failed: no valid credentials (send `Authorization: Token <key>`)",
    403: "permission_denied: these credentials may not do this (or a session without its CSRF token)",
    404: "not_found: no such object, or not one these credentials may see",
    413: "too_large: the request body is over the limit (refused before it is read)",
    422: "rejected: the request was understood and stored, but what it carried did not pass validation",
    429: "throttled: too many requests; `Retry-After` says when to try again",
    503: "unavailable: the server cannot do this now; try again later",
}
UNSAFE = ("POST", "PUT", "PATCH", "DELETE")


class VoyagerAutoSchema(AutoSchema):
    def error_statuses(self) -> set[int]:
        view = self.view
        statuses = {400}
        if getattr(view, "authentication_classes", None):
            statuses.add(401)  # credentials that do not check out are refused on every operation
        permissions = set(getattr(view, "permission_classes", []))
        if self.method in UNSAFE or permissions - {AllowAny, IsAuthenticatedOrReadOnly}:
            statuses.add(403)
        if "{" in self.path or getattr(view, "pagination_class", None):
            statuses.add(404)  # an unknown object, or a cursor that names no page
        if self.method in UNSAFE:
            statuses.add(413)
        if getattr(view, "throttle_classes", None):
            statuses.add(429)
        return statuses | set(getattr(view, "extra_error_statuses", ()))

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for status in sorted(self.error_statuses()):
            if str(status) not in responses:
                response = OpenApiResponse(Error, description=ERROR_MEANINGS.get(status, "an error"))
                responses[str(status)] = self._get_response_for_code(response, str(status), direction=direction)
        return responses
