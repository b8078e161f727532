"""WebSocket routes: the game gateway (protocol v1 at /ws/luanti/) and the browser playground."""

from channels.auth import AuthMiddlewareStack
from django.urls import path

from agents_app.routing import websocket_urlpatterns as game_routes
from portal.arena_consumers import ArenaConsumer
from portal.consumers import PlaygroundConsumer
from portal.origins import BrowserOriginValidator

# Browsers send cookies with any cross-site WebSocket: only pages of this site's own origin (scheme, host
# and port) or of CSRF_TRUSTED_ORIGINS may open it. The game route takes a token and no Origin.
playground = BrowserOriginValidator(AuthMiddlewareStack(PlaygroundConsumer.as_asgi()))

arena = BrowserOriginValidator(AuthMiddlewareStack(ArenaConsumer.as_asgi()))

websocket_urlpatterns = [*game_routes, path("ws/playground/", playground), path("ws/arena/", arena)]
