"""Builders for test data: database rows (adapter versions, exchanges, player links) and adapter upload files."""

from __future__ import annotations

import json

import torch
from django.utils import timezone
from safetensors.torch import save as safetensors_save

from agents_app.models import AdapterVersion, Battle, Exchange, PlayerLink

# --- database rows ------------------------------------------------------------------------------


def make_adapter(persona, version, status=AdapterVersion.Status.VALIDATED):
    return AdapterVersion.objects.create(
        persona=persona,
        version=version,
        files_path=f"adapters/{persona.slug}/{version}",
        sha256="a" * 64,
        base_model_id="starter",
        rank=8,
        target_modules=["q_proj"],
        size_bytes=1000,
        status=status,
    )


def adapter(persona, version, status="active", card="", **extra):
    return AdapterVersion.objects.create(
        persona=persona,
        version=version,
        files_path=f"adapters/{persona.slug}/v{version}",
        sha256="a" * 64,
        base_model_id="starter",
        rank=4,
        target_modules=["q_proj", "v_proj"],
        size_bytes=1234,
        status=status,
        model_card=card,
        **extra,
    )


_clock = [0]


def make_exchange(npc, *, player="steve", text="where is iron?", reply="Down the east tunnel.", **extra):
    _clock[0] += 1
    return Exchange.objects.create(
        npc=npc,
        persona=extra.pop("persona", npc.persona),
        player_name=player,
        player_text=text,
        prompt="p",
        reply_text=reply,
        created_at=extra.pop("created_at", timezone.now() - timezone.timedelta(seconds=10_000 - _clock[0])),
        **extra,
    )


def voted_battle(npc, user, left_version, right_version, outcome):
    """A battle of two versions on one NPC's persona, already voted ``outcome``."""
    left, right = make_exchange(npc, adapter_version=left_version), make_exchange(npc, adapter_version=right_version)
    return Battle.objects.create(
        persona=npc.persona,
        user=user,
        player_text="hi",
        left=left,
        right=right,
        outcome=outcome,
        voted_at=timezone.now(),
    )


def verified_link(user, player_name, *, public=False):
    return PlayerLink.objects.create(
        user=user, player_name=player_name, verified_at=timezone.now(), show_publicly=public
    )


# --- adapter upload files (a LoRA adapter for the tiny starter model) ----------------------------

HIDDEN = 64  # the tiny starter model's
Q = "base_model.model.model.layers.0.self_attn.q_proj"


def config_json(**overrides) -> bytes:
    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj"],
        "layers_to_transform": [0],  # the weights below adapt layer 0's q_proj, and only it
        "base_model_name_or_path": "tiny-test",
        **overrides,
    }
    return json.dumps(config).encode()


def weights(tensors=None) -> bytes:
    tensors = tensors or {f"{Q}.lora_A.weight": torch.randn(4, HIDDEN), f"{Q}.lora_B.weight": torch.zeros(HIDDEN, 4)}
    return safetensors_save(tensors)


def nan_weights() -> bytes:
    b = torch.zeros(HIDDEN, 4)
    b[3, 1] = float("nan")
    return weights({f"{Q}.lora_A.weight": torch.randn(4, HIDDEN), f"{Q}.lora_B.weight": b})
