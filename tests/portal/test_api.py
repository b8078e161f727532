"""The REST API: what each role may read and write, token and session auth, throttling, the schema."""

import pytest
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from agents_app.models import PairwiseVote, Persona, Rating, TrainingRun
from agents_app.services import rating_upsert
from tests.factories import adapter, make_exchange, verified_link

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()
    yield
    cache.clear()


def api(user=None, *, token=False) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    if user is not None and token:
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    elif user is not None:
        client.force_authenticate(user)
    return client


def test_the_schema_and_docs_are_served_without_a_cdn():
    response = api().get("/api/schema/")
    assert response.status_code == 200 and b"/api/ratings/" in response.content
    docs = api().get("/api/docs/").content.decode()
    assert "swagger-ui" in docs and "cdn" not in docs.lower() and "/static/drf_spectacular_sidecar/" in docs


def test_a_token_is_issued_for_a_password_and_authenticates(charlie, npc):
    response = api().post("/api/token/", {"username": "charlie", "password": "charlie-password-1"}, format="json")
    assert response.status_code == 200
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    exchange = make_exchange(npc)
    assert client.post("/api/ratings/", {"exchange": str(exchange.pk), "score": 1}, format="json").status_code == 201
    assert api().post("/api/token/", {"username": "charlie", "password": "x"}, format="json").status_code == 400


def test_session_auth_needs_the_csrf_token(charlie, npc):
    client = APIClient(enforce_csrf_checks=True)
    client.login(username="charlie", password="charlie-password-1")
    response = client.post("/api/ratings/", {"exchange": str(make_exchange(npc).pk), "score": 1}, format="json")
    assert response.status_code == 403 and "CSRF" in response.json()["error"]["message"]


def test_personas_are_listed_without_the_private_ones_of_others(alice, charlie, persona, private_persona):
    assert [p["slug"] for p in api(charlie).get("/api/personas/").json()] == ["miner"]
    assert [p["slug"] for p in api(alice).get("/api/personas/").json()] == ["miner", "secret"]
    assert api(charlie).get("/api/personas/secret/").status_code == 404
    assert "system_prompt" not in api(charlie).get("/api/personas/miner/").json()


def test_modders_create_personas_and_change_only_their_own(alice, bob, charlie, persona):
    body = {"slug": "baker", "name": "Baker Bea", "traits": ["warm"], "allowed_actions": ["say"]}
    assert api(charlie).post("/api/personas/", body, format="json").status_code == 403
    response = api(bob).post("/api/personas/", body, format="json")
    assert response.status_code == 201 and response.json()["owner"] == "bob"
    assert Persona.objects.get(slug="baker").owner == bob
    assert api(bob).patch("/api/personas/miner/", {"name": "Stolen"}, format="json").status_code == 403
    assert api(alice).patch("/api/personas/miner/", {"name": "Miner Max"}, format="json").json()["name"] == "Miner Max"
    response = api(alice).patch("/api/personas/miner/", {"temperature": 9}, format="json")
    assert response.status_code == 400 and "temperature" in response.json()["error"]["fields"]
    response = api(bob).post("/api/personas/", {**body, "slug": "Bad Slug"}, format="json")
    assert response.status_code == 400 and "slug" in response.json()["error"]["fields"]


def test_the_api_checks_personas_as_the_portal_pages_do(alice, bob, persona):
    # The same service behind the API and the pages: an action name that is no action, and the
    # slug the pages' own route takes, are refused here too, field by field; nothing is stored.
    body = {"slug": "baker", "name": "Baker Bea", "allowed_actions": ["9lives"]}
    response = api(bob).post("/api/personas/", body, format="json")
    assert response.status_code == 400 and "allowed_actions" in response.json()["error"]["fields"]
    response = api(bob).post("/api/personas/", {**body, "slug": "new", "allowed_actions": ["say"]}, format="json")
    assert response.status_code == 400 and "slug" in response.json()["error"]["fields"]
    assert not Persona.objects.filter(slug__in=["baker", "new"]).exists()
    response = api(alice).patch("/api/personas/miner/", {"allowed_actions": ["jump", "9lives"]}, format="json")
    assert response.status_code == 400 and "allowed_actions" in response.json()["error"]["fields"]
    persona.refresh_from_db()
    assert "9lives" not in persona.allowed_actions


