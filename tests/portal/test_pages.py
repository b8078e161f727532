import pytest
from django.test import Client

from agents_app.models import Exchange

pytestmark = pytest.mark.django_db


def test_the_home_page_lists_personas_and_escapes_what_the_model_wrote(npc):
    Exchange.objects.create(
        npc=npc,
        persona=npc.persona,
        player_name="steve",
        player_text="hi",
        prompt="p",
        reply_text="<script>alert(1)</script>",
    )
    response = Client(enforce_csrf_checks=True).get("/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Miner Mo" in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "<script>alert" not in body


def test_the_admin_asks_for_a_login_and_lets_an_administrator_in(django_user_model):
    client = Client()
    assert client.get("/admin/").status_code == 302
    django_user_model.objects.create_superuser("root", "", "root-password-1")
    client.login(username="root", password="root-password-1")
    for path in [
        "/admin/",
        "/admin/agents_app/exchange/",
        "/admin/agents_app/adapterversion/",
        "/admin/agents_app/rating/",
        "/admin/agents_app/gameserver/",
        "/admin/agents_app/trainingrun/",
        "/admin/agents_app/policyflag/",
    ]:
        assert client.get(path).status_code == 200, path


def test_adding_a_game_server_in_admin_shows_its_token_once(django_user_model):
    admin = django_user_model.objects.create_superuser("root", "", "root-password-1")
    client = Client()
    client.force_login(admin)
    response = client.post(
        "/admin/agents_app/gameserver/add/", {"name": "World", "owner": admin.pk, "enabled": "on"}, follow=True
    )
    body = response.content.decode()
    assert "shown only now" in body
    from agents_app.models import GameServer
    from agents_app.services import game_server_authenticate

    server = GameServer.objects.get(name="World")
    token = body.split("<code>")[1].split("</code>")[0]
    assert game_server_authenticate(token) == server
    assert token not in client.get(f"/admin/agents_app/gameserver/{server.pk}/change/").content.decode()


def test_the_training_runs_admin_shows_where_a_running_run_is(django_user_model, npc):
    from agents_app.models import TrainingRun

    admin = django_user_model.objects.create_superuser("root", "", "root-password-1")
    client = Client()
    client.force_login(admin)
    running = TrainingRun.objects.create(
        persona=npc.persona, night="2026-12-01", status=TrainingRun.Status.RUNNING, stage="training", progress=42
    )
    TrainingRun.objects.create(persona=npc.persona, night="2026-11-30", status=TrainingRun.Status.SUCCEEDED)
    body = client.get("/admin/agents_app/trainingrun/").content.decode()
    assert '<progress max="100" value="42"></progress> 42% training' in body
    assert body.count("<progress") == 1  # a finished run has no bar
    page = client.get(f"/admin/agents_app/trainingrun/{running.pk}/change/").content.decode()
    assert "42% training" in page
