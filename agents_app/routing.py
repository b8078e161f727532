from django.urls import path

from agents_app.consumers import LuantiGatewayConsumer

websocket_urlpatterns = [
    path("ws/luanti/", LuantiGatewayConsumer.as_asgi()),
]
