"""The policy engine: every rule on its own, the settings moderators edit, the freeze, the check endpoint."""

from __future__ import annotations

import datetime as dt

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from agents_app import policy
from agents_app.models import Exchange, Npc, PolicyFlag, PolicyRule, ProtectedArea
from tests.gateway_client import ScriptedBackend, ask, collect_until, connect, running_worker, send

pytestmark = pytest.mark.django_db


def act(name, *args):
    return {"name": name, "args": [str(a) for a in args]}


@pytest.fixture
def builder(persona):
    persona.allowed_actions = ["say", "jump", "move", "give", "follow", "dig", "place"]
    persona.save()
    return persona


def past_exchange(npc, actions, seconds_ago=1):
    return Exchange.objects.create(
        npc=npc,
        persona=npc.persona,
        player_name="steve",
        player_text="hi",
        prompt="p",
        reply_text="ok",
        actions=actions,
        created_at=timezone.now() - dt.timedelta(seconds=seconds_ago),
    )


# --- actions ----------------------------------------------------------------------------------------


def test_an_action_off_the_allowlist_is_blocked(persona):
    verdict = policy.check_reply(persona, "Sure.", [act("jump"), act("dig", 0, -1, 0)])
    assert verdict.allowed == [act("jump")]
    assert verdict.blocked == [{**act("dig", 0, -1, 0), "rule": "action_not_allowed"}]
    assert verdict.hits[0].severity == "info" and verdict.text == "Sure." and verdict.freeze_seconds == 0


def test_a_move_past_its_bound_or_not_a_number_is_blocked(builder):
    verdict = policy.check_reply(builder, "", [act("move", 3, 0, -8), act("move", 9, 0, 0), act("move", "far", 0, 0)])
    assert verdict.allowed == [act("move", 3, 0, -8)]
    assert [b["rule"] for b in verdict.blocked] == ["arg_out_of_bounds", "arg_out_of_bounds"]
    assert "past the bound of 8" in verdict.hits[0].detail and "not a number" in verdict.hits[1].detail


def test_a_give_count_past_its_bound_is_blocked(builder):
    verdict = policy.check_reply(builder, "", [act("give", "default:apple", 3), act("give", "default:apple", 64)])
    assert verdict.allowed == [act("give", "default:apple", 3)]
    assert verdict.blocked[0]["rule"] == "arg_out_of_bounds"


def test_only_items_on_the_list_may_be_given(builder):
    verdict = policy.check_reply(builder, "", [act("give", "default:bread", 1), act("give", "default:diamond", 1)])
    assert verdict.allowed == [act("give", "default:bread", 1)]
    assert verdict.blocked == [{**act("give", "default:diamond", 1), "rule": "item_not_giveable"}]


def test_an_npc_past_its_actions_per_minute_is_rate_limited(builder, npc):
    PolicyRule.objects.create(rule="rate_limit", params={"per_minute": 4})
    past_exchange(npc, [act("jump"), act("say", "a"), act("follow")], seconds_ago=20)
    past_exchange(npc, [act("jump")] * 5, seconds_ago=90)  # more than a minute ago: not counted
    verdict = policy.check_reply(builder, "", [act("say", "b"), act("jump")], npc)
    assert verdict.allowed == [act("say", "b")]
    assert verdict.blocked == [{**act("jump"), "rule": "rate_limit"}]


def test_the_same_action_repeated_is_a_loop(builder, npc):
    past_exchange(npc, [act("jump"), act("jump")], seconds_ago=5)
    verdict = policy.check_reply(builder, "", [act("jump"), act("jump"), act("say", "hi")], npc)
    # max_repeats defaults to 3: a fourth jump in a row is a loop; other actions pass.
    assert verdict.allowed == [act("jump"), act("say", "hi")]
    assert verdict.blocked == [{**act("jump"), "rule": "action_loop"}]


def test_world_changing_actions_need_the_allowlist_and_a_known_unprotected_place(builder, npc, persona):
    spawn = ProtectedArea.objects.create(name="spawn", min_x=-10, min_y=-10, min_z=-10, max_x=10, max_y=10, max_z=10)
    outside, inside = {"pos": [50, 5, 50]}, {"pos": [0, 0, 0]}
    assert policy.check_reply(builder, "", [act("dig", 1, 0, 0)], npc, context=outside).allowed == [act("dig", 1, 0, 0)]
    blocked = policy.check_reply(builder, "", [act("dig", 1, 0, 0)], npc, context=inside).blocked
    assert blocked[0]["rule"] == "world_change"
    # The NPC stands outside, but digs into the area.
    edge = {"pos": [11, 0, 0]}
    assert (
        policy.check_reply(builder, "", [act("dig", -1, 0, 0)], npc, context=edge).blocked[0]["rule"] == "world_change"
    )
    # Nowhere known: refused.
    unknown = policy.check_reply(builder, "", [act("place", "default:dirt")], npc)
    assert unknown.blocked[0]["rule"] == "world_change" and "unknown" in unknown.hits[0].detail
    # A box for another server does not protect this one.
    spawn.game_server = type(npc.game_server).objects.create(name="other", owner=persona.owner, token_hash="x" * 64)
    spawn.save()
    assert policy.check_reply(builder, "", [act("dig", 1, 0, 0)], npc, context=inside).blocked == []


