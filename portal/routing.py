"""WebSocket routes: the game gateway (protocol v1 at /ws/luanti/) and the browser playground."""

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from agents_app.routing import websocket_urlpatterns as game_routes
from portal.consumers import PlaygroundConsumer

# Browsers send cookies with any cross-site WebSocket: the origin check keeps other sites off.
playground = AllowedHostsOriginValidator(AuthMiddlewareStack(PlaygroundConsumer.as_asgi()))

websocket_urlpatterns = [*game_routes, path("ws/playground/", playground)]
