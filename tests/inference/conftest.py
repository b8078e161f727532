"""Shared fixtures: one tiny starter model per session, PEFT adapters made on demand."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch

from inference.engine import Delta, Engine, EngineConfig, Error, Event, Request, Result
from inference.loading import load_base_model
from inference.prompt import PersonaSpec, Sampling
from inference.starter import build_starter_model

GREEDY = Sampling(temperature=0.0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny"
    return build_starter_model(out, size="tiny", seed=0, log=lambda _msg: None)


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


def npc_persona(slug: str = "brann", sampling: Sampling = GREEDY) -> PersonaSpec:
    return PersonaSpec(
        slug=slug, name=slug.title(), system_prompt="You are a test NPC.", traits=("calm",), sampling=sampling
    )


class Collector:
    """Records events per request and lets a test wait for the terminal ones."""

    def __init__(self) -> None:
        self.events: dict[str, list[Event]] = {}
        self.done: dict[str, Result | Error] = {}
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.setdefault(event.request_id, []).append(event)
            if isinstance(event, (Result, Error)):
                self.done[event.request_id] = event
                self._cond.notify_all()

    def wait(self, ids: Iterable[str], timeout: float = 60.0) -> dict[str, Result | Error]:
        ids = list(ids)
        with self._cond:
            ok = self._cond.wait_for(lambda: all(i in self.done for i in ids), timeout)
        assert ok, f"timed out waiting for {[i for i in ids if i not in self.done]}"
        return {i: self.done[i] for i in ids}

    def deltas(self, request_id: str) -> list[str]:
        return [e.text for e in self.events.get(request_id, []) if isinstance(e, Delta)]


@pytest.fixture
def make_engine(tiny_model_dir: Path):
    engines: list[Engine] = []

    def make(model_dir: Path | None = None, **config) -> Engine:
        engine = Engine(load_base_model(model_dir or tiny_model_dir), EngineConfig(**config)).start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop(drain=False, timeout=30)


def request(rid: str, text: str = "hello there", **kw) -> Request:
    kw.setdefault("persona", npc_persona())
    kw.setdefault("player", "alice")
    kw.setdefault("max_tokens", 12)
    return Request(request_id=rid, text=text, **kw)
