"""WebSocket routes. The game gateway joins here (protocol v1 at /ws/luanti/)."""

websocket_urlpatterns: list = []
