"""Transformers' static cache with torch.compile against the dynamic cache, for eval's greedy generation on this machine.

    python bench/static_cache.py [--model ID_OR_DIR] [--dtype auto] [--prompts 200] [--batch 128]

Two workloads of the quickstart's shape with the model (default: ftkit's default, SmolLM2-135M-Instruct from its
offline copy): short replies (`--prompts` addition questions, 6 new tokens, batches of `--batch`) and long ones
(50 questions, 128 new tokens, eval's room for finishing cut replies). Each runs with the dynamic cache (generate's
default), and with `cache_implementation="static"` compiled by torch.compile (transformers' CompileConfig, allowed
on every device): the first call (compiling included) and a second call timed apart. Prints seconds and how many
greedy replies equal the dynamic cache's.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from transformers import CompileConfig

from ftkit.core import machine
from ftkit.models import loader
from ftkit.recipe import ModelConfig


def questions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"What is {rng.randint(10, 99)} plus {rng.randint(10, 99)}?" for _ in range(n)]


def replies(model, tokenizer, prompts: list[str], batch: int, new_tokens: int, static: bool) -> tuple[list, float]:
    options = {"max_new_tokens": new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    if static:
        config = CompileConfig()
        config._compile_all_devices = True  # transformers compiles on GPUs only unless told (a class attribute)
        options.update(cache_implementation="static", compile_config=config)
    texts = [tokenizer.apply_chat_template([{"role": "system", "content": "Answer with the number only."},
                                            {"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    out, start = [], time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            inputs = tokenizer(texts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            generated = model.generate(**inputs, **options)
            out += tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=ModelConfig().id)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    print(f"machine: {machine.describe_cpu() if not torch.cuda.is_available() else torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}")
    model, tokenizer = loader.load(ModelConfig(id=args.model, dtype=args.dtype), use="generation")
    tokenizer.padding_side = "left"
    model.eval()
    print(f"model {args.model}, dtype {model.dtype}\n")
    print("| workload | cache | first call s | second call s | replies equal to dynamic |")
    print("|---|---|---|---|---|")
    for name, prompts, batch, new_tokens in (("short", questions(args.prompts), args.batch, 6),
                                             ("long", questions(50, seed=1), 50, 128)):
        reference, first = replies(model, tokenizer, prompts, batch, new_tokens, static=False)
        _, second = replies(model, tokenizer, prompts, batch, new_tokens, static=False)
        print(f"| {name}: {len(prompts)} x {new_tokens} tokens | dynamic | {first:.1f} | {second:.1f} | - |", flush=True)
        compiled, first = replies(model, tokenizer, prompts, batch, new_tokens, static=True)
        again, second = replies(model, tokenizer, prompts, batch, new_tokens, static=True)
        same = sum(a == b for a, b in zip(reference, again))
        print(f"| {name}: {len(prompts)} x {new_tokens} tokens | static + compile | {first:.1f} | {second:.1f} | "
              f"{same}/{len(prompts)} |", flush=True)


if __name__ == "__main__":
    main()
