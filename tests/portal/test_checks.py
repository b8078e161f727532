import pytest
from django.test import override_settings

from portal import checks


def test_w001_warns_when_the_base_model_directory_holds_no_model(tmp_path):
    with override_settings(VOYAGER_BASE_MODEL=str(tmp_path)):
        assert [w.id for w in checks.check_base_model()] == ["voyager.W001"]
    (tmp_path / "config.json").write_text("{}")
    with override_settings(VOYAGER_BASE_MODEL=str(tmp_path)):
        assert checks.check_base_model() == []


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_w002_and_w003_speak_only_in_production():
    sqlite = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
    with override_settings(PRODUCTION=False, REDIS_URL=None, DATABASES=sqlite):
        assert checks.check_scaled_backends() == []
    with override_settings(PRODUCTION=True, REDIS_URL=None, DATABASES=sqlite):
        assert [w.id for w in checks.check_scaled_backends()] == ["voyager.W002", "voyager.W003"]
    pg = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "v"}}
    with override_settings(PRODUCTION=True, REDIS_URL="redis://127.0.0.1:6379/0", DATABASES=pg):
        assert checks.check_scaled_backends() == []
