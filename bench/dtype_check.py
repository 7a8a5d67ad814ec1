"""Does `dtype: auto`'s micro-benchmark pick what is faster for a real model? Both, side by side, on this machine.

    python bench/dtype_check.py [--model ID_OR_DIR] [--batch 16] [--length 48] [--new-tokens 16] [--repeats 3]

For the model (default: ftkit's default, SmolLM2-135M-Instruct from its offline copy) in float32 and in bfloat16:
one LoRA training step (r 16 on every linear layer, forward and backward of `--batch` sequences of `--length`
tokens) and one greedy generation (`--batch` prompts of `--length` tokens, `--new-tokens` new ones), each the median
of `--repeats` after a warm-up. Prints the seconds, the bfloat16 speed-up of each, and the same speed-ups from the
micro-benchmark (`ftkit.models.dtypes.benchmark`, measured afresh here), so the two verdicts can be compared.
"""

from __future__ import annotations

import argparse

import torch

from ftkit.core import machine
from ftkit.models import dtypes, loader
from ftkit.recipe import ModelConfig


def measure(model_id: str, dtype: str, batch: int, length: int, new_tokens: int, repeats: int) -> dict:
    from peft import get_peft_model

    cfg = ModelConfig(id=model_id, dtype=dtype)
    model, tokenizer = loader.load(cfg)
    ids = torch.randint(100, tokenizer.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.eval()
        generate = dtypes.median_seconds(lambda: model.generate(ids, attention_mask=torch.ones_like(ids),
                                                          max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                          do_sample=False, pad_token_id=tokenizer.pad_token_id),
                                   repeats)
    model = get_peft_model(model, loader.lora_config(cfg))
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()

    return {"training": dtypes.median_seconds(step, repeats), "generation": generate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=ModelConfig().id)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine.describe_cpu()}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    real = {d: measure(args.model, d, args.batch, args.length, args.new_tokens, args.repeats)
            for d in ("float32", "bfloat16")}
    micro = dtypes.benchmark()
    print(f"\n| use | {args.model} float32 s | bfloat16 s | bf16 speed-up | micro-benchmark bf16 speed-up | "
          f"auto would pick |")
    print("|---|---|---|---|---|---|")
    for use in dtypes.USES:
        speedup = real["float32"][use] / real["bfloat16"][use]
        micro_speedup = micro[use]["float32"] / micro[use]["bfloat16"]
        pick = "bfloat16" if micro_speedup >= dtypes.MARGIN else "float32"
        faster = "bfloat16" if speedup >= 1 else "float32"
        print(f"| {use} | {real['float32'][use]:.3f} | {real['bfloat16'][use]:.3f} | {speedup:.2f}x | "
              f"{micro_speedup:.2f}x | {pick} ({'right' if pick == faster else 'WRONG'}: {faster} is faster) |")


if __name__ == "__main__":
    main()