def test_adapter_versions_hide_unapproved_ones_from_others(alice, charlie, persona):
    adapter(persona, 1, status="approved")
    adapter(persona, 2, status="uploaded")
    assert [v["version"] for v in api(charlie).get("/api/adapter-versions/").json()["results"]] == [1]
    assert sorted(v["version"] for v in api(alice).get("/api/adapter-versions/?persona=miner").json()["results"]) == [
        1,
        2,
    ]
    assert api(charlie).get("/api/adapter-versions/miner/2/").status_code == 404


def test_exchanges_hide_player_names_without_consent_and_private_personas(alice, charlie, npc, private_npc):
    verified_link(alice, "steve")
    make_exchange(npc, player="steve", reply="public reply")
    make_exchange(private_npc, player="herobrine", reply="private reply")
    results = api(charlie).get("/api/exchanges/").json()["results"]
    assert [(r["player"], r["reply_text"]) for r in results] == [("a player", "public reply")]
    mine = api(alice).get("/api/exchanges/?mine=true").json()["results"]
    assert [r["player"] for r in mine] == ["steve (you)"]
    response = api(charlie).get("/api/exchanges/?limit=1000")
    assert response.status_code == 400 and "limit" in response.json()["error"]["fields"]
    response = api().get("/api/exchanges/?mine=true")  # "log in" is a 401, with the scheme to log in with
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Token"


def test_ratings_are_created_changed_and_seen_only_by_their_rater(alice, charlie, npc):
    exchange = make_exchange(npc)
    response = api(charlie).post(
        "/api/ratings/", {"exchange": str(exchange.pk), "score": -1, "tags": ["rude"]}, format="json"
    )
    assert response.status_code == 201
    rating_id = response.json()["id"]
    response = api(charlie).post("/api/ratings/", {"exchange": str(exchange.pk), "score": 1}, format="json")
    assert response.status_code == 200 and response.json()["id"] == rating_id
    assert api(charlie).patch(f"/api/ratings/{rating_id}/", {"tags": ["funny"]}, format="json").json()["tags"] == [
        "funny"
    ]
    assert api(alice).get(f"/api/ratings/{rating_id}/").status_code == 404
    assert api(alice).patch(f"/api/ratings/{rating_id}/", {"score": -1}, format="json").status_code == 404
    assert api(alice).get("/api/ratings/").json()["results"] == []
    assert Rating.objects.get(pk=rating_id).score == 1


@pytest.mark.parametrize(
    "body, field",
    [
        ({"score": 3}, "score"),
        ({"score": 1, "tags": ["boring"]}, "tags"),
        ({"score": 1, "exchange": "nope"}, "exchange"),
    ],
)
def test_a_bad_rating_names_the_field(charlie, npc, body, field):
    body = {"exchange": str(make_exchange(npc).pk), **body}
    response = api(charlie).post("/api/ratings/", body, format="json")
    fields = response.json()["error"]["fields"]  # nested errors by their path: tags.0
    assert response.status_code == 400 and field in {name.split(".")[0] for name in fields}


def test_rating_a_private_or_missing_exchange_is_a_404(charlie, private_npc):
    exchange = make_exchange(private_npc)
    assert (
        api(charlie).post("/api/ratings/", {"exchange": str(exchange.pk), "score": 1}, format="json").status_code == 404
    )
    assert api().post("/api/ratings/", {"exchange": str(exchange.pk), "score": 1}, format="json").status_code == 401


