"""Content-Security-Policy on every response: scripts, styles, frames and forms from this site only.

Django 5.2 has no CSP of its own. The policy is ``SECURE_CSP`` (directive → sources, the shape Django 6's
setting of the same name takes); a view whose page needs more (a third-party UI) widens it for itself
with ``csp_override``. Nothing of the portal's own may need 'unsafe-inline': scripts and styles are
static files, handlers are added from them.
"""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.utils.deprecation import MiddlewareMixin

HEADER = "Content-Security-Policy"


def build_policy(config: dict[str, list[str]]) -> str:
    return "; ".join(f"{directive} {' '.join(sources)}".strip() for directive, sources in config.items())


def csp_override(changes: dict[str, list[str]]):
    """This view's policy: ``SECURE_CSP`` with these directives replaced."""

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            response = view(request, *args, **kwargs)
            response._csp_config = {**settings.SECURE_CSP, **changes}
            return response

        return wrapper

    return decorator


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    def process_response(self, request, response):
        if settings.DEBUG and response.status_code in (404, 500):
            return response  # Django's debug pages style and script themselves inline
        if HEADER not in response:
            response[HEADER] = build_policy(getattr(response, "_csp_config", None) or settings.SECURE_CSP)
        return response
