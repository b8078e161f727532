"""Canary promotion: a candidate answers a share of live asks, then becomes active or is withdrawn; rollback."""

from __future__ import annotations

import pytest
from django.utils import timezone

from agents_app import adapters as lifecycle
from agents_app import canary, gateway
from agents_app.models import AdapterVersion, Battle, Persona, RaterBlock
from agents_app.services import ServiceError, rating_upsert
from tests.factories import adapter, make_exchange

pytestmark = pytest.mark.django_db
Status = AdapterVersion.Status


@pytest.fixture
def v1(persona):
    version = adapter(persona, 1, status="approved", metrics={"smoke": {"tokens": 8}})  # an upload that passed
    lifecycle.version_activate(user=persona.owner, adapter=version)
    return version


@pytest.fixture
def candidate(persona, v1):
    """A nightly run's candidate, promoted as the canary (the trial starts a while ago)."""
    version = adapter(persona, 2, status="validated", source="training")
    lifecycle.version_promote(adapter=version, activate=True, canary=True)
    AdapterVersion.objects.filter(pk=version.pk).update(status_changed_at=timezone.now() - timezone.timedelta(hours=1))
    version.refresh_from_db()
    return version


def rate(npc, version, ups: int, downs: int, tag: str) -> None:
    """Simulated players rate ``ups + downs`` replies of ``version``, one player each."""
    for k in range(ups + downs):
        exchange = make_exchange(npc, adapter_version=version, created_at=timezone.now())
        rating_upsert(exchange=exchange, score=1 if k < ups else -1, player_name=f"{tag}-{k}")


def test_a_promoted_candidate_goes_on_trial_beside_the_active_version(persona, v1, candidate):
    persona.refresh_from_db()
    assert candidate.status == Status.CANARY and persona.canary_adapter == candidate
    assert persona.active_adapter == v1 and AdapterVersion.objects.get(pk=v1.pk).status == Status.ACTIVE


def test_the_canary_answers_its_share_of_asks_and_the_active_version_the_rest(persona, npc, candidate, v1):
    persona = Persona.objects.select_related("active_adapter", "canary_adapter").get(pk=persona.pk)
    assert persona.canary_percent == 10  # the default share
    assert gateway.answering_version(persona, draw=0.05) == candidate
    assert gateway.answering_version(persona, draw=0.10) == v1
    assert gateway.answering_version(persona, draw=0.99) == v1
    persona.canary_percent = 0
    assert gateway.answering_version(persona, draw=0.0) == v1
    # Over many live asks, about one in ten plans names the canary, and the exchange keeps it.
    Persona.objects.filter(pk=persona.pk).update(canary_percent=30)
    plans = [
        gateway.ask_prepare(server=npc.game_server, npc_world_id="npc-1", persona_slug="miner") for _ in range(400)
    ]
    share = sum(p.adapter_version_id == candidate.pk for p in plans) / len(plans)
    assert 0.2 < share < 0.4
    assert {p.request["adapter"]["id"] for p in plans} == {v1.pk, candidate.pk}


def test_a_second_candidate_takes_the_place_of_the_first_on_trial(persona, candidate):
    newer = adapter(persona, 3, status="validated", source="training")
    lifecycle.version_promote(adapter=newer, activate=True, canary=True)
    persona.refresh_from_db()
    assert persona.canary_adapter == newer
    assert AdapterVersion.objects.get(pk=candidate.pk).status == Status.RETIRED


def test_the_trial_waits_for_the_minimum_number_of_ratings(persona, npc, v1, candidate):
    rate(npc, v1, 30, 30, "old")
    rate(npc, candidate, 10, 0, "new")
    trial = canary.canary_review(persona=persona, min_ratings=20)
    assert trial.decision == "wait" and "10 of the 20" in trial.reason
    assert AdapterVersion.objects.get(pk=candidate.pk).status == Status.CANARY


def test_a_canary_no_worse_within_the_intervals_becomes_active(persona, npc, v1, candidate):
    rate(npc, v1, 60, 40, "old")  # 60% thumbs up
    rate(npc, candidate, 12, 8, "new")  # 60% too, on fewer ratings
    trial = canary.canary_review(persona=persona, min_ratings=20)
    assert trial.decision == "promote", trial.reason
    persona.refresh_from_db()
    assert persona.active_adapter_id == candidate.pk and persona.canary_adapter is None
    assert AdapterVersion.objects.get(pk=v1.pk).status == Status.RETIRED
    figures = AdapterVersion.objects.get(pk=candidate.pk).metrics["canary"]
    assert figures["decision"] == "promote" and figures["canary"]["n"] == 20 and figures["active"]["n"] == 100


def test_a_clearly_worse_canary_is_withdrawn_and_the_active_version_answers_everything(persona, npc, v1, candidate):
    rate(npc, v1, 80, 20, "old")  # 80%
    rate(npc, candidate, 4, 26, "new")  # 13%: its interval lies wholly below
    trial = canary.canary_review(persona=persona, min_ratings=20)
    assert trial.decision == "withdraw", trial.reason
    persona = Persona.objects.select_related("active_adapter", "canary_adapter").get(pk=persona.pk)
    assert persona.active_adapter == v1 and persona.canary_adapter is None
    assert AdapterVersion.objects.get(pk=candidate.pk).status == Status.RETIRED
    assert gateway.answering_version(persona, draw=0.0) == v1