def test_pairwise_votes_are_recorded_and_listed_for_their_voter(alice, charlie, npc):
    a, b = make_exchange(npc), make_exchange(npc)
    response = api(charlie).post(
        "/api/pairwise-votes/", {"left": str(a.pk), "right": str(b.pk), "outcome": "both_bad"}, format="json"
    )
    assert response.status_code == 201
    assert PairwiseVote.objects.get().outcome == "both_bad"
    assert len(api(charlie).get("/api/pairwise-votes/").json()["results"]) == 1
    assert api(alice).get("/api/pairwise-votes/").json()["results"] == []


def test_training_runs_are_seen_by_the_owner_and_moderators_only(alice, bob, charlie, persona, django_user_model):
    from django.contrib.auth.models import Group

    TrainingRun.objects.create(persona=persona, night="2026-11-23", status="succeeded", method="sft")
    mod = django_user_model.objects.create_user("mod", "", "mod-pass-123")
    mod.groups.add(Group.objects.get(name="moderator"))
    assert len(api(alice).get("/api/training-runs/").json()["results"]) == 1
    assert len(api(mod).get("/api/training-runs/").json()["results"]) == 1
    assert api(bob).get("/api/training-runs/").json()["results"] == []
    assert api(charlie).get("/api/training-runs/").json()["results"] == []


def test_the_api_is_throttled(charlie, settings):
    from rest_framework.settings import api_settings
    from rest_framework.throttling import SimpleRateThrottle

    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "anon": "3/min"}
    original = SimpleRateThrottle.THROTTLE_RATES
    SimpleRateThrottle.THROTTLE_RATES = rates
    try:
        codes = [api().get("/api/personas/").status_code for _ in range(4)]
    finally:
        SimpleRateThrottle.THROTTLE_RATES = original
    assert codes == [200, 200, 200, 429]
    assert api_settings.DEFAULT_THROTTLE_CLASSES


def test_the_token_app_has_its_migration_applied(charlie):
    assert Token.objects.create(user=charlie).key


def test_the_counts_in_the_api_match_the_ratings(alice, bob, charlie, npc):
    exchange = make_exchange(npc)
    rating_upsert(exchange=exchange, score=1, user=alice)
    rating_upsert(exchange=exchange, score=-1, user=bob)
    row = api(charlie, token=True).get(f"/api/exchanges/{exchange.pk}/").json()
    assert (row["up"], row["down"], row["my_score"]) == (1, 1, None)


# --- private personas and their shares ------------------------------------------------------------

API_READS = ["/api/personas/", "/api/adapter-versions/", "/api/exchanges/", "/api/training-runs/"]
PAGES = ["/", "/personas/", "/replies/", "/leaderboard/", "/compare/"]


@pytest.fixture
def private_history(alice, bob, private_persona, private_npc):
    """A private persona with everything that could name it: a version, replies, ratings, a training run."""
    adapter(private_persona, 1, status="approved")
    for text in ("where is iron", "where is the iron"):
        rating_upsert(exchange=make_exchange(private_npc, text=text, reply=f"hush: {text}"), score=1, user=alice)
    TrainingRun.objects.create(persona=private_persona, night="2026-11-23", status="succeeded", method="sft")
    return private_persona


def test_nothing_in_the_api_or_the_pages_names_a_private_persona_to_others(
    bob, bob_server, charlie, persona, private_history
):
    from agents_app.services import persona_share_add
    from tests.portal.clients import client_for

    exchange = private_history.exchanges.first()
    persona_share_add(persona=private_history, server_id=bob_server.pk)  # a share shows it to nobody, Bob included
    for user in (None, charlie, bob):
        for path in API_READS:
            response = api(user).get(path)
            assert response.status_code == 200 and b"secret" not in response.content, (user, path)
        for path in ("/api/personas/secret/", "/api/adapter-versions/secret/1/", f"/api/exchanges/{exchange.pk}/"):
            assert api(user).get(path).status_code == 404, (user, path)
        assert api(user).get("/api/exchanges/?persona=secret").json()["results"] == []
        assert api(user).get("/api/adapter-versions/?persona=secret").json()["results"] == []
        for path in PAGES:
            body = client_for(user).get(path).content.decode()
            assert "Secret Sam" not in body and "/personas/secret" not in body and "hush:" not in body, (user, path)


