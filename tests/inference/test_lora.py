import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from inference.batched_lora import LoraBank
from inference.loading import load_base_model
from inference.lora import AdapterError, load_adapter

PREFIX = "base_model.model.model.layers.0.self_attn"


@pytest.fixture
def base(tiny_model_dir):
    return load_base_model(tiny_model_dir).model


def write_adapter(root: Path, tensors: dict, **config) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]} | config
    (root / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(root / "adapter_model.safetensors"))
    return root


def test_it_maps_peft_tensors_onto_module_names_with_the_scale_folded_in(base, adapter_factory):
    adapter = load_adapter(adapter_factory("plain", seed=1, r=4), base)
    assert adapter.rank == 4
    assert sorted(adapter.modules)[0] == "model.layers.0.self_attn.q_proj"
    a, b = adapter.modules["model.layers.0.self_attn.q_proj"]
    assert a.shape == (64, 4) and b.shape == (4, 64)


def test_missing_directory_and_files_are_named(base, tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        load_adapter(tmp_path / "nope", base)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="missing adapter_config.json"):
        load_adapter(tmp_path / "empty", base)
    (tmp_path / "empty" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    with pytest.raises(AdapterError, match="missing adapter_model.safetensors"):
        load_adapter(tmp_path / "empty", base)


def test_it_refuses_pickled_weights(base, tmp_path):
    root = tmp_path / "pickle"
    root.mkdir()
    (root / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (root / "adapter_model.bin").write_bytes(b"\x80\x04not today")
    with pytest.raises(AdapterError, match="refusing to unpickle"):
        load_adapter(root, base)


def test_corrupt_safetensors_is_reported(base, tmp_path):
    root = write_adapter(
        tmp_path / "c",
        {f"{PREFIX}.q_proj.lora_A.weight": torch.zeros(4, 64), f"{PREFIX}.q_proj.lora_B.weight": torch.zeros(64, 4)},
    )
    data = (root / "adapter_model.safetensors").read_bytes()
    (root / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="corrupt safetensors"):
        load_adapter(root, base)


def test_unknown_modules_and_wrong_shapes_are_named(base, tmp_path):
    unknown = write_adapter(
        tmp_path / "u",
        {
            "base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64),
            "base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight": torch.zeros(64, 4),
        },
    )
    with pytest.raises(AdapterError, match="unknown module 'model.layers.9.self_attn.q_proj'"):
        load_adapter(unknown, base)
    wrong = write_adapter(
        tmp_path / "w",
        {f"{PREFIX}.k_proj.lora_A.weight": torch.zeros(4, 64), f"{PREFIX}.k_proj.lora_B.weight": torch.zeros(64, 4)},
    )
    with pytest.raises(AdapterError, match=r"wrong shape for 'model.layers.0.self_attn.k_proj'.*\(32, 4\)"):
        load_adapter(wrong, base)  # the tiny model's k_proj has 2 kv heads: 32 outputs
    half = write_adapter(tmp_path / "h", {f"{PREFIX}.q_proj.lora_A.weight": torch.zeros(4, 64)})
    with pytest.raises(AdapterError, match="not both"):
        load_adapter(half, base)
    alien = write_adapter(tmp_path / "a", {"base_model.model.lm_head.modules_to_save.weight": torch.zeros(2, 2)})
    with pytest.raises(AdapterError, match="unexpected tensor"):
        load_adapter(alien, base)


def test_unsupported_flavours_are_refused(base, tmp_path):
    dora = write_adapter(
        tmp_path / "d",
        {f"{PREFIX}.q_proj.lora_A.weight": torch.zeros(4, 64), f"{PREFIX}.q_proj.lora_B.weight": torch.zeros(64, 4)},
        use_dora=True,
    )
    with pytest.raises(AdapterError, match="DoRA"):
        load_adapter(dora, base)


def test_bank_pads_ranks_with_exact_zeros(tiny_model_dir, adapter_factory):
    """A rank-2 adapter in a rank-8 bank gives the same logits as PEFT running it alone."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    small = adapter_factory("r2", seed=21, r=2, targets=("q_proj", "v_proj"))
    big = adapter_factory("r8", seed=22, r=8, targets=("o_proj", "down_proj"))
    loaded = load_base_model(tiny_model_dir)
    bank = LoraBank(loaded.model, num_slots=2)
    bank.write(1, load_adapter(small, loaded.model))
    bank.write(2, load_adapter(big, loaded.model))
    assert bank.rank == 8
    ids = torch.tensor([[5, 40, 41, 42, 43], [5, 40, 41, 42, 43]])
    with torch.no_grad():
        bank.state.set(torch.tensor([1, 2]))
        ours = loaded.model(input_ids=ids).logits
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), small, adapter_name="s")
        peft.load_adapter(big, adapter_name="b")
        peft.set_adapter("s")
        ref_small = peft(input_ids=ids[:1]).logits
        peft.set_adapter("b")
        ref_big = peft(input_ids=ids[:1]).logits
    torch.testing.assert_close(ours[0], ref_small[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], ref_big[0], rtol=1e-5, atol=1e-5)