def test_a_persona_without_dig_on_its_allowlist_may_not_dig_anywhere(persona):
    verdict = policy.check_reply(persona, "", [act("dig", 1, 0, 0)], context={"pos": [500, 0, 500]})
    assert verdict.blocked[0]["rule"] == "action_not_allowed"


# --- text ---------------------------------------------------------------------------------------------


def test_blocked_terms_are_replaced_and_the_hit_is_severe(persona):
    PolicyRule.objects.create(rule="blocked_term", params={"terms": ["creeper hugger"]})
    verdict = policy.check_reply(persona, "You Creeper Hugger! Go away.", [])
    assert verdict.text == "You ***! Go away."
    assert verdict.hits[0].rule == "blocked_term" and verdict.severe and verdict.freeze_seconds == 5.0


def test_email_addresses_and_phone_numbers_are_hidden(persona):
    verdict = policy.check_reply(
        persona, "Mail me at bram.smith@example.org or call +44 20 7946 0958. Dig 12 deep.", []
    )
    assert verdict.text == "Mail me at [hidden] or call [hidden]. Dig 12 deep."
    assert verdict.hits[0].rule == "personal_data" and "email" in verdict.hits[0].detail
    assert "phone" in verdict.hits[0].detail


def test_coordinates_and_counts_are_not_phone_numbers(persona):
    verdict = policy.check_reply(persona, "The mine is at 120, -40, 300; bring 16 torches by 2025.", [])
    assert verdict.ok and verdict.text == "The mine is at 120, -40, 300; bring 16 torches by 2025."


def test_breaking_character_replaces_the_whole_reply(persona):
    verdict = policy.check_reply(persona, "As an AI language model, I cannot mine.", [act("jump")])
    assert verdict.text == policy.DEFAULTS["breaking_character"]["params"]["replacement"]
    assert verdict.hits[0].rule == "breaking_character" and verdict.hits[0].severity == "warning"
    assert verdict.allowed == [act("jump")] and verdict.freeze_seconds == 0


# --- the settings moderators edit -----------------------------------------------------------------------


def test_a_persona_rule_overrides_the_global_one_which_overrides_the_default(builder, persona):
    PolicyRule.objects.create(rule="arg_out_of_bounds", params={"limits": {"move": 2}})
    assert policy.check_reply(builder, "", [act("move", 3, 0, 0)]).blocked
    PolicyRule.objects.create(rule="arg_out_of_bounds", persona=builder, params={"limits": {"move": 20}})
    assert not policy.check_reply(builder, "", [act("move", 3, 0, 0)]).blocked


def test_a_disabled_rule_does_not_run_and_severity_and_freeze_are_configurable(persona):
    PolicyRule.objects.create(rule="personal_data", enabled=False)
    assert policy.check_reply(persona, "write to a@b.org", []).ok
    PolicyRule.objects.create(rule="breaking_character", severity="severe", freeze_seconds=30)
    verdict = policy.check_reply(persona, "I am an AI.", [])
    assert verdict.severe and verdict.freeze_seconds == 30


@override_settings(VOYAGER_POLICY_FREEZE_SECONDS=12)
def test_the_default_freeze_comes_from_the_setting(persona):
    assert policy.check_reply(persona, "kys", []).freeze_seconds == 12


def test_a_bad_pattern_typed_in_the_admin_does_not_stop_replies(persona):
    PolicyRule.objects.create(rule="personal_data", params={"patterns": {"broken": "(", "email": policy.EMAIL_RE}})
    assert policy.check_reply(persona, "a@b.org", []).text == "[hidden]"


def test_check_actions_is_the_action_rules_alone_for_the_training_gate(persona):
    verdict = policy.check_actions(persona, [act("say", "hi"), act("dig")])
    assert [b["rule"] for b in verdict.blocked] == ["action_not_allowed"] and verdict.text == ""


# --- through the gateway: flags, redaction, the freeze --------------------------------------------------


