from django.urls import path

from agents_app import views

urlpatterns = [
    path("api/policy/check/", views.PolicyCheckApi.as_view(), name="api-policy-check"),
    path("metrics", views.metrics, name="metrics"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
]
