"""The moderators' policy-audit queue in the admin: the queue, its filters, each bulk action, the admin log."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents_app.models import AdapterVersion, Exchange, Npc, PolicyFlag, PolicyRule

pytestmark = pytest.mark.django_db
QUEUE = reverse("admin:agents_app_policyflag_changelist")


@pytest.fixture
def adapter(persona):
    adapter = AdapterVersion.objects.create(
        persona=persona,
        version=2,
        files_path="adapters/miner/2",
        sha256="c" * 64,
        base_model_id="starter",
        rank=8,
        target_modules=["q_proj"],
        size_bytes=10,
        status="active",
    )
    persona.active_adapter = adapter
    persona.save()
    return adapter


def flagged(npc, adapter=None, rule="personal_data", severity="severe", reply="Mail [hidden]", player_text="hi"):
    exchange = Exchange.objects.create(
        npc=npc,
        persona=npc.persona,
        player_name="steve",
        player_text=player_text,
        prompt="p",
        reply_text=reply,
        raw_text="Mail mo@example.org [[ACTION:dig]]",
        actions=[{"name": "jump", "args": []}],
        blocked_actions=[{"name": "dig", "args": [], "rule": "action_not_allowed"}],
        adapter_version=adapter,
    )
    return PolicyFlag.objects.create(exchange=exchange, rule=rule, severity=severity, detail="personal data: email")


def client_for(user) -> Client:
    client = Client(enforce_csrf_checks=False)
    client.force_login(user)
    return client


def run_action(client, action, flags):
    return client.post(QUEUE, {"action": action, "_selected_action": [f.pk for f in flags], "index": 0}, follow=True)


def test_the_queue_shows_open_flags_with_the_whole_exchange(dana, npc, adapter):
    open_flag = flagged(npc, adapter, player_text="what is your email?")
    done = flagged(npc, adapter, rule="blocked_term")
    done.status = "dismissed"
    done.save()
    page = client_for(dana).get(QUEUE)
    assert page.status_code == 200
    body = page.content.decode()
    assert "what is your email?" in body and "Mail [hidden]" in body and "miner v2 (active)" in body
    assert "action_not_allowed" in body and "Alice&#x27;s world" in body
    assert list(page.context["cl"].result_list) == [open_flag]
    everything = client_for(dana).get(QUEUE, {"status": "all"})
    assert set(everything.context["cl"].result_list) == {open_flag, done}
    detail = client_for(dana).get(reverse("admin:agents_app_policyflag_change", args=[open_flag.pk]))
    assert "mo@example.org" in detail.content.decode()  # the moderator sees what the model really wrote


def test_the_queue_filters_by_rule_severity_persona_version_and_server(dana, npc, adapter, persona, game_server):
    pii = flagged(npc, adapter)
    term = flagged(npc, None, rule="blocked_term", severity="warning")
    client = client_for(dana)

    def shown(**params):
        return set(client.get(QUEUE, params).context["cl"].result_list)

    assert shown(rule="blocked_term") == {term}
    assert shown(severity="severe") == {pii}
    assert shown(exchange__persona__id__exact=persona.pk) == {pii, term}
    assert shown(exchange__adapter_version__id__exact=adapter.pk) == {pii}
    assert shown(exchange__npc__game_server__id__exact=game_server.pk) == {pii, term}


def test_confirm_and_dismiss_record_the_reviewer_and_land_in_the_admin_log(dana, npc):
    a, b = flagged(npc), flagged(npc)
    run_action(client_for(dana), "confirm_flags", [a])
    run_action(client_for(dana), "dismiss_flags", [b])
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.status, a.reviewed_by, b.status, b.reviewed_by) == ("confirmed", dana, "dismissed", dana)
    assert a.reviewed_at is not None
    logged = {(e.object_id, e.change_message) for e in LogEntry.objects.filter(user=dana)}
    assert logged == {(str(a.pk), "Confirmed the flag"), (str(b.pk), "Dismissed the flag")}


def test_exclude_from_training(dana, npc):
    flag = flagged(npc)
    run_action(client_for(dana), "exclude_from_training", [flag])
    assert Exchange.objects.get(pk=flag.exchange_id).excluded_from_training
    entry = LogEntry.objects.get(user=dana)
    assert entry.object_id == str(flag.exchange_id) and "training" in entry.change_message


def test_freeze_and_unfreeze_the_npc(dana, npc):
    flag = flagged(npc)
    run_action(client_for(dana), "freeze_npcs", [flag])
    npc.refresh_from_db()
    assert npc.is_frozen() and npc.frozen_until > timezone.now() + timezone.timedelta(days=365)
    run_action(client_for(dana), "unfreeze_npcs", [flag])
    npc.refresh_from_db()
    assert npc.frozen_until is None
    assert [e.change_message for e in LogEntry.objects.filter(object_id=str(npc.pk)).order_by("action_time")] == [
        "Frozen until a moderator unfreezes it (policy audit)",
        "Unfrozen (policy audit)",
    ]


def test_retire_the_adapter_version_and_the_persona_falls_back_to_the_base_model(dana, npc, adapter, persona):
    flag = flagged(npc, adapter)
    page = run_action(client_for(dana), "retire_adapter_versions", [flag])
    assert "Retired 1 adapter version" in page.content.decode()
    adapter.refresh_from_db()
    persona.refresh_from_db()
    assert adapter.status == "retired" and persona.active_adapter is None
    assert LogEntry.objects.get(user=dana).object_id == str(adapter.pk)


@pytest.mark.parametrize(
    "action",
    [
        "confirm_flags",
        "dismiss_flags",
        "exclude_from_training",
        "freeze_npcs",
        "unfreeze_npcs",
        "retire_adapter_versions",
    ],
)
def test_a_non_moderator_can_neither_see_the_queue_nor_act_on_it(erin, npc, adapter, persona, action):
    flag = flagged(npc, adapter)
    client = client_for(erin)
    assert client.get(QUEUE).status_code == 403
    response = client.post(QUEUE, {"action": action, "_selected_action": [flag.pk], "index": 0})
    assert response.status_code == 403
    flag.refresh_from_db()
    adapter.refresh_from_db()
    assert flag.status == "open" and adapter.status == "active" and not Npc.objects.get(pk=npc.pk).is_frozen()
    assert not Exchange.objects.get(pk=flag.exchange_id).excluded_from_training
    assert not LogEntry.objects.exists()


def test_a_moderator_without_the_adapter_permission_is_not_offered_retire(dana, npc, adapter):
    group = Group.objects.get(name="moderator")
    group.permissions.remove(group.permissions.get(codename="change_adapterversion"))
    flag = flagged(npc, adapter)
    client = client_for(dana)
    assert "retire_adapter_versions" not in client.get(QUEUE).content.decode()
    run_action(client, "retire_adapter_versions", [flag])
    adapter.refresh_from_db()
    assert adapter.status == "active"


def test_counts_per_persona_and_version_over_time(dana, npc, adapter, erin):
    flagged(npc, adapter)
    flagged(npc, adapter, rule="blocked_term")
    flagged(npc, None, rule="breaking_character")
    url = reverse("admin:agents_app_policyflag_summary")
    page = client_for(dana).get(url, {"days": "7"})
    assert page.status_code == 200
    rows = page.context["rows"]
    assert [(r["persona"], r["adapter"], r["total"], r["open"]) for r in rows] == [
        ("miner", "v2", 2, 2),
        ("miner", "base model", 1, 1),
    ]
    assert rows[0]["per_day"][-1] == 2 and len(rows[0]["per_day"]) == 7
    assert client_for(erin).get(url).status_code == 403


def test_moderators_edit_the_policy_rules_in_the_admin(dana, persona):
    client = client_for(dana)
    response = client.post(
        reverse("admin:agents_app_policyrule_add"),
        {
            "rule": "blocked_term",
            "persona": persona.pk,
            "enabled": "on",
            "severity": "severe",
            "params": '{"terms": ["griefer"]}',
            "freeze_seconds": "10",
            "note": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    rule = PolicyRule.objects.get()
    assert rule.params == {"terms": ["griefer"]} and LogEntry.objects.filter(user=dana).count() == 1


# --- adapter versions: the lifecycle moves through the services, not an edited status -------------

VERSIONS = reverse("admin:agents_app_adapterversion_changelist")


def version(persona, n, status):
    return AdapterVersion.objects.create(
        persona=persona,
        version=n,
        files_path=f"adapters/miner/{n}",
        sha256=f"{n:064d}",
        base_model_id="starter",
        rank=8,
        target_modules=["q_proj"],
        size_bytes=10,
        status=status,
    )


def version_action(client, action, versions):
    return client.post(
        VERSIONS, {"action": action, "_selected_action": [v.pk for v in versions], "index": 0}, follow=True
    )


def test_the_status_of_a_version_cannot_be_edited_in_the_admin(dana, persona):
    uploaded = version(persona, 1, "uploaded")
    client = client_for(dana)
    page = client.get(reverse("admin:agents_app_adapterversion_change", args=[uploaded.pk]))
    assert page.status_code == 200 and 'name="status"' not in page.content.decode()
    client.post(reverse("admin:agents_app_adapterversion_change", args=[uploaded.pk]), {"status": "active"})
    uploaded.refresh_from_db()
    assert uploaded.status == "uploaded"


def test_a_moderator_approves_and_activates_validated_versions_but_not_unvalidated_ones(dana, persona):
    validated, uploaded = version(persona, 1, "validated"), version(persona, 2, "uploaded")
    client = client_for(dana)
    page = version_action(client, "approve_versions", [validated, uploaded])
    text = page.content.decode()
    # (the admin capitalises the first letter of a message)
    assert "iner v2: status: v2 is still being validated" in text and "Approved: miner v1." in text
    validated.refresh_from_db()
    uploaded.refresh_from_db()
    assert (validated.status, uploaded.status) == ("approved", "uploaded")
    version_action(client, "activate_versions", [validated])
    validated.refresh_from_db()
    persona.refresh_from_db()
    assert validated.status == "active" and persona.active_adapter_id == validated.pk
    assert LogEntry.objects.filter(object_id=str(validated.pk), change_message__contains="activated").exists()


def test_a_moderator_rejects_a_validated_version(dana, persona):
    validated = version(persona, 1, "validated")
    version_action(client_for(dana), "reject_versions", [validated])
    validated.refresh_from_db()
    assert validated.status == "rejected"


def test_staff_who_are_not_moderators_cannot_approve(erin, persona):
    validated = version(persona, 1, "validated")
    version_action(client_for(erin), "approve_versions", [validated])
    validated.refresh_from_db()
    assert validated.status == "validated"
