"""Batched evaluation against a naive loop: the same prompts and model, one `generate` call per prompt.

    python bench/eval_batching.py [--model DIR_OR_ID] [--prompts 200] [--batch-size 32] [--max-new-tokens 6]

Both generate greedily for the quickstart's held-out addition questions with the default model (or --model) on
whatever device ftkit uses (CPU here). The naive loop is the way a first evaluation script is often written:
template, tokenize and `generate` one prompt at a time. ftkit's `generation.generate` left-pads, sorts prompts by
length and generates a batch at a time. Prints both times, their ratio, and how many outputs agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ftkit import recipe
from ftkit.core.rows import messages
from ftkit.models import generation, loader
from ftkit.scoring.tasks import Addition


@torch.inference_mode()
def naive(model, tokenizer, conversations, max_new_tokens: int) -> list[str]:
    outputs = []
    for conversation in conversations:
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        generated = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
        outputs.append(tokenizer.decode(generated[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=recipe.DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=6)
    args = parser.parse_args()
    cfg = recipe.build({"name": "bench", "model": {"id": args.model, "dtype": "float32"}})
    model, tokenizer = loader.load(cfg.model)
    conversations = [messages(r) for r in Addition().splits(0, args.prompts, seed=0)["test"]]
    generation.generate(model, tokenizer, conversations[:4], 4, 2)  # warm-up, not timed
    start = time.perf_counter()
    slow = naive(model, tokenizer, conversations, args.max_new_tokens)
    naive_s = time.perf_counter() - start
    start = time.perf_counter()
    fast = generation.generate(model, tokenizer, conversations, args.batch_size, args.max_new_tokens)
    batched_s = time.perf_counter() - start
    print(json.dumps({"prompts": len(conversations), "device": str(model.device), "threads": torch.get_num_threads(),
                      "batch_size": args.batch_size, "naive_s": round(naive_s, 2), "batched_s": round(batched_s, 2),
                      "speedup": round(naive_s / batched_s, 2),
                      "same_outputs": sum(a == b for a, b in zip(slow, fast))}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