def test_its_owner_sees_a_private_persona_everywhere(alice, private_history):
    assert "secret" in [p["slug"] for p in api(alice).get("/api/personas/").json()]
    assert [e["persona"] for e in api(alice).get("/api/exchanges/?persona=secret").json()["results"]] == ["secret"] * 2
    assert [v["persona"] for v in api(alice).get("/api/adapter-versions/").json()["results"]] == ["secret"]


def test_the_owner_shares_a_persona_with_a_game_server_and_stops(alice, bob_server, private_persona):
    client = api(alice)
    response = client.post("/api/personas/secret/shares/", {"server": bob_server.pk}, format="json")
    assert response.status_code == 201
    assert {k: v for k, v in response.json().items() if k != "created_at"} == {
        "server": bob_server.pk,
        "name": "Bob's world",
        "owner": "bob",
    }
    assert client.post("/api/personas/secret/shares/", {"server": bob_server.pk}, format="json").status_code == 200
    assert [s["server"] for s in client.get("/api/personas/secret/shares/").json()] == [bob_server.pk]
    assert client.delete(f"/api/personas/secret/shares/{bob_server.pk}/").status_code == 204
    assert client.get("/api/personas/secret/shares/").json() == []
    assert not private_persona.shares.exists()


def test_only_the_owner_may_share_a_persona(alice, bob, charlie, bob_server, persona, private_persona):
    body = {"server": bob_server.pk}
    assert api().post("/api/personas/secret/shares/", body, format="json").status_code == 401
    # A private persona of someone else does not exist for them; a public one is not theirs to share.
    assert api(bob).post("/api/personas/secret/shares/", body, format="json").status_code == 404
    assert api(bob).get("/api/personas/secret/shares/").status_code == 404
    refused = api(bob).post("/api/personas/miner/shares/", body, format="json")
    assert refused.status_code == 403 and "only its owner" in refused.json()["error"]["message"]
    assert api(charlie).delete(f"/api/personas/secret/shares/{bob_server.pk}/").status_code == 404
    assert not private_persona.shares.exists() and not persona.shares.exists()


def test_a_persona_is_shared_only_with_an_existing_server_of_someone_else(
    alice, bob_server, game_server, private_persona
):
    from agents_app.services import game_server_revoke

    client = api(alice)
    missing = client.post("/api/personas/secret/shares/", {"server": 99999}, format="json")
    assert missing.status_code == 400 and missing.json()["error"]["fields"] == {
        "server": ["there is no game server 99999; ask its owner for its id"]
    }
    own = client.post("/api/personas/secret/shares/", {"server": game_server.pk}, format="json")
    assert (
        own.status_code == 400
        and "your own servers use your personas already" in own.json()["error"]["fields"]["server"][0]
    )
    bad = client.post("/api/personas/secret/shares/", {"server": "bob"}, format="json")
    assert bad.status_code == 400 and "server" in bad.json()["error"]["fields"]
    game_server_revoke(server=bob_server)  # no conversations: deleted
    gone = client.post("/api/personas/secret/shares/", {"server": bob_server.pk}, format="json")
    assert gone.status_code == 400 and "no game server" in gone.json()["error"]["fields"]["server"][0]
    assert client.delete(f"/api/personas/secret/shares/{bob_server.pk}/").status_code == 404
    assert not private_persona.shares.exists()


# --- one error shape -----------------------------------------------------------------------------------


def assert_error(response, status: int, code: str) -> dict:
    body = response.json()
    assert response.status_code == status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}, body
    assert body["error"]["code"] == code and body["error"]["message"], body
    return body["error"]


