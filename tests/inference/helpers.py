"""Engine requests and what comes back: an NPC persona, a request, an event collector, and PEFT's reference tokens."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import torch

from inference.engine import AdapterRef, Delta, Error, Event, Request, Result
from inference.prompt import PersonaSpec, Sampling

GREEDY = Sampling(temperature=0.0)


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


def request(rid: str, text: str = "hello there", **kw) -> Request:
    kw.setdefault("persona", npc_persona())
    kw.setdefault("player", "alice")
    kw.setdefault("max_tokens", 12)
    return Request(request_id=rid, text=text, **kw)


def reference_tokens(
    model_dir: Path, refs: list[AdapterRef | None], prompts: list[str], counts: list[int]
) -> list[list[int]]:
    """Greedy tokens from PEFT: set_adapter + generate, one request at a time."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    base.generation_config.eos_token_id = None  # the engine runs these with ignore_eos
    named = [r for r in refs if r is not None]
    model = PeftModel.from_pretrained(base, named[0].path, adapter_name=f"id{named[0].id}")
    for ref in named[1:]:
        if f"id{ref.id}" not in model.peft_config:
            model.load_adapter(ref.path, adapter_name=f"id{ref.id}")
    out = []
    for ref, prompt, n in zip(refs, prompts, counts):
        ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
        kwargs = dict(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0
        )
        with torch.no_grad():
            if ref is None:
                with model.disable_adapter():
                    gen = model.generate(**kwargs)
            else:
                model.set_adapter(f"id{ref.id}")
                gen = model.generate(**kwargs)
        out.append(gen[0, ids.shape[1] :].tolist())
    return out