def test_a_canary_that_loses_its_battles_is_withdrawn_though_its_thumbs_look_fine(persona, npc, v1, candidate, charlie):
    rate(npc, v1, 50, 50, "old")
    rate(npc, candidate, 11, 9, "new")
    for k in range(20):
        left = make_exchange(npc, adapter_version=candidate, created_at=timezone.now())
        right = make_exchange(npc, adapter_version=v1, created_at=timezone.now())
        outcome = "left" if k < 3 else "right"  # the canary (on the left) wins 3 of 20
        Battle.objects.create(
            persona=persona,
            user=charlie,
            player_text="hi",
            left=left,
            right=right,
            outcome=outcome,
            voted_at=timezone.now(),
        )
    trial = canary.canary_review(persona=persona, min_ratings=20)
    assert trial.decision == "withdraw" and "battles" in trial.reason
    assert trial.battles.n == 20 and trial.battles.wins == 3


def test_blocked_raters_do_not_count_in_the_trial(persona, npc, v1, candidate):
    rate(npc, v1, 60, 40, "old")
    rate(npc, candidate, 0, 30, "spam")
    rate(npc, candidate, 12, 8, "new")
    for k in range(30):
        RaterBlock.objects.create(player_name=f"spam-{k}")
    trial = canary.canary_review(persona=persona, min_ratings=20)
    assert trial.canary.n == 20 and trial.decision == "promote"


def test_the_periodic_review_concludes_every_decided_trial(persona, npc, v1, candidate, settings):
    settings.VOYAGER_CANARY_MIN_RATINGS = 20
    rate(npc, v1, 80, 20, "old")
    rate(npc, candidate, 2, 28, "new")
    assert canary.canaries_review() == {"miner": "withdraw"}
    assert canary.canaries_review() == {}


def test_a_trial_that_already_ended_cannot_end_again(persona, candidate):
    lifecycle.canary_conclude(adapter=candidate, decision="withdraw", figures={})
    with pytest.raises(ServiceError, match="only a canary"):
        lifecycle.canary_conclude(adapter=candidate, decision="promote", figures={})
    with pytest.raises(ServiceError, match="promote or withdraw"):
        lifecycle.canary_conclude(adapter=candidate, decision="maybe", figures={})


def test_retiring_a_canary_clears_it_from_its_persona(persona, candidate):
    lifecycle.versions_retire(adapter_ids=[candidate.pk])
    persona.refresh_from_db()
    assert persona.canary_adapter is None


# --- rollback ---------------------------------------------------------------------------------------


def test_a_moderator_rolls_back_to_an_earlier_version_in_one_step(persona, v1, candidate, dana):
    lifecycle.canary_conclude(adapter=candidate, decision="promote", figures={})
    v3 = adapter(persona, 3, status="validated", source="training")
    lifecycle.version_promote(adapter=v3, activate=True, canary=True)
    assert AdapterVersion.objects.get(pk=v1.pk).status == Status.RETIRED

    lifecycle.version_rollback(user=dana, adapter=v1)
    persona.refresh_from_db()
    assert persona.active_adapter_id == v1.pk and persona.canary_adapter is None
    statuses = dict(AdapterVersion.objects.filter(persona=persona).values_list("version", "status"))
    assert statuses == {1: Status.ACTIVE, 2: Status.RETIRED, 3: Status.RETIRED}


def test_rollback_is_for_moderators_and_for_versions_that_passed_validation(persona, v1, candidate, dana, alice):
    lifecycle.canary_conclude(adapter=candidate, decision="promote", figures={})
    with pytest.raises(lifecycle.LifecycleDenied):
        lifecycle.version_rollback(user=alice, adapter=v1)  # the owner is no moderator
    rejected = adapter(persona, 3, status="rejected")
    never_validated = adapter(persona, 4, status="retired")  # an upload retired before it passed its smoke test
    for version in (rejected, never_validated, candidate):  # candidate: active now, nothing to roll back to
        with pytest.raises(lifecycle.LifecycleError, match="passed validation"):
            lifecycle.version_rollback(user=dana, adapter=version)
    persona.refresh_from_db()
    assert persona.active_adapter_id == candidate.pk


def test_the_admin_rolls_back_with_one_action_on_one_version(client, persona, v1, candidate, dana):
    lifecycle.canary_conclude(adapter=candidate, decision="promote", figures={})
    client.force_login(dana)
    url = "/admin/agents_app/adapterversion/"
    both = client.post(url, {"action": "roll_back_to_version", "_selected_action": [v1.pk, candidate.pk]}, follow=True)
    assert "Select exactly one version" in both.content.decode()
    response = client.post(url, {"action": "roll_back_to_version", "_selected_action": [v1.pk]}, follow=True)
    assert "Rolled back to: miner v1" in response.content.decode()
    persona.refresh_from_db()
    assert persona.active_adapter_id == v1.pk
