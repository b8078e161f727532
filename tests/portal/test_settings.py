"""Settings come from the environment, and a bad value stops the process."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from portal import env
from tests.processes import run_manage


def test_booleans_accept_the_usual_spellings(monkeypatch):
    monkeypatch.setenv("FLAG", "yes")
    assert env.env_bool("FLAG", False) is True
    monkeypatch.setenv("FLAG", "0")
    assert env.env_bool("FLAG", True) is False
    monkeypatch.delenv("FLAG")
    assert env.env_bool("FLAG", True) is True


def test_a_bad_boolean_fails_loudly_naming_the_variable(monkeypatch):
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="DEBUG='maybe' is not a boolean"):
        env.env_bool("DEBUG", False)


def test_a_bad_or_out_of_range_integer_fails_loudly(monkeypatch):
    monkeypatch.setenv("N", "ten")
    with pytest.raises(ImproperlyConfigured, match="N='ten' is not an integer"):
        env.env_int("N", 1)
    monkeypatch.setenv("N", "0")
    with pytest.raises(ImproperlyConfigured, match="below the minimum 1"):
        env.env_int("N", 1, minimum=1)


def test_a_secret_can_come_from_a_file(monkeypatch, tmp_path):
    secret = tmp_path / "key"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("SECRET_KEY_FILE", str(secret))
    assert env.env_str("SECRET_KEY") == "s3cret"
    monkeypatch.setenv("SECRET_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="cannot be read"):
        env.env_str("SECRET_KEY")


def test_database_urls_are_parsed():
    pg = env.parse_database_url("postgres://voy:p%40ss@db.local:5433/voyager?sslmode=require")
    assert pg["ENGINE"] == "django.db.backends.postgresql"
    assert (pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"], pg["NAME"]) == (
        "voy",
        "p@ss",
        "db.local",
        "5433",
        "voyager",
    )
    assert pg["OPTIONS"] == {"sslmode": "require"}
    lite = env.parse_database_url("sqlite:////tmp/x.sqlite3")
    assert lite == {"ENGINE": "django.db.backends.sqlite3", "NAME": "/tmp/x.sqlite3"}


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://x/y", "scheme 'mysql' is not supported"),
        ("postgres://host/", "names no database"),
        ("sqlite://", "names no SQLite file"),
    ],
)
def test_a_bad_database_url_fails_loudly(url, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        env.parse_database_url(url)


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    result = run_manage("check", VOYAGER_ENV="production", VOYAGER_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) must be set in production" in result.stderr


def test_a_bad_redis_url_stops_the_process(tmp_path):
    result = run_manage("check", REDIS_URL="http://localhost", VOYAGER_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "REDIS_URL='http://localhost' must start with redis://" in result.stderr


def test_check_deploy_is_clean_under_production_settings(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        VOYAGER_ENV="production",
        SECRET_KEY="x" * 20 + "a-long-random-production-secret-0123456789",
        ALLOWED_HOSTS="voyager.example.org",
        DATABASE_URL="postgres://voyager@127.0.0.1:5432/voyager",
        REDIS_URL="redis://127.0.0.1:6379/0",
        VOYAGER_BASE_MODEL=str(model),
        VOYAGER_VAR_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_warns_about_sqlite_and_no_redis_in_production(tmp_path):
    result = run_manage(
        "check",
        "--deploy",
        VOYAGER_ENV="production",
        SECRET_KEY="y" * 60,
        ALLOWED_HOSTS="voyager.example.org",
        VOYAGER_VAR_DIR=str(tmp_path),
    )
    assert "voyager.W001" in result.stdout + result.stderr  # no model under this var dir
    assert "voyager.W002" in result.stdout + result.stderr
    assert "voyager.W003" in result.stdout + result.stderr
