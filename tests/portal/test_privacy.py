"""Players' own words as the portal and the API show them: personal data hidden by the policy's rule, as in
NPC replies; the stored text stays whole for moderators in the admin."""

import pytest
from rest_framework.test import APIClient

from agents_app.models import Exchange, PolicyRule
from agents_app.services import rating_upsert
from tests.factories import make_exchange
from tests.portal.clients import client_for

pytestmark = pytest.mark.django_db

SAID = "write to steve.miner@example.org or call +44 20 7946 0958, I am at 120, -40, 300"
SHOWN = "write to [hidden] or call [hidden], I am at 120, -40, 300"


def hidden_in(body: str) -> bool:
    return "steve.miner@example.org" not in body and "7946 0958" not in body and SHOWN in body


@pytest.mark.parametrize("viewer", [None, "charlie"])
def test_the_feed_hides_a_players_email_and_phone_number(request, npc, viewer):
    make_exchange(npc, text=SAID)
    user = request.getfixturevalue(viewer) if viewer else None
    assert hidden_in(client_for(user).get("/replies/").content.decode())


def test_the_persona_page_hides_them_in_its_best_and_worst_replies(alice, npc):
    rating_upsert(exchange=make_exchange(npc, text=SAID, reply="Good one."), score=1, user=alice)
    rating_upsert(exchange=make_exchange(npc, text=SAID, reply="Bad one."), score=-1, user=alice)
    body = client_for().get("/personas/miner/").content.decode()
    assert hidden_in(body) and body.count(SHOWN) == 2


def test_the_compare_page_hides_them(charlie, npc):
    make_exchange(npc, text=SAID, reply="Down the east tunnel.")
    make_exchange(npc, text=SAID, reply="Ask the smith.")
    assert hidden_in(client_for(charlie).get("/compare/").content.decode())


def test_the_api_hides_them_in_the_exchange_list_and_detail(npc):
    exchange = make_exchange(npc, text=SAID)
    listed = APIClient().get("/api/exchanges/").json()["results"]
    assert [e["player_text"] for e in listed] == [SHOWN]
    assert APIClient().get(f"/api/exchanges/{exchange.pk}/").json()["player_text"] == SHOWN


def test_a_pattern_a_moderator_adds_to_the_rule_hides_that_too(npc):
    PolicyRule.objects.create(rule="personal_data", params={"patterns": {"discord": r"\b\w+#\d{4}\b"}})
    make_exchange(npc, text="add me: steve#1234")
    body = client_for().get("/replies/").content.decode()
    assert "steve#1234" not in body and "add me: [hidden]" in body


def test_the_stored_text_stays_whole_for_moderators_in_the_admin(django_user_model, npc):
    exchange = make_exchange(npc, text=SAID)
    assert Exchange.objects.get(pk=exchange.pk).player_text == SAID
    root = django_user_model.objects.create_superuser("root", "root@example.org", "root-password-1")
    body = client_for(root).get(f"/admin/agents_app/exchange/{exchange.pk}/change/").content.decode()
    assert "steve.miner@example.org" in body
