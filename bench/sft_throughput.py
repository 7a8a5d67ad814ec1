"""Real (non-padding) tokens per second of ftkit's SFT defaults against TRL's defaults, same data, model and steps.

    python bench/sft_throughput.py [--model ID_OR_DIR] [--data addition|chat] [--steps 10] [--batch-size 16]

Both sides train LoRA (r 16, alpha 32, every linear layer) on the same train split with the same batch size,
learning rate and max_length, one after the other in this process:
  ftkit      `sft.train` with the recipe's defaults (dtype, gradient checkpointing and padding-free: auto)
  trl        what a TRL user writes: SFTTrainer(model=<path>, args=SFTConfig(output_dir, max_steps,
             per_device_train_batch_size, learning_rate, max_length), peft_config=LoraConfig(...)), plus
             use_cpu=True without a GPU (else TRL refuses: "Your setup doesn't support bf16/gpu") and ftkit's seed
             (the same examples in the same order); TRL's defaults
             then are float32 weights under bf16 autocast, gradient checkpointing and padded batches
  trl-fp32   the same with bf16=False, a reference that shows how much of the gap is bf16 on this machine
Untimed warm-up runs of both come first (`--warmup-steps`: oneDNN's primitives on a CPU, CUDA's caches on a GPU).
Tokens are TRL's own `num_tokens` count (the examples' tokens, never padding), over the whole `train()` call.
`--repeats N` runs every side N times, alternating, and keeps each side's median run (a 10-step run on 2 CPU cores
varies by about 7% back to back). Prints the CPU (its bf16 flags) or GPU, a table with the dtype of each side's
weights and compute, the ratios ftkit / trl, ftkit / trl-fp32 and ftkit / the fastest TRL run (the --trl-variant
runs included), and (on a GPU) MFU = 6 * N * tokens/s / peak bf16 FLOP/s, N = the model's parameters.
`--model shape:qwen2.5-0.5b` (or -1.5b) builds randomly-initialised weights of
that architecture offline, with the tokenizer of `--tokenizer` (default: ftkit's default model).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_stage import example  # noqa: E402  (variable-length multi-turn chat examples)

from ftkit import recipe
from ftkit.core import machine, rundir
from ftkit.core.rows import messages
from ftkit.models import loader
from ftkit.stages import data, sft
from ftkit.training.trainer import settings as trainer_settings

# Public architecture numbers of Qwen2.5 (config.json of Qwen/Qwen2.5-0.5B and -1.5B).
SHAPES = {
    "qwen2.5-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936},
    "qwen2.5-1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936},
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}  # dense, FLOP/s


def build_shape(name: str, tokenizer_from: str, dest: Path) -> str:
    """Random weights of a named architecture (bf16), saved with a tokenizer: throughput needs no trained weights."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    tokenizer = loader.load_tokenizer(loader.resolve(tokenizer_from))
    config = Qwen2Config(**SHAPES[name], max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return str(dest)


def peak_flops(override: float | None) -> float | None:
    if override:
        return override * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    if "H100" in name and "PCIe" in name:
        return 756e12
    return next((flops for key, flops in PEAK_BF16.items() if key in name), None)


def recipe_for(model_id: str, data_section: dict, args, overrides=()) -> recipe.Recipe:
    return recipe.build(overrides=list(overrides), data={"name": "throughput", "seed": 0, "stages": ["data", "sft"],
                         "model": {"id": model_id, "lora_r": 16, "lora_alpha": 32},
                         "data": data_section,
                         "sft": {"max_steps": args.steps, "batch_size": args.batch_size,
                                 "learning_rate": args.learning_rate, "max_length": args.max_length,
                                 "logging_steps": 1, "save_steps": 0}})


def trl_dataset(rows: list[dict]):
    """The rows as a TRL user hands them over: conversational prompt-completion pairs, which TRL tokenizes with the
    model's chat template and trains on the completion only (its default)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": messages(r), "completion": [{"role": "assistant", "content": r["answer"]}]}
                              for r in rows])


@contextlib.contextmanager
def plain_trl():
    """TRL as its users run it: ftkit's training changes how TRL's fused LM head chooses which positions to score
    (`ftkit.training.trainer.score_completions_only`, for the whole process), which the TRL runs here must not
    inherit from an ftkit run before them."""
    from trl.trainer import utils as trl_utils

    patched = getattr(trl_utils, "_use_triton", None)
    trl_utils._use_triton = getattr(patched, "ftkit_original", patched)
    try:
        yield
    finally:
        trl_utils._use_triton = patched


def trl_run(model_path: str, rows: list[dict], args, steps: int, out: Path, **changes) -> dict:
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=args.batch_size,
                       learning_rate=args.learning_rate, max_length=args.max_length, logging_steps=1,
                       save_strategy="no", report_to="none", disable_tqdm=True,
                       use_cpu=not torch.cuda.is_available(), seed=0, data_seed=0, **changes)
    trainer = SFTTrainer(model=model_path, args=config, train_dataset=trl_dataset(rows),
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    with plain_trl():
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h][-1]
    settings = trainer_settings(trainer)
    del trainer
    return {"steps": steps, "train_seconds": round(seconds, 1), "real_tokens": int(tokens),
            "real_tokens_per_second": round(tokens / seconds, 1), "settings": settings}


def measured(run) -> dict:
    """Run one side with the GPU's memory peak recorded and released afterwards."""
    import gc

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    result = run()
    gc.collect()
    if torch.cuda.is_available():
        result["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.empty_cache()
    return result


def ftkit_run(cfg, run_dir: Path) -> dict:
    result = measured(lambda: sft.train(cfg, run_dir))
    return {k: result[k] for k in ("steps", "train_seconds", "real_tokens", "real_tokens_per_second", "settings",
                                   "peak_gpu_gb") if k in result}


def planned_runs(args, skip, model_id, data_section, cfg, run_dir, path, rows, tmp) -> dict:
    """{run name: a function that trains it once and returns its figures}, in the order they run."""
    runs = {}
    if "ftkit" not in skip:
        runs["ftkit"] = lambda: ftkit_run(cfg, run_dir)
    for variant in args.variant:
        name, _, sets = variant.partition(":")
        changed = recipe_for(model_id, data_section, args, sets.split(","))
        runs[name] = lambda changed=changed: ftkit_run(changed, run_dir)
    steps = args.trl_steps or args.steps
    trl = {} if "trl" in skip else {"trl": {}}
    trl |= {} if "trl-fp32" in skip else {"trl-fp32": {"bf16": False}}
    for variant in args.trl_variant:
        name, _, sets = variant.partition(":")
        trl[name] = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in sets.split(","))}
    for name, changes in trl.items():
        runs[name] = lambda name=name, changes=changes: measured(
            lambda: trl_run(path, rows, args, steps, tmp / name, **changes))
    return runs


