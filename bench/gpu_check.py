"""ftkit's stages on a CUDA GPU with the recipe defaults (bf16): data, SFT (LoRA), GRPO and batched eval.

    python bench/gpu_check.py [--model ID_OR_DIR | shape:qwen2.5-1.5b] [--tokenizer ID_OR_DIR] [--sft-steps 20]
                              [--shard fsdp --processes N]

With --shard fsdp SFT and RL train through `accelerate launch` with the FSDP2 config ftkit writes (one process on a
single GPU still goes through FSDP: loading, sharded training, gathering the shards to save), and eval then loads and
merges the saved adapters: the sharded path that a CPU cannot run.

Prints one JSON object: the settings SFT resolved (dtype, checkpointing, padding-free, Liger), steps, real
tokens/s, GRPO's reward and seconds, and eval's prompts/s per model. Exits 0 with a note when no GPU is present.
(Throughput against plain TRL is bench/sft_throughput.py; bench/gpu_check.sh runs both.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_throughput import build_shape  # noqa: E402

from ftkit import recipe
from ftkit.core import rundir
from ftkit.models import loader
from ftkit.recipe import build  # noqa: E402
from ftkit.stages import data, rl, sft
from ftkit.stages import eval as eval_stage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=recipe.DEFAULT_MODEL)
    parser.add_argument("--tokenizer", default=recipe.DEFAULT_MODEL, help="for --model shape:...")
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--rl-steps", type=int, default=4)
    parser.add_argument("--shard", choices=["none", "fsdp", "zero3"], default="none")
    parser.add_argument("--processes", type=int, default=1, help="with --shard fsdp: processes (GPUs) to shard over")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": args.model,
           "shard": args.shard, "processes": args.processes}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, model_id = Path(tmp) / "run", args.model
        if model_id.startswith("shape:"):
            model_id = build_shape(model_id.split(":", 1)[1], args.tokenizer, Path(tmp) / "model")
        cfg = build({"name": "gpu-check", "model": {"id": model_id},
                     "data": {"train_size": 2000, "test_size": 200},
                     "sft": {"max_steps": args.sft_steps, "batch_size": 64, "logging_steps": 5, "save_steps": 0},
                     "rl": {"max_steps": args.rl_steps, "batch_size": 64, "num_generations": 8, "logging_steps": 1,
                            "save_steps": 0},
                     "eval": {"batch_size": 64, "max_new_tokens": 6},
                     "launch": {"shard": args.shard, "num_processes": args.processes}})
        run_dir.mkdir(parents=True)
        rundir.path(run_dir, rundir.RECIPE).write_text(cfg.dump())  # launched processes read it from the run
        tokenizer = loader.load_tokenizer(loader.resolve(model_id))
        splits, figures = data.build_splits(cfg, tokenizer)
        data.save_splits(splits, run_dir, figures, tokenizer)
        stages = {"sft": lambda: sft.train(cfg, run_dir), "rl": lambda: rl.train(cfg, run_dir)}
        for name, stage in stages.items():
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            try:
                result = stage()
            except Exception as exc:  # record and go on: one failing stage should not hide the others' figures
                out[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                continue
            out[name] = {**{k: v for k, v in result.items() if not isinstance(v, (list, dict)) or k == "settings"},
                         "wall_seconds": round(time.perf_counter() - start, 1),
                         "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
        for name in ("base", "sft", "rl"):
            try:
                result = eval_stage.evaluate_model(cfg, run_dir, name)
            except Exception as exc:
                out[f"eval_{name}"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                continue
            out[f"eval_{name}"] = {"n": result["n"], result["metric"]: result[result["metric"]],
                                   "prompts_per_s": round(result["n"] / max(result["generate_seconds"], 1e-9), 1)}
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
