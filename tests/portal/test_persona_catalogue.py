"""The persona catalogue (search, tags, sorting) and a persona page's versions side by side."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.models import Persona, PolicyFlag
from agents_app.services import rating_upsert
from portal import selectors
from tests.factories import adapter, make_exchange, voted_battle
from tests.portal.clients import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalogue(alice, npc, persona):
    """miner (the npc's persona, 'gruff'), baker ('friendly', newest, most active), smith (unrated)."""
    Persona.objects.filter(pk=persona.pk).update(traits=["gruff", "knows the mines"], description="Digs all day.")
    baker = Persona.objects.create(slug="baker", name="Baker", owner=alice, traits=["friendly"], description="Bread.")
    smith = Persona.objects.create(slug="smith", name="Smith", owner=alice, description="Forges swords.")
    old = timezone.now() - timedelta(days=40)
    miner_replies = [make_exchange(npc, created_at=old) for _ in range(3)]
    for e, score in zip(miner_replies, (1, 1, -1), strict=True):
        rating_upsert(exchange=e, score=score, player_name="steve")
    baker_replies = [make_exchange(npc, persona=baker) for _ in range(4)]
    for e in baker_replies:
        rating_upsert(exchange=e, score=1, player_name="steve")
    return persona, baker, smith


def slugs(viewer, **kwargs):
    return [e.persona.slug for e in selectors.persona_catalog(viewer, **kwargs)[0]]


def test_the_catalogue_sorts_by_rating_activity_newest_and_name(charlie, catalogue):
    assert slugs(charlie, sort="rating") == ["baker", "miner", "smith"]  # unrated last
    assert slugs(charlie, sort="activity") == ["baker", "miner", "smith"]  # miner's replies are 40 days old
    assert slugs(charlie, sort="newest") == ["smith", "baker", "miner"]
    assert slugs(charlie, sort="name") == ["baker", "miner", "smith"]


def test_the_catalogue_searches_and_narrows_to_a_tag(charlie, catalogue):
    assert slugs(charlie, q="SWORD") == ["smith"]
    assert slugs(charlie, tag="gruff") == ["miner"]
    assert slugs(charlie, q="bread", tag="gruff") == []
    assert selectors.persona_catalog(charlie)[1] == ["friendly", "gruff", "knows the mines"]


def test_the_catalogue_page_refuses_an_unknown_sort_naming_it(charlie, catalogue):
    response = client_for(charlie).get("/personas/?sort=loudest")
    assert (
        response.status_code == 400
        and "sort: must be one of rating, activity, newest, name" in response.content.decode()
    )


def test_the_catalogue_page_shows_figures_and_tag_links(charlie, catalogue):
    page = client_for(charlie).get("/personas/?tag=friendly").content.decode()
    assert 'id="persona-baker"' in page and 'id="persona-miner"' not in page
    assert "100% thumbs up of 4" in page and 'class="on" aria-current="true">friendly' in page


def test_a_private_persona_stays_out_of_strangers_catalogues(charlie, alice, private_persona):
    assert "secret" not in slugs(charlie)
    assert "secret" in slugs(alice)


def test_the_persona_page_sets_its_versions_side_by_side(alice, charlie, npc, persona):
    v1, v2 = adapter(persona, 1, status="retired"), adapter(persona, 2, status="active")
    adapter(persona, 3, status="validated")  # only its owner sees it
    for version, scores in ((v1, (1, -1, -1, -1)), (v2, (1, 1, 1))):
        for score in scores:
            e = make_exchange(npc, adapter_version=version)
            rating_upsert(exchange=e, score=score, player_name="steve")
    PolicyFlag.objects.create(exchange=e, rule="rude", severity="warning")
    make_exchange(npc, adapter_version=v2, is_test=True)  # a test: not counted
    figures = {f.label: f for f in selectors.persona_version_figures(persona, charlie)}
    assert list(figures) == ["v2", "v1"]
    assert (figures["v2"].share, figures["v2"].total, figures["v2"].exchanges, figures["v2"].policy_hits) == (
        100,
        3,
        3,
        1,
    )
    assert figures["v2"].interval == (44, 100)
    assert (figures["v1"].share, figures["v1"].interval) == (25, (5, 70))
    assert [f.label for f in selectors.persona_version_figures(persona, alice)] == ["v3", "v2", "v1"]
    page = client_for(charlie).get("/personas/miner/").content.decode()
    row = page.split('id="version-v2"')[1].split("</tr>")[0]
    assert "100%" in row and "44–100%" in row
    assert "battles)" not in page  # no battle fought yet: no rating


def test_the_persona_page_shows_each_versions_battle_rating(charlie, npc, persona):
    v1, v2 = adapter(persona, 1, status="retired"), adapter(persona, 2, status="active")
    for k in range(12):  # v2 wins 9 of 12 battles against v1
        voted_battle(npc, charlie, v2, v1, "left" if k < 9 else "right")
    figures = {f.label: f for f in selectors.persona_version_figures(persona, charlie)}
    assert figures["v2"].battle.rating > figures["v1"].battle.rating
    assert figures["v2"].battle.battles == figures["v1"].battle.battles == 12 and figures["v2"].battle.wins == 9
    page = client_for(charlie).get("/personas/miner/").content.decode()
    row = page.split('id="version-v2"')[1].split("</tr>")[0]
    shown = figures["v2"].battle
    assert f"{shown.rating:.0f}</a>" in row and f"({shown.low:.0f}–{shown.high:.0f}; 12 battles)" in row


def test_one_day_of_ratings_draws_a_labelled_point_in_the_middle(charlie, npc, persona):
    rating_upsert(exchange=make_exchange(npc), score=1, player_name="steve")
    rating_upsert(exchange=make_exchange(npc), score=-1, player_name="alex")
    chart = selectors.trend_svg(selectors.persona_trend(persona))
    assert chart["one_day"] and len(chart["lines"]) == 1
    ((x, _, n),) = chart["lines"][0]["dots"]
    assert x > chart["pad"] + 100 and n == 2
    assert chart["lines"][0]["latest"] == "base model 50%"
    page = client_for(charlie).get("/personas/miner/").content.decode()
    assert "base model 50% (2)" in page and "the first day with ratings" in page
