from django.urls import path

from agents_app import http_gateway, views

urlpatterns = [
    path("api/policy/check/", views.PolicyCheckApi.as_view(), name="api-policy-check"),
    # The HTTP binding of the game gateway (docs/protocol.md); the WebSocket is /ws/luanti/.
    path("http/luanti/session/", http_gateway.session, name="luanti-http-session"),
    path("http/luanti/frames/", http_gateway.frames, name="luanti-http-frames"),
    path("http/luanti/poll/", http_gateway.poll, name="luanti-http-poll"),
    path("metrics", views.metrics, name="metrics"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
]
