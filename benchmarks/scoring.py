"""How long does the gate take to score held-out replies, and what did the reply-only scoring buy?

The nightly run's gate scores every held-out prompt-and-reply pair under the active version and
under the candidate (``training_tasks.gate.reply_logps``), and it was the largest part of the run
on the real model. Two ways, on the same pairs, in one run:

- ``full``: the former way: in input order, every position through the output layer in float32,
  the full-vocabulary log-softmax, then the reply's positions picked out;
- ``reply``: ``gate.reply_logps``: batched by length, only the reply's positions through the
  output layer, bf16 autocast where bf16 is fast.

The pairs are the chat prompts the engine renders for corpus dialogues (the default persona set,
memory and context included) with the corpus replies. The model is the real default one with its
world adapter when that is cached (``bin/voyager run`` trains it), else the bare base model.
``max_abs_diff`` is the largest difference between the two ways' scores, and ``auc_*`` the
liked-above-disliked ranking each way gives when the corpus reply counts as liked and another
persona's reply as disliked: the figures the gate decides on.

    python benchmarks/scoring.py [--pairs 200] [--model var/models/smollm2-135m-instruct]

The last line of output is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def full_vocabulary_logps(model, tokenizer, items, batch_size: int = 16) -> list[float]:
    """The former ``reply_logps``, kept here as the baseline."""
    from training_tasks.gate import padded_batch, reply_sequences

    out: list[float] = []
    for start in range(0, len(items), batch_size):
        seqs, spans = reply_sequences(tokenizer, items[start : start + batch_size])
        input_ids, mask = padded_batch(seqs, tokenizer.pad_token_id or 0)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        token_logp = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        for i, s in enumerate(seqs):
            out.append(float(token_logp[i, len(s) - 1 - spans[i] : len(s) - 1].mean()))
    return out


def auc(liked: list[float], disliked: list[float]) -> float:
    wins = sum((a > b) + 0.5 * (a == b) for a in liked for b in disliked)
    return round(wins / (len(liked) * len(disliked)), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pairs", type=int, default=200, help="prompts scored (each with a liked and a disliked reply)"
    )
    parser.add_argument("--model", default=str(ROOT / "var" / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # training_tasks reads the platform's settings (where the world adapter is cached).
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inference.corpus import generate_dialogues
    from inference.loading import bf16_is_fast
    from inference.prompt import render_chat
    from training_tasks.domain import world_adapter_dir
    from training_tasks.gate import reply_logps

    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, local_files_only=True)
    adapter = world_adapter_dir(args.model)
    if (adapter / "adapter_config.json").is_file():
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    torch.manual_seed(args.seed)

    dialogues = generate_dialogues(args.pairs, seed=args.seed)
    rng = random.Random(args.seed)
    items = []
    for d in dialogues:
        prompt = render_chat(tokenizer, d.persona, d.memory, d.context, d.player, d.text)
        other = rng.choice([x for x in dialogues if x.persona.slug != d.persona.slug])
        items += [(prompt, d.reply), (prompt, other.reply)]
    prompt_tokens = sum(len(tokenizer.encode(p, add_special_tokens=False)) for p, _ in items) / len(items)
    reply_tokens = sum(len(tokenizer.encode(c, add_special_tokens=False)) for _, c in items) / len(items)
    print(f"{len(items)} sequences: {prompt_tokens:.0f} prompt and {reply_tokens:.0f} reply tokens on average")

    result: dict[str, object] = {
        "model": args.model,
        "adapter": adapter.name if isinstance(model, PeftModel) else None,
        "sequences": len(items),
        "mean_prompt_tokens": round(prompt_tokens, 1),
        "mean_reply_tokens": round(reply_tokens, 1),
        "bf16": bf16_is_fast(),
    }
    reply_logps(model, tokenizer, items[:16])  # warm-up: first-call allocations and kernel choice
    scores = {}
    for name, way in (("full", full_vocabulary_logps), ("reply", reply_logps)):
        started = time.monotonic()
        scores[name] = way(model, tokenizer, items)
        seconds = time.monotonic() - started
        result[f"{name}_seconds"] = round(seconds, 2)
        result[f"auc_{name}"] = auc(scores[name][0::2], scores[name][1::2])
        print(f"{name:>6}: {seconds:7.1f} s, {len(items) / seconds:5.1f} sequences/s, AUC {result[f'auc_{name}']}")
    result["speedup"] = round(result["full_seconds"] / result["reply_seconds"], 2)
    result["max_abs_diff"] = round(max(abs(a - b) for a, b in zip(scores["full"], scores["reply"])), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
