import pytest

from agents_app import services
from agents_app.models import Exchange, GameServer, Persona, Rating

pytestmark = pytest.mark.django_db


def test_a_registered_server_authenticates_with_its_token_only(alice):
    server, raw = services.game_server_create(name="Alice's world", owner=alice)
    assert services.game_server_authenticate(raw) == server
    assert services.game_server_authenticate(raw[:-1]) is None
    assert services.game_server_authenticate("") is None
    assert services.game_server_authenticate(None) is None


def test_a_disabled_server_does_not_authenticate(alice):
    server, raw = services.game_server_create(name="w", owner=alice)
    GameServer.objects.filter(pk=server.pk).update(enabled=False)
    assert services.game_server_authenticate(raw) is None


def test_rotating_the_token_retires_the_old_one(alice):
    server, old = services.game_server_create(name="w", owner=alice)
    new = services.game_server_rotate_token(server=server)
    assert services.game_server_authenticate(old) is None
    assert services.game_server_authenticate(new) == server


def test_changing_a_rating_updates_the_same_row(npc, alice):
    exchange = Exchange.objects.create(npc=npc, persona=npc.persona, player_name="steve", player_text="hi", prompt="p")
    first, created = services.rating_upsert(exchange=exchange, user=alice, score=1, reason="nice")
    assert created
    second, created = services.rating_upsert(exchange=exchange, user=alice, score=-1, reason="rude")
    assert not created and second.pk == first.pk
    assert Rating.objects.get().score == -1 and Rating.objects.get().reason == "rude"


def test_a_rating_with_a_bad_score_or_no_rater_is_refused(npc, alice):
    exchange = Exchange.objects.create(npc=npc, persona=npc.persona, player_name="steve", player_text="hi", prompt="p")
    with pytest.raises(services.ServiceError, match="score"):
        services.rating_upsert(exchange=exchange, user=alice, score=5)
    with pytest.raises(services.ServiceError, match="exactly one rater"):
        services.rating_upsert(exchange=exchange, score=1)
    assert not Rating.objects.exists()


def test_bootstrap_creates_the_demo_once_and_reveals_secrets_once(db):
    first = services.demo_bootstrap()
    assert first.admin_password and first.server_token and first.persona_created
    assert services.game_server_authenticate(first.server_token) == first.server
    second = services.demo_bootstrap()
    assert second.admin_password is None and second.server_token is None and not second.persona_created
    assert Persona.objects.count() == 1 and GameServer.objects.count() == 1


def test_the_bootstrap_command_prints_how_to_log_in(db, capsys):
    from django.core.management import call_command

    call_command("bootstrap")
    out = capsys.readouterr().out
    assert "log in at http://127.0.0.1:8000/admin/ as 'admin' with password" in out
    assert "voyager.token = vgs_" in out
    call_command("bootstrap")
    again = capsys.readouterr().out
    assert "password '" not in again and "vgs_" not in again
