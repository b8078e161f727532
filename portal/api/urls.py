from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from portal.api import views
from portal.csp import csp_override

# Third-party pages, whose scripts still come only from this site's files: Swagger UI draws its icons as
# data: images; ReDoc writes its styles into the page as it renders and searches in a worker it makes from
# a blob. (ReDoc's footer logo, from Redocly's CDN, stays refused.)
swagger_policy = csp_override({"img-src": ["'self'", "data:"]})
redoc_policy = csp_override(
    {"style-src": ["'self'", "'unsafe-inline'"], "img-src": ["'self'", "data:"], "worker-src": ["'self'", "blob:"]}
)

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file (docs/?script): no inline script.
    path("docs/", swagger_policy(SpectacularSwaggerSplitView.as_view(url_name="api-schema")), name="api-docs"),
    path("redoc/", redoc_policy(SpectacularRedocView.as_view(url_name="api-schema")), name="api-redoc"),
    path("token/", views.TokenApi.as_view(), name="api-token"),
    path("personas/", views.PersonaListApi.as_view(), name="api-personas"),
    path("personas/<slug:slug>/", views.PersonaDetailApi.as_view(), name="api-persona"),
    path("personas/<slug:slug>/shares/", views.PersonaShareListApi.as_view(), name="api-persona-shares"),
    path(
        "personas/<slug:slug>/shares/<int:server_id>/",
        views.PersonaShareDetailApi.as_view(),
        name="api-persona-share",
    ),
    path("personas/<slug:slug>/adapter-versions/", views.AdapterUploadApi.as_view(), name="api-adapter-upload"),
    path("adapter-versions/", views.AdapterVersionListApi.as_view(), name="api-adapter-versions"),
    path("adapter-versions/<slug:slug>/<int:version>/", views.AdapterVersionDetailApi.as_view(), name="api-adapter"),
    path("exchanges/", views.ExchangeListApi.as_view(), name="api-exchanges"),
    path("exchanges/<uuid:pk>/", views.ExchangeDetailApi.as_view(), name="api-exchange"),
    path("ratings/", views.RatingListApi.as_view(), name="api-ratings"),
    path("ratings/<int:pk>/", views.RatingDetailApi.as_view(), name="api-rating"),
    path("pairwise-votes/", views.PairwiseListApi.as_view(), name="api-pairwise-votes"),
    path("training-runs/", views.TrainingRunListApi.as_view(), name="api-training-runs"),
]
