"""Persona create and edit pages: modders create personas, only the owner edits one, bad input names its field."""

import html

import pytest
from django.contrib.auth.models import Group

from agents_app.models import Persona
from agents_app.services import InvalidFields, persona_create, persona_update
from tests.portal.clients import client_for, csrf_post

pytestmark = pytest.mark.django_db

GOOD = {
    "slug": "smith",
    "name": "Smith Sigrun",
    "description": "Forges tools by the river.",
    "traits": "gruff\n\nproud of her anvil\ngruff\n",
    "system_prompt": "You are Sigrun, a smith. Be brief.",
    "allowed_actions": "say, jump\nface give",
    "temperature": "0.6",
    "top_p": "0.9",
    "max_tokens": "80",
    "is_public": "on",
}


def body(response) -> str:
    return html.unescape(response.content.decode())


def editable(persona) -> dict:
    persona.refresh_from_db()
    return {
        f: getattr(persona, f)
        for f in (
            "name",
            "description",
            "traits",
            "system_prompt",
            "allowed_actions",
            "temperature",
            "top_p",
            "max_tokens",
            "is_public",
            "slug",
        )
    }


def test_a_modder_creates_a_persona_and_lands_on_its_page(alice):
    response = csrf_post(client_for(alice), "/personas/new/", GOOD)
    assert response.status_code == 302 and response["Location"] == "/personas/smith/"
    smith = Persona.objects.get(slug="smith")
    assert smith.owner == alice and smith.name == "Smith Sigrun"
    assert smith.traits == ["gruff", "proud of her anvil"]
    assert smith.allowed_actions == ["say", "jump", "face", "give"]
    assert (smith.temperature, smith.top_p, smith.max_tokens, smith.is_public) == (0.6, 0.9, 80, True)
    assert smith.system_prompt == "You are Sigrun, a smith. Be brief."


def test_the_create_form_starts_from_the_model_defaults(alice):
    response = client_for(alice).get("/personas/new/")
    assert response.status_code == 200
    page = body(response)
    assert 'name="temperature" value="0.8"' in page and 'name="top_p" value="0.95"' in page
    assert 'name="max_tokens" value="64"' in page and 'id="id_is_public" checked' in page
    assert 'name="csrfmiddlewaretoken"' in page


def test_an_unchecked_public_box_makes_a_private_persona(alice, charlie):
    data = {k: v for k, v in GOOD.items() if k != "is_public"}
    assert csrf_post(client_for(alice), "/personas/new/", data).status_code == 302
    assert Persona.objects.get(slug="smith").is_public is False
    assert client_for(charlie).get("/personas/smith/").status_code == 404


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"slug": "Bad Slug!"}, "slug: A slug is 2-63 characters"),
        ({"slug": "miner"}, "slug: 'miner' is taken"),
        ({"slug": "new"}, "slug: 'new' is taken"),
        ({"name": "   "}, "name: This field is required."),
        ({"name": "x" * 81}, "name: Ensure this value has at most 80 characters"),
        ({"temperature": "2.5"}, "temperature: Ensure this value is less than or equal to 2.0."),
        ({"temperature": "warm"}, "temperature: Enter a number."),
        ({"temperature": "nan"}, "temperature: Enter a number."),
        ({"top_p": "0"}, "top_p: Ensure this value is greater than or equal to 0.01."),
        ({"max_tokens": "513"}, "max_tokens: Ensure this value is less than or equal to 512."),
        ({"max_tokens": "0"}, "max_tokens: Ensure this value is greater than or equal to 1."),
        ({"repetition_penalty": "2.5"}, "repetition_penalty: Ensure this value is less than or equal to 2.0."),
        ({"repetition_penalty": "0.9"}, "repetition_penalty: Ensure this value is greater than or equal to 1.0."),
        ({"repetition_penalty": "nan"}, "repetition_penalty: Enter a number."),
        ({"allowed_actions": "say, 9lives"}, "allowed_actions: '9lives' is not an action name"),
        ({"allowed_actions": "say, rm -rf"}, "allowed_actions: '-rf' is not an action name"),
        ({"traits": "t" * 81}, "traits: 'tttttttttttttttttttt'... is over 80 characters"),
        ({"traits": "\n".join(f"trait {i}" for i in range(21))}, "traits: at most 20 traits, not 21"),
    ],
)
def test_it_refuses_bad_input_with_a_message_naming_the_field(alice, persona, changes, message):
    response = csrf_post(client_for(alice), "/personas/new/", {**GOOD, **changes})
    assert response.status_code == 400
    assert message in body(response).split('id="form-errors">')[1].split("</p>")[0]
    assert list(Persona.objects.values_list("slug", flat=True)) == ["miner"]


def test_it_names_every_bad_field_at_once(alice):
    response = csrf_post(
        client_for(alice), "/personas/new/", {**GOOD, "temperature": "9", "allowed_actions": "say, 9lives"}
    )
    assert response.status_code == 400
    errors = body(response).split('id="form-errors">')[1].split("</p>")[0]
    assert "temperature:" in errors and "allowed_actions:" in errors
    assert not Persona.objects.exists()


def test_it_keeps_what_was_typed_when_it_refuses(alice):
    response = csrf_post(client_for(alice), "/personas/new/", {**GOOD, "temperature": "9"})
    page = body(response)
    assert 'value="smith"' in page and "proud of her anvil" in page and "Forges tools by the river." in page


