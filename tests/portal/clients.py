"""The portal as a browser sees it: a client (logged in or not), posts that carry the CSRF token, a query count."""

from __future__ import annotations

from django.db import connection
from django.test import Client


def client_for(user=None) -> Client:
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    return client


def csrf_post(client: Client, path: str, data=None, **extra):
    """POST as a browser would: the CSRF token from the cookie, sent back in the form."""
    client.get("/accounts/login/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    return client.post(path, {**(data or {}), "csrfmiddlewaretoken": token}, **extra)


def csrf_json_post(client: Client, path: str, data=None):
    client.get("/accounts/login/")
    token = client.cookies["csrftoken"].value
    return client.post(
        path, {**(data or {}), "csrfmiddlewaretoken": token}, HTTP_ACCEPT="application/json", HTTP_X_CSRFTOKEN=token
    )


def count_queries(client, path):
    # execute_wrapper sees every query; CaptureQueriesContext would lose them to reset_queries on request_started.
    seen = []
    with connection.execute_wrapper(lambda execute, sql, *args: seen.append(sql) or execute(sql, *args)):
        assert client.get(path).status_code == 200
    return len(seen)