def test_every_api_error_has_the_one_shape(alice, bob, charlie, persona, npc, private_persona):
    response = api(bob).post("/api/personas/", {"slug": "Bad Slug", "name": "x"}, format="json")
    error = assert_error(response, 400, "invalid")
    assert "slug" in error["fields"] and "slug: " in error["message"]
    error = assert_error(api(charlie).post("/api/ratings/", {"score": 3}, format="json"), 400, "invalid")
    assert set(error["fields"]) == {"exchange", "score"}
    body = {"slug": "x", "name": "x", "traits": ["ok", "y" * 81]}
    error = assert_error(api(bob).post("/api/personas/", body, format="json"), 400, "invalid")
    assert "traits.1" in error["fields"]  # nested errors, by their path
    assert_error(api(charlie).post("/api/personas/", {"slug": "x"}, format="json"), 403, "permission_denied")
    assert_error(api(bob).patch("/api/personas/miner/", {"name": "Stolen"}, format="json"), 403, "permission_denied")
    assert_error(api(charlie).get("/api/personas/secret/"), 404, "not_found")
    assert_error(api(charlie).get("/api/ratings/999/"), 404, "not_found")
    assert_error(api().get("/api/no-such-endpoint/"), 404, "not_found")
    assert_error(api(charlie).delete("/api/personas/miner/"), 405, "method_not_allowed")
    response = api(charlie).generic("POST", "/api/ratings/", "{nope", content_type="application/json")
    assert_error(response, 400, "parse_error")
    assert_error(api().get("/api/ratings/"), 401, "not_authenticated")
    bad_token = APIClient()
    bad_token.credentials(HTTP_AUTHORIZATION="Token nope")
    response = bad_token.get("/api/personas/")
    assert_error(response, 401, "authentication_failed")
    assert response["WWW-Authenticate"] == "Token"


def test_an_anonymous_write_is_a_401_that_says_how_to_authenticate(npc):
    response = api().post("/api/ratings/", {"exchange": str(make_exchange(npc).pk), "score": 1}, format="json")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"
    response = api().post("/api/personas/miner/adapter-versions/", {}, format="multipart")
    assert_error(response, 401, "not_authenticated")


def test_a_throttled_call_has_the_shape_and_says_when_to_come_back(charlie):
    from rest_framework.throttling import SimpleRateThrottle

    original = SimpleRateThrottle.THROTTLE_RATES
    SimpleRateThrottle.THROTTLE_RATES = {**original, "anon": "1/min"}
    try:
        api().get("/api/personas/")
        response = api().get("/api/personas/")
    finally:
        SimpleRateThrottle.THROTTLE_RATES = original
    assert_error(response, 429, "throttled")
    assert int(response["Retry-After"]) > 0


def test_a_service_that_cannot_check_an_upload_now_is_a_503(alice, persona, settings, tmp_path):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.factories import config_json, weights

    settings.VOYAGER_BASE_MODEL = str(tmp_path / "no-model")
    settings.MEDIA_ROOT = str(tmp_path / "media")
    files = {
        "config": SimpleUploadedFile("adapter_config.json", config_json()),
        "weights": SimpleUploadedFile("adapter_model.safetensors", weights()),
    }
    response = api(alice).post("/api/personas/miner/adapter-versions/", files, format="multipart")
    assert_error(response, 503, "unavailable")


def test_the_schema_documents_the_error_shape_on_every_operation():
    schema = api().get("/api/schema/?format=json").json()
    error = schema["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["$ref"] == "#/components/schemas/ErrorBody"
    assert set(schema["components"]["schemas"]["ErrorBody"]["properties"]) == {"code", "message", "fields"}
    assert "one shape" in schema["info"]["description"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "400" in responses, (method, path)
            if method in ("post", "patch", "put", "delete"):
                assert {"401", "403", "413"} <= set(responses), (method, path, sorted(responses))
            for status, response in responses.items():
                if status >= "400":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Error", (method, path, status)
    upload = schema["paths"]["/api/personas/{slug}/adapter-versions/"]["post"]["responses"]
    assert {"201", "413", "422", "503"} <= set(upload)
