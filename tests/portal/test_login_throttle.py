"""Failed logins are counted per account and per client address, wherever they are tried: the login page,
the admin's and the API's token endpoint. Past a limit, logins are refused with a message saying how long."""

import pytest
from django.test import RequestFactory, override_settings
from rest_framework.test import APIClient

from tests.portal.clients import client_for, csrf_post

pytestmark = pytest.mark.django_db

ALICE, CHARLIE, BOB = "alice-password-1", "charlie-password-1", "bob-password-1"


@pytest.fixture(autouse=True)
def _small_limits():
    with override_settings(
        VOYAGER_LOGIN_MAX_FAILURES=3, VOYAGER_LOGIN_MAX_FAILURES_PER_ADDRESS=5, VOYAGER_LOGIN_WINDOW=600
    ):
        yield


def log_in(username, password, address="10.0.0.1"):
    client = client_for()
    response = csrf_post(client, "/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=address)
    return response, "_auth_user_id" in client.session


def token(username, password, address="10.0.0.1"):
    return APIClient().post(
        "/api/token/", {"username": username, "password": password}, format="json", REMOTE_ADDR=address
    )


def test_past_the_limit_for_an_account_even_its_password_is_refused_from_every_address(alice, bob):
    for i in range(3):
        response, logged_in = log_in("alice", "wrong", address=f"10.0.0.{i + 1}")
        assert response.status_code == 200 and not logged_in
    response, logged_in = log_in("alice", ALICE, address="10.0.0.9")
    assert response.status_code == 429 and not logged_in
    assert "Too many failed logins for this account. Try again in 10 minutes" in response.content.decode()
    assert 1 <= int(response["Retry-After"]) <= 600
    # The address is not to blame: another account logs in from it.
    response, logged_in = log_in("bob", BOB, address="10.0.0.9")
    assert response.status_code == 302 and logged_in


def test_past_the_limit_for_an_address_no_account_logs_in_from_it(charlie):
    for name in ("ann", "ben", "cat", "dan", "eve"):  # one failure each: no account reaches its limit
        log_in(name, "guess", address="10.0.0.7")
    response, logged_in = log_in("charlie", CHARLIE, address="10.0.0.7")
    assert response.status_code == 429 and not logged_in
    assert "Too many failed logins from your network address" in response.content.decode()
    response, logged_in = log_in("charlie", CHARLIE, address="10.0.0.8")
    assert response.status_code == 302 and logged_in


def test_the_account_is_counted_whatever_the_case_of_its_name(alice):
    for name in ("alice", "Alice", " ALICE"):
        log_in(name, "wrong", address="10.0.0.3")
    assert log_in("alice", ALICE, address="10.0.0.4")[0].status_code == 429


def test_a_success_forgives_that_addresses_own_failures_on_the_account(alice):
    for _ in range(2):
        log_in("alice", "typo", address="10.0.0.1")
    assert log_in("alice", ALICE, address="10.0.0.1")[1]
    for _ in range(2):
        log_in("alice", "typo again", address="10.0.0.1")
    response, logged_in = log_in("alice", ALICE, address="10.0.0.1")
    assert response.status_code == 302 and logged_in


def test_a_success_does_not_reset_another_addresses_count(alice):
    for _ in range(2):
        log_in("alice", "guess", address="10.6.6.6")
    assert log_in("alice", ALICE, address="10.0.0.1")[1]  # alice herself, from home
    log_in("alice", "guess", address="10.6.6.6")  # the third failure of the guesser: the limit
    response, logged_in = log_in("alice", ALICE, address="10.0.0.1")
    assert response.status_code == 429 and not logged_in


def test_the_admin_login_counts_and_refuses_the_same(dana):
    for _ in range(3):
        log_in("dana", "wrong", address="10.0.0.5")
    client = client_for()
    response = csrf_post(
        client, "/admin/login/", {"username": "dana", "password": "dana-password-1"}, REMOTE_ADDR="10.0.0.6"
    )
    assert "Too many failed logins for this account" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_the_token_endpoint_answers_429_with_retry_after_past_the_limit(charlie):
    for _ in range(3):
        assert token("charlie", "wrong").status_code == 400
    response = token("charlie", CHARLIE, address="10.0.0.2")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 600
    error = response.json()["error"]
    assert error["code"] == "throttled"
    assert error["message"].startswith("Too many failed logins for this account. Try again in 10 minutes")
    # One count for every way in: the login page refuses the account too.
    assert log_in("charlie", CHARLIE, address="10.0.0.3")[0].status_code == 429


def test_the_token_endpoint_counts_per_address_too(charlie):
    for name in ("ann", "ben", "cat", "dan", "eve"):
        token(name, "guess", address="10.0.0.7")
    assert token("charlie", CHARLIE, address="10.0.0.7").status_code == 429
    response = token("charlie", CHARLIE, address="10.0.0.8")
    assert response.status_code == 200 and response.json()["token"]


def test_a_token_request_without_a_password_is_no_guess(charlie):
    for _ in range(5):
        assert APIClient().post("/api/token/", {"username": "charlie"}, format="json").status_code == 400
    assert token("charlie", CHARLIE).status_code == 200


def test_an_ipv6_client_is_counted_by_its_64_block():
    from portal.login_throttle import client_address

    def address(remote):
        return client_address(RequestFactory().get("/", REMOTE_ADDR=remote))

    assert address("2001:db8:1:2::1") == address("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address("2001:db8:1:3::1") != address("2001:db8:1:2::1")
    assert address("::ffff:10.0.0.1") == address("10.0.0.1") == "10.0.0.1"
