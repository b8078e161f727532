"""The adapter version lifecycle: each transition's role, starting state and one-active-version rule."""

from pathlib import Path

import pytest
from django.db import IntegrityError

from agents_app import adapters as lifecycle
from agents_app.models import AdapterVersion

Status = AdapterVersion.Status


def staged_files(settings, tmp_path, persona) -> Path:
    settings.MEDIA_ROOT = str(tmp_path)
    staged = lifecycle.persona_adapters_dir(persona) / ".staging-x"
    staged.mkdir(parents=True)
    (staged / "adapter_model.safetensors").write_bytes(b"weights")
    return staged


def create(persona, staged, status=Status.VALIDATED, **fields):
    row = {"sha256": "a" * 64, "base_model_id": "starter", "rank": 8, "target_modules": ["q_proj"], "size_bytes": 7}
    return lifecycle.version_create(
        persona=persona, staged=staged, final_path=lambda v: staged.parent / f"v{v}", status=status, **row | fields
    )


@pytest.fixture
def versions(settings, tmp_path, persona):
    """v1 and v2 of Alice's persona, both validated, their files on disk."""
    made = []
    for _ in range(2):
        made.append(create(persona, staged_files(settings, tmp_path, persona)))
    return made


def test_versions_are_numbered_per_persona_and_their_files_moved_into_place(versions, persona):
    assert [v.version for v in versions] == [1, 2]
    assert all((v.absolute_path / "adapter_model.safetensors").read_bytes() == b"weights" for v in versions)
    assert versions[1].absolute_path.name == "v2" and versions[1].status_changed_at is not None


def test_a_row_that_cannot_be_written_puts_the_files_back(settings, tmp_path, persona, db):
    staged = staged_files(settings, tmp_path, persona)
    with pytest.raises(IntegrityError):
        create(persona, staged, sha256=None)  # NOT NULL: the row is refused
    assert (staged / "adapter_model.safetensors").is_file()
    assert not (staged.parent / "v1").exists()
    assert not AdapterVersion.objects.exists()


def test_only_a_moderator_reviews_and_only_a_validated_version(versions, alice, dana):
    v1, v2 = versions
    with pytest.raises(lifecycle.LifecycleDenied, match="only moderators"):
        lifecycle.version_review(user=alice, adapter=v1, decision="approve")
    with pytest.raises(lifecycle.LifecycleError, match="decision: must be approve or reject, not 'maybe'"):
        lifecycle.version_review(user=dana, adapter=v1, decision="maybe")
    assert lifecycle.version_review(user=dana, adapter=v1, decision="approve").status == Status.APPROVED
    assert lifecycle.version_review(user=dana, adapter=v2, decision="reject").status == Status.REJECTED
    with pytest.raises(lifecycle.LifecycleError, match="v1 is approved; only validated versions"):
        lifecycle.version_review(user=dana, adapter=v1, decision="reject")
    v1.refresh_from_db()
    assert v1.status == Status.APPROVED


def test_an_uploaded_version_waits_for_its_smoke_generation(settings, tmp_path, persona, dana):
    uploaded = create(persona, staged_files(settings, tmp_path, persona), status=Status.UPLOADED)
    with pytest.raises(lifecycle.LifecycleError, match="still being validated"):
        lifecycle.version_review(user=dana, adapter=uploaded, decision="approve")


def test_activating_retires_the_active_version_and_points_the_persona_at_the_new_one(
    versions, persona, alice, dana, settings, tmp_path
):
    v1, v2 = versions
    for v in versions:
        lifecycle.version_review(user=dana, adapter=v, decision="approve")
    unreviewed = create(persona, staged_files(settings, tmp_path, persona))
    with pytest.raises(lifecycle.LifecycleError, match="v3 is validated; a moderator must approve it first"):
        lifecycle.version_activate(user=alice, adapter=unreviewed)
    lifecycle.version_activate(user=alice, adapter=v1)  # the owner may
    lifecycle.version_activate(user=dana, adapter=v2)  # and a moderator
    v1.refresh_from_db(), v2.refresh_from_db(), persona.refresh_from_db()
    assert (v1.status, v2.status, persona.active_adapter_id) == (Status.RETIRED, Status.ACTIVE, v2.pk)
    assert AdapterVersion.objects.filter(persona=persona, status=Status.ACTIVE).count() == 1


def test_nobody_else_activates_a_version(versions, bob, dana):
    lifecycle.version_review(user=dana, adapter=versions[0], decision="approve")
    with pytest.raises(lifecycle.LifecycleDenied, match="only the persona's owner or a moderator"):
        lifecycle.version_activate(user=bob, adapter=versions[0])
    versions[0].refresh_from_db()
    assert versions[0].status == Status.APPROVED


def test_a_promoted_candidate_is_active_or_approved_and_nothing_else_is_promoted(versions, persona):
    v1, v2 = versions
    assert lifecycle.version_promote(adapter=v1, activate=False).status == Status.APPROVED
    assert lifecycle.version_promote(adapter=v2, activate=True).status == Status.ACTIVE
    persona.refresh_from_db()
    assert persona.active_adapter_id == v2.pk
    with pytest.raises(lifecycle.LifecycleError, match="only a validated version is promoted"):
        lifecycle.version_promote(adapter=v1, activate=True)


def test_retiring_the_active_version_falls_back_to_the_base_model(versions, persona):
    active = lifecycle.version_promote(adapter=versions[1], activate=True)
    retired = lifecycle.versions_retire(adapter_ids=[active.pk, versions[0].pk])
    assert sorted(v.version for v in retired) == [1, 2]
    persona.refresh_from_db()
    assert persona.active_adapter is None
    assert lifecycle.versions_retire(adapter_ids=[active.pk]) == []  # already retired: left alone