def repeated(runs: dict, repeats: int) -> dict:
    """Each run `repeats` times, the runs alternating (ftkit, TRL, ..., ftkit, TRL, ...) so that a machine's drift
    (another process, the CPU's clock) touches every run alike. A run's figures are those of its median repeat by
    real tokens/s, with every repeat's tokens/s beside them."""
    results: dict[str, list] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            results[name].append(run())
    out = {}
    for name, tries in results.items():
        ranked = sorted(tries, key=lambda r: r["real_tokens_per_second"])
        out[name] = {**ranked[(len(ranked) - 1) // 2],
                     "repeats_tokens_per_second": [r["real_tokens_per_second"] for r in tries]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=recipe.DEFAULT_MODEL)
    parser.add_argument("--tokenizer", default=recipe.DEFAULT_MODEL, help="for --model shape:...")
    parser.add_argument("--data", choices=["addition", "chat"], default="addition",
                        help="addition: the quickstart's task; chat: 1-3 turn conversations of varied length")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--trl-steps", type=int, default=None, help="default: --steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="untimed runs of ftkit and TRL first (0: none; default 5 on a GPU, 2 on a CPU)")
    parser.add_argument("--skip", default="", help="comma-separated runs to leave out: ftkit,trl,trl-fp32")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                        help="another ftkit run with recipe overrides, e.g. ftkit-padded:sft.padding_free=false")
    parser.add_argument("--trl-variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                        help="another TRL run with SFTConfig changes, e.g. trl-liger:use_liger_kernel=true")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each side this many times, alternating, and report the median (noise on a CPU: "
                             "the same run measured 293 and 315 tokens/s back to back)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not known")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.warmup_steps is None:
        args.warmup_steps = 5 if torch.cuda.is_available() else 2
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_id = args.model
        if model_id.startswith("shape:"):
            model_id = build_shape(model_id.split(":", 1)[1], args.tokenizer, tmp / "model")
        if args.data == "chat":
            rng = random.Random(0)
            (tmp / "chat.jsonl").write_text("".join(json.dumps(example(rng)) + "\n" for _ in range(args.examples)))
            data_section = {"path": str(tmp / "chat.jsonl"), "test_size": 50}
        else:
            data_section = {"task": "addition", "train_size": args.examples, "test_size": 50}
        cfg = recipe_for(model_id, data_section, args)
        run_dir = tmp / "run"
        tokenizer = loader.load_tokenizer(loader.resolve(model_id))
        splits, figures = data.build_splits(cfg, tokenizer)
        data.save_splits(splits, run_dir, figures, tokenizer)
        rows = rundir.load_split(run_dir, "train")
        lengths = [r["tokens"] for r in rows]
        from transformers import AutoConfig

        with torch.device("meta"):
            from transformers import AutoModelForCausalLM

            n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(loader.resolve(model_id))).parameters())
        out = {"model": args.model, "parameters": n_params, "data": args.data, "train_examples": len(rows),
               "example_tokens": {"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 1),
                                  "max": max(lengths)},
               "batch_size": args.batch_size, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
               else f"CPU {machine.describe_cpu()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
               "runs": {}}
        path = loader.resolve(model_id)
        if args.warmup_steps:  # CUDA context, cuBLAS, oneDNN's primitives and kernel caches: paid once, untimed
            warm = recipe_for(model_id, data_section, args, [f"sft.max_steps={args.warmup_steps}"])
            sft.train(warm, run_dir)
            trl_run(path, rows, args, args.warmup_steps, tmp / "warmup")
        out["runs"] = repeated(planned_runs(args, skip, model_id, data_section, cfg, run_dir, path, rows, tmp),
                               args.repeats)
    peak = peak_flops(args.peak_tflops)
    for run in out["runs"].values():
        if peak:
            run["mfu"] = round(6 * n_params * run["real_tokens_per_second"] / peak, 4)
    runs = out["runs"]
    trl_runs = [name for name in runs if name.startswith("trl")]
    if "ftkit" in runs and trl_runs:
        best = max(trl_runs, key=lambda name: runs[name]["real_tokens_per_second"])
        out["best_trl"] = best
        for base in dict.fromkeys(["trl", "trl-fp32", best]):
            if base in runs:
                out[f"ratio_ftkit_over_{base}"] = round(runs["ftkit"]["real_tokens_per_second"]
                                                        / runs[base]["real_tokens_per_second"], 2)
    print(f"{out['model']} ({n_params / 1e6:,.0f}M parameters), {out['data']} data "
          f"({out['example_tokens']['mean']} tokens per example), batch {args.batch_size}, on {out['device']}")
    print(f"{'run':10} {'steps':>5} {'seconds':>8} {'tokens':>8} {'tokens/s':>9} {'MFU':>6}  settings")
    for name, run in runs.items():
        mfu = f"{run['mfu']:.1%}" if "mfu" in run else "-"
        s = run["settings"]
        print(f"{name:10} {run['steps']:>5} {run['train_seconds']:>8} {run['real_tokens']:>8} "
              f"{run['real_tokens_per_second']:>9} {mfu:>6}  {s['weights']} weights, {s['dtype']} compute, "
              f"checkpointing "
              f"{'on' if s['gradient_checkpointing'] else 'off'}, {'padding-free' if s['padding_free'] else 'padded'}"
              f"{', Liger' if s['liger_kernels'] else ''}"
              f"{', peak %s GB' % run['peak_gpu_gb'] if 'peak_gpu_gb' in run else ''}"
              + (f"; repeats {run['repeats_tokens_per_second']}" if len(run["repeats_tokens_per_second"]) > 1 else ""))
    for key in dict.fromkeys(["ratio_ftkit_over_trl", "ratio_ftkit_over_trl-fp32",
                              f"ratio_ftkit_over_{out.get('best_trl')}"]):
        if key in out:
            print(f"{key.replace('_', ' ')}: {out[key]}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
