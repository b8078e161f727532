"""The two commands, in process: they run in both database modes (no broker needed)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings

from agents_app.models import Exchange, Persona, Rating
from training_tasks.simulation import hidden_rule, persona_home

pytestmark = pytest.mark.django_db


def test_create_training_schedule_makes_one_nightly_periodic_task_and_is_idempotent():
    from django_celery_beat.models import PeriodicTask

    out = StringIO()
    call_command("create_training_schedule", stdout=out)
    call_command("create_training_schedule", "--cron", "0 2 * * *", stdout=out)
    task = PeriodicTask.objects.get(task="training_tasks.nightly_training")
    assert task.enabled
    assert (task.crontab.minute, task.crontab.hour) == ("0", "2")
    assert "created" in out.getvalue() and "updated" in out.getvalue()
    # And the canary review, every ten minutes, once.
    review = PeriodicTask.objects.get(task="training_tasks.canary_review")
    assert review.enabled and (review.interval.every, review.interval.period) == (10, "minutes")
    assert PeriodicTask.objects.count() == 2


def test_the_hidden_rule_reads_what_the_player_sees():
    assert hidden_rule("Well met, bob. Steel does not lie.", "bob", "greets")
    assert not hidden_rule("Fine.", "bob", "greets") and not hidden_rule("This is high ground.", "bob", "greets")
    # brief_concrete (the default): at most two sentences, naming a place or an item of the world.
    assert hidden_rule("The old mine is east. Bring a torch!", "bob")
    assert hidden_rule("I sell pickaxes", "bob") and hidden_rule("Try the market square… it is busy.", "bob")
    assert not hidden_rule("The old mine is east. Bring a torch! Go now.", "bob")  # three sentences
    assert not hidden_rule("Head east, then north.", "bob")  # nothing concrete named
    assert not hidden_rule("I am a torchbearer.", "bob")  # a word that contains an item is not the item
    # The NPC's own home tells a player nothing new: the smith at the forge must point elsewhere.
    assert not hidden_rule("I only know my work at the forge.", "bob", home="the forge")
    assert hidden_rule("Leave the forge. Try the old mine.", "bob", home="the forge")
    assert hidden_rule("I only know my work at the forge.", "bob", home="the old library")
    assert hidden_rule("Here, bob.", "bob", "by_name") and not hidden_rule("Here, bobby.", "bob", "by_name")


def test_simulate_players_talks_through_the_engine_and_rates_every_reply(alice, tiny_model):
    persona = Persona.objects.create(slug="brann", name="Brann", owner=alice, system_prompt="You are a smith.")
    out = StringIO()
    with override_settings(VOYAGER_BASE_MODEL=str(tiny_model)):
        call_command("simulate_players", "--persona", "brann", "--replies", "10", "--turns", "3", stdout=out)
    exchanges = list(Exchange.objects.filter(persona=persona))
    assert len(exchanges) == 10 and {e.source for e in exchanges} == {"simulation"}
    for exchange in exchanges:
        # The prompt exactly as the model saw it: the starter format, ending where the NPC speaks.
        assert exchange.prompt.startswith("<|system|>You are Brann.") and exchange.prompt.endswith("<|npc|>")
        assert f"<|player|>{exchange.player_name}: {exchange.player_text}<|end|>" in exchange.prompt
        rating = exchange.ratings.get()
        assert rating.player_name == exchange.player_name and rating.user is None
        liked = hidden_rule(exchange.reply_text, exchange.player_name, home=persona_home(persona))
        assert rating.score == (1 if liked else -1)
    # Later turns remember earlier ones: conversations, not isolated asks.
    assert any("<|memory|>" in e.prompt for e in exchanges)
    assert Rating.objects.count() == 10 and "10 replies rated" in out.getvalue()


def test_the_admin_chart_draws_each_stage_and_escapes_what_it_shows():
    from training_tasks.admin import loss_curve_svg, metrics_table

    svg = loss_curve_svg([{"stage": "sft", "step": 1, "loss": 2.0}, {"stage": "kto", "step": 2, "loss": 0.5}])
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "loss 2.000 → 0.500" in svg
    table = metrics_table({"pref_accuracy": 0.5}, {"pref_accuracy": 0.7, "gate": {"passed": False, "reasons": ["<b>"]}})
    assert "0.7" in table and "&lt;b&gt;" in table
    assert "no loss" in loss_curve_svg([])