def test_only_modders_may_create_personas(charlie, django_user_model):
    assert client_for(charlie).get("/personas/new/").status_code == 403
    response = csrf_post(client_for(charlie), "/personas/new/", GOOD)
    assert response.status_code == 403 and "only modders may create personas" in body(response)
    response = client_for().get("/personas/new/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert not Persona.objects.exists()


def test_creating_needs_the_csrf_token(alice):
    response = client_for(alice).post("/personas/new/", GOOD)
    assert response.status_code == 403
    assert not Persona.objects.exists()


def test_the_owner_edits_their_persona_but_not_its_slug(alice, persona):
    page = body(client_for(alice).get("/personas/miner/edit/"))
    assert 'value="Miner Mo"' in page and "say\njump</textarea>" in page and 'name="slug"' not in page
    data = {**GOOD, "slug": "renamed", "is_public": ""}
    response = csrf_post(client_for(alice), "/personas/miner/edit/", data)
    assert response.status_code == 302 and response["Location"] == "/personas/miner/"
    assert editable(persona) == {
        "slug": "miner",
        "name": "Smith Sigrun",
        "description": "Forges tools by the river.",
        "traits": ["gruff", "proud of her anvil"],
        "system_prompt": "You are Sigrun, a smith. Be brief.",
        "allowed_actions": ["say", "jump", "face", "give"],
        "temperature": 0.6,
        "top_p": 0.9,
        "max_tokens": 80,
        "is_public": False,
    }


def test_a_refused_edit_changes_nothing(alice, persona):
    before = editable(persona)
    response = csrf_post(
        client_for(alice), "/personas/miner/edit/", {**GOOD, "name": "A new name", "max_tokens": "9999"}
    )
    assert response.status_code == 400 and "max_tokens:" in body(response)
    assert editable(persona) == before


def test_nobody_but_the_owner_may_edit(alice, bob, charlie, persona, private_persona, django_user_model):
    moderator = django_user_model.objects.create_user("mod", "", "mod-password-1")
    moderator.groups.add(Group.objects.get(name="moderator"))
    before = editable(persona)
    for user in (bob, charlie, moderator):
        assert client_for(user).get("/personas/miner/edit/").status_code == 403, user
        response = csrf_post(client_for(user), "/personas/miner/edit/", GOOD)
        assert response.status_code == 403 and "only its owner" in body(response), user
    assert editable(persona) == before
    # A private persona is not even admitted to exist.
    assert client_for(charlie).get("/personas/secret/edit/").status_code == 404
    assert client_for().get("/personas/miner/edit/").status_code == 302


def test_an_owner_without_the_modder_role_may_no_longer_edit(alice, persona):
    alice.groups.remove(Group.objects.get(name="modder"))
    assert client_for(alice).get("/personas/miner/edit/").status_code == 403


def test_editing_needs_the_csrf_token(alice, persona):
    before = editable(persona)
    assert client_for(alice).post("/personas/miner/edit/", GOOD).status_code == 403
    assert editable(persona) == before


def test_the_persona_pages_link_to_create_and_edit_for_those_who_may(alice, bob, charlie, persona):
    assert 'href="/personas/new/"' in body(client_for(alice).get("/personas/"))
    assert 'href="/personas/new/"' not in body(client_for(charlie).get("/personas/"))
    assert 'href="/personas/miner/edit/"' in body(client_for(alice).get("/personas/miner/"))
    assert 'href="/personas/miner/edit/"' not in body(client_for(bob).get("/personas/miner/"))


def test_the_update_service_refuses_a_slug_change_and_saves_all_or_nothing(alice, persona):
    with pytest.raises(InvalidFields) as refused:
        persona_update(persona=persona, slug="other", name="Other")
    assert refused.value.fields == {"slug": ["cannot be changed"]}
    with pytest.raises(InvalidFields) as refused:
        persona_update(persona=persona, name="Valid name", temperature=float("nan"), allowed_actions="say")
    assert set(refused.value.fields) == {"temperature", "allowed_actions"}
    persona.refresh_from_db()
    assert (persona.slug, persona.name, persona.allowed_actions) == ("miner", "Miner Mo", ["say", "jump"])


def test_the_create_service_names_a_slug_taken_by_a_concurrent_request(alice, persona, monkeypatch):
    """The slug check passed, then another request saved the same slug: the database's unique index answers."""
    from django.db.models import QuerySet

    real_exists, looked = QuerySet.exists, []

    def exists_but_not_yet(qs):  # the service's first look sees no other "miner"; later ones see the truth
        if qs.model is Persona and not looked:
            looked.append(qs)
            return False
        return real_exists(qs)

    monkeypatch.setattr(QuerySet, "exists", exists_but_not_yet)
    monkeypatch.setattr(Persona, "validate_unique", lambda self, exclude=None: None)
    with pytest.raises(InvalidFields) as refused:
        persona_create(owner=alice, slug="miner", name="Second miner")
    assert refused.value.fields == {"slug": ["'miner' is taken; choose another"]}
    assert Persona.objects.filter(slug="miner").count() == 1


def test_the_repetition_penalty_is_set_or_kept(alice, persona):
    csrf_post(client_for(alice), "/personas/miner/edit/", {**GOOD, "repetition_penalty": "1.3"})
    persona.refresh_from_db()
    assert persona.repetition_penalty == 1.3
    # Left empty, an edit keeps it.
    csrf_post(client_for(alice), "/personas/miner/edit/", {**GOOD, "repetition_penalty": ""})
    persona.refresh_from_db()
    assert persona.repetition_penalty == 1.3
