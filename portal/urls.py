from django.contrib import admin
from django.urls import include, path

from portal import arena_views, correction_views, operator_views, views
from portal.forms import AdminLoginForm

handler404 = "portal.api.errors.not_found_view"

admin.site.site_header = "Luanti Voyager administration"
admin.site.site_title = "Luanti Voyager"
admin.site.login_form = AdminLoginForm  # failed logins count here as on the portal's own login page

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/login/", views.login_page, name="login"),  # before auth.urls: its login, throttled
    path("accounts/", include("django.contrib.auth.urls")),
    path("profile/", views.profile, name="profile"),
    path("profile/links/<int:link_id>/visibility/", views.link_visibility, name="link-visibility"),
    path("profile/links/<int:link_id>/remove/", views.link_remove, name="link-remove"),
    path("profile/modder-request/", views.modder_request, name="modder-request"),
    path("profile/servers/", views.game_servers, name="game-servers"),
    path("profile/servers/<int:server_id>/token/", views.game_server_token, name="game-server-token"),
    path("profile/servers/<int:server_id>/revoke/", views.game_server_revoke, name="game-server-revoke"),
    path("profile/servers/<int:server_id>/check/", operator_views.game_server_check, name="game-server-check"),
    path("mod/voyager.zip", operator_views.mod_download, name="mod-download"),
    path("replies/", views.feed, name="feed"),
    path("replies/<str:exchange_id>/rate/", views.rate, name="rate"),
    path("replies/<str:exchange_id>/unrate/", views.unrate, name="unrate"),
    path("rating-guide/", views.rating_guide, name="rating-guide"),
    path("personas/", views.persona_list, name="persona-list"),
    path("personas/new/", views.persona_create, name="persona-create"),  # before <slug>: "new" is reserved
    path("personas/<slug:slug>/", views.persona_detail, name="persona-detail"),
    path("personas/<slug:slug>/edit/", views.persona_edit, name="persona-edit"),
    path("personas/<slug:slug>/shares/", views.persona_share_add, name="persona-share-add"),
    path(
        "personas/<slug:slug>/shares/<int:server_id>/remove/", views.persona_share_remove, name="persona-share-remove"
    ),
    path("personas/<slug:slug>/v<int:version>/", views.adapter_detail, name="adapter-detail"),
    path("personas/<slug:slug>/upload/", views.adapter_upload, name="adapter-upload"),
    path("personas/<slug:slug>/v<int:version>/review/", views.adapter_review, name="adapter-review"),
    path("personas/<slug:slug>/v<int:version>/download/", views.adapter_download, name="adapter-download"),
    path("leaderboard/", views.leaderboard, name="leaderboard"),
    path("compare/", views.compare, name="compare"),
    path("compare/battles/<uuid:battle_id>/vote/", arena_views.battle_vote, name="battle-vote"),
    path("compare/leaderboard/", arena_views.versions_leaderboard, name="versions-leaderboard"),
    path("replies/<str:exchange_id>/correct/", correction_views.correct, name="correct"),
    path("playground/", views.playground, name="playground"),
    path("", include("agents_app.urls")),  # /api/policy/check/, /metrics, /healthz, /readyz
    path("api/", include("portal.api.urls")),
    path("admin/", admin.site.urls),
]
