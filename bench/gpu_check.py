"""GPU path check: ftkit's SFT, GRPO and eval on a CUDA device, bf16 against fp32 measured in the same run.

    python bench/gpu_check.py [--model DIR_OR_ID] [--sft-steps 30]

Runs the data stage, then SFT (LoRA) once in float32 and once in bfloat16, then GRPO and batched eval in
bfloat16, all through ftkit's own functions. Prints one JSON object: per run, steps/s and real (non-padding)
training tokens/s, the bf16/fp32 throughput ratio, and the eval generation rate. Exits 0 with a note when no
GPU is present.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from ftkit import data, evaluation, rl, sft
from ftkit.models import DEFAULT_MODEL, load_tokenizer, resolve
from ftkit.recipe import build


def real_tokens(run_dir: Path, tokenizer, steps: int, batch_size: int) -> int:
    """Non-padding tokens the SFT steps saw (prompt + answer, chat-templated)."""
    per_row = data.token_lengths(data.load_split(run_dir, "train"), tokenizer)
    seen = steps * batch_size
    return sum(per_row[i % len(per_row)] for i in range(seen))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--rl-steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16, help="SFT examples per step")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    tokenizer = load_tokenizer(resolve(args.model))
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": args.model}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        base = {"name": "gpu-check", "model": {"id": args.model},
                "data": {"train_size": 2000, "test_size": 200},
                "sft": {"max_steps": args.sft_steps, "batch_size": args.batch_size, "logging_steps": 5},
                "rl": {"max_steps": args.rl_steps, "batch_size": 64, "num_generations": 8, "logging_steps": 2}}
        cfg = build(json.loads(json.dumps(base)))
        splits, figures = data.build_splits(cfg)
        data.save_splits(splits, run_dir, figures)
        for dtype in ("float32", "bfloat16"):
            cfg = build(json.loads(json.dumps(base)), overrides=[f"model.dtype={dtype}"])
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            result = sft.train(cfg, run_dir)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            tokens = real_tokens(run_dir, tokenizer, result["steps"], cfg.sft.batch_size)
            out[f"sft_{dtype}"] = {**result, "wall_seconds": round(seconds, 1),
                                   "steps_per_s": round(result["steps"] / result["train_seconds"], 2),
                                   "real_tokens_per_s": round(tokens / result["train_seconds"]),
                                   "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        out["bf16_over_fp32_tokens_per_s"] = round(out["sft_bfloat16"]["real_tokens_per_s"]
                                                   / out["sft_float32"]["real_tokens_per_s"], 2)
        out["rl_bfloat16"] = rl.train(cfg, run_dir)
        for name in ("base", "sft", "rl"):
            out[f"eval_{name}"] = evaluation.evaluate_model(cfg, run_dir, name)
        out["eval_prompts_per_s"] = round(out["eval_sft"]["n"] / max(out["eval_sft"]["generate_seconds"], 1e-9), 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