@pytest.fixture
def _no_embedded():
    with override_settings(VOYAGER_EMBEDDED_WORKER=False):
        yield


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_a_severe_reply_is_redacted_flagged_freezes_the_npc_and_the_mod_is_told(
    game_server, persona, _no_embedded
):
    backend = ScriptedBackend(deltas=["Write to ", "mo@example.org"], actions=[{"name": "dig", "args": []}])
    async with running_worker(backend):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask())
        reply = (await collect_until(communicator))[-1]
        await send(communicator, ask(id="a2"))
        refused = (await collect_until(communicator))[-1]
        await communicator.disconnect()
    assert reply["type"] == "reply" and reply["text"] == "Write to [hidden]"
    assert reply["blocked"] == [{"name": "dig", "args": [], "rule": "action_not_allowed"}]
    frozen_until = dt.datetime.fromisoformat(reply["frozen_until"])
    assert 3 < (frozen_until - timezone.now()).total_seconds() <= 5
    assert refused["code"] == "npc_frozen" and refused["id"] == "a2"

    def stored():
        exchange = Exchange.objects.get(pk=reply["exchange"])
        flags = {f.rule: f.severity for f in exchange.policy_flags.all()}
        return exchange, flags, Npc.objects.get(world_id="npc-1").frozen_until

    exchange, flags, npc_frozen_until = await database_sync_to_async(stored)()
    assert flags == {"action_not_allowed": "info", "personal_data": "severe"}
    assert exchange.reply_text == "Write to [hidden]" and "mo@example.org" in exchange.raw_text
    assert exchange.excluded_from_training and npc_frozen_until == frozen_until


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_a_clean_reply_has_no_frozen_until(game_server, persona, _no_embedded):
    async with running_worker(ScriptedBackend()):
        communicator, _, _ = await connect(game_server.raw_token)
        await send(communicator, ask())
        reply = (await collect_until(communicator))[-1]
        await communicator.disconnect()
    assert reply["type"] == "reply" and "frozen_until" not in reply
    assert await database_sync_to_async(PolicyFlag.objects.count)() == 0


# --- the game server's check endpoint --------------------------------------------------------------------


def check(client, token, **body):
    return client.post(
        "/api/policy/check/", body, format="json", headers={"Authorization": f"Bearer {token}"} if token else {}
    )


def test_a_game_server_may_check_an_action(game_server, builder):
    client = APIClient(enforce_csrf_checks=True)
    assert check(client, game_server.raw_token, persona="miner", action={"name": "jump", "args": []}).json() == {
        "allowed": True
    }
    refused = check(client, game_server.raw_token, persona="miner", action={"name": "move", "args": ["40", "0", "0"]})
    assert refused.status_code == 200 and refused.json()["allowed"] is False
    assert refused.json()["rule"] == "arg_out_of_bounds"
    dig = check(client, game_server.raw_token, persona="miner", action={"name": "dig", "args": []})
    assert dig.json()["rule"] == "world_change"
    outside = check(
        client, game_server.raw_token, persona="miner", action={"name": "dig", "args": []}, context={"pos": [9, 9, 9]}
    )
    assert outside.json() == {"allowed": True}
    assert PolicyFlag.objects.count() == 0  # a check stores nothing


def test_the_check_knows_the_npcs_history_and_its_freeze(game_server, builder, npc):
    past_exchange(npc, [act("jump")] * 3, seconds_ago=2)
    client = APIClient()
    looped = check(client, game_server.raw_token, persona="miner", npc="npc-1", action={"name": "jump"})
    assert looped.json()["rule"] == "action_loop"
    npc.frozen_until = timezone.now() + dt.timedelta(seconds=30)
    npc.save()
    frozen = check(client, game_server.raw_token, persona="miner", npc="npc-1", action={"name": "say", "args": ["hi"]})
    assert frozen.json()["allowed"] is False and frozen.json()["rule"] == "npc_frozen"


@pytest.mark.parametrize("token", [None, "vgs_wrong"])
def test_the_check_needs_a_game_servers_token(game_server, persona, token, alice):
    client = APIClient()
    client.force_login(alice)  # a portal session is not a game server
    response = check(client, token, persona="miner", action={"name": "jump"})
    assert response.status_code in (401, 403)


def test_the_check_validates_its_input(game_server, persona):
    client = APIClient()
    bad = check(client, game_server.raw_token, persona="miner", action={"name": "not a name"})
    assert bad.status_code == 400 and "action.name" in bad.json()["error"]["fields"]  # the API's one error shape
    unknown = check(client, game_server.raw_token, persona="nobody", action={"name": "jump"})
    assert unknown.status_code == 404


def test_the_check_answers_a_persona_the_server_may_not_use_as_one_that_does_not_exist(bob_server, private_persona):
    client = APIClient()
    refused = check(client, bob_server.raw_token, persona="secret", action={"name": "jump"})
    unknown = check(client, bob_server.raw_token, persona="nobody", action={"name": "jump"})
    assert refused.status_code == unknown.status_code == 404
    assert refused.json() == {
        "error": {"code": "not_found", "message": "persona: no persona named 'secret'", "fields": {}}
    }
    assert unknown.json() == {
        "error": {"code": "not_found", "message": "persona: no persona named 'nobody'", "fields": {}}
    }
    from agents_app.services import persona_share_add

    persona_share_add(persona=private_persona, server_id=bob_server.pk)
    shared = check(client, bob_server.raw_token, persona="secret", action={"name": "jump"})
    assert shared.status_code == 200 and shared.json()["allowed"] is False  # on no allowlist: but it is checked


def test_the_owners_server_may_check_its_private_persona(game_server, private_persona):
    private_persona.allowed_actions = ["jump"]
    private_persona.save()
    assert check(APIClient(), game_server.raw_token, persona="secret", action={"name": "jump"}).json() == {
        "allowed": True
    }
