"""The policy-audit queue one flag after another, and the bulk exclusion on exchanges, in the admin."""

from __future__ import annotations

import pytest

from agents_app.models import Exchange, PolicyFlag
from agents_app.selectors import next_open_flag
from tests.factories import make_exchange
from tests.portal.clients import client_for, csrf_post

pytestmark = pytest.mark.django_db
FLAGS = "/admin/agents_app/policyflag/"


@pytest.fixture
def flags(npc):
    return [
        PolicyFlag.objects.create(exchange=make_exchange(npc, reply=f"reply {i}"), rule="rude", severity="warning")
        for i in range(3)
    ]


def test_the_next_open_flag_is_the_oldest_after_this_one_and_wraps_around(flags):
    first, second, third = flags
    assert next_open_flag() == first
    assert next_open_flag(after=first) == second
    assert next_open_flag(after=third) == first
    PolicyFlag.objects.exclude(pk=third.pk).update(status="dismissed")
    assert next_open_flag(after=third) is None


def test_work_the_queue_opens_the_oldest_open_flag(dana, flags):
    response = client_for(dana).get(f"{FLAGS}next/")
    assert response.status_code == 302 and response["Location"] == f"{FLAGS}{flags[0].pk}/change/"


def test_confirm_and_next_decides_the_flag_and_goes_on(dana, flags):
    first, second, _ = flags
    response = csrf_post(client_for(dana), f"{FLAGS}{first.pk}/change/", {"status": "open", "_confirm_next": "1"})
    assert response.status_code == 302 and response["Location"] == f"{FLAGS}{second.pk}/change/"
    first.refresh_from_db()
    assert (first.status, first.reviewed_by) == ("confirmed", dana)


def test_skip_leaves_the_flag_open(dana, flags):
    first, second, _ = flags
    response = csrf_post(client_for(dana), f"{FLAGS}{first.pk}/change/", {"status": "open", "_skip_next": "1"})
    assert response["Location"] == f"{FLAGS}{second.pk}/change/"
    assert PolicyFlag.objects.get(pk=first.pk).status == "open"


def test_the_last_decision_says_the_queue_is_empty(dana, flags):
    PolicyFlag.objects.exclude(pk=flags[2].pk).update(status="dismissed")
    client = client_for(dana)
    response = csrf_post(client, f"{FLAGS}{flags[2].pk}/change/", {"status": "open", "_dismiss_next": "1"})
    assert response["Location"] == FLAGS
    assert "The queue is empty" in client.get(FLAGS).content.decode()


def test_a_player_cannot_work_the_queue(charlie, flags):
    assert client_for(charlie).get(f"{FLAGS}next/").status_code == 302  # to the admin login


def test_exchanges_are_excluded_from_training_in_bulk(dana, npc):
    exchanges = [make_exchange(npc) for _ in range(3)]
    Exchange.objects.filter(pk=exchanges[0].pk).update(excluded_from_training=True)
    client = client_for(dana)
    response = csrf_post(
        client,
        "/admin/agents_app/exchange/",
        {"action": "exclude_from_training", "_selected_action": [str(e.pk) for e in exchanges], "index": "0"},
    )
    assert response.status_code == 302
    assert Exchange.objects.filter(excluded_from_training=True).count() == 3
    assert "Excluded 2 exchange(s) from training (1 already were)." in client.get(response["Location"]).content.decode()
