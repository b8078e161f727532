"""ASGI entry point: HTTP (pages, API, admin) and the WebSocket routes.

HTTP bodies are bounded before anything buffers them (``portal.limits``): ``BodyLimit`` around the
Django application, and the same checks inside Daphne, which reads a body before it starts us.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import get_resolver  # noqa: E402

from portal.limits import BodyLimit, install_daphne_guard  # noqa: E402
from portal.routing import websocket_urlpatterns  # noqa: E402

install_daphne_guard()
# The URL configuration (and every view module it imports) now, not on the first request: that
# request is a game server's first one on the HTTP binding, and would wait seconds for the imports.
get_resolver().url_patterns  # noqa: B018 (imported for its effect)

application = ProtocolTypeRouter(
    {
        "http": BodyLimit(django_asgi_app),
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
