"""WebSocket routes: the game gateway (protocol v1 at /ws/luanti/)."""

from agents_app.routing import websocket_urlpatterns as game_routes

websocket_urlpatterns = [*game_routes]
