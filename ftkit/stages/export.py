"""Export stage: the tuned model as files a colleague loads with plain transformers, checked the way they would.

`export/merged/` is the base with the adapter merged in (safetensors, tokenizer and chat template), in the dtype eval
generated in (`model.dtype` resolved for generation) and with the weights the eval stage measured: in bfloat16 or float16, the float32 merge
rounded once (`models.merge_in_float32`). `export/adapter/` is the adapter alone. With `export.push_to_hub` the merged
model is uploaded with the token in HF_TOKEN, which is passed to the hub client only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ftkit.core import rundir, timing
from ftkit.core.io import atomic_dir
from ftkit.core.rows import messages, with_lengths
from ftkit.models.generation import continuation_prompt, generate
from ftkit.models.loader import DTYPES, dtype_name, load


@timing.timed("saving")
def save(cfg, run_dir: str | Path) -> dict:
    """Write the tuned model `export.model` to `<run_dir>/export/` (merged and/or adapter) and push it when the recipe
    says so; returns the figures the notebook records."""
    tuned = rundir.tuned_dir(run_dir, cfg.export.model)
    if tuned is None:
        where = rundir.stage_dir(run_dir, cfg.export.model)
        raise FileNotFoundError(f"export.model = {cfg.export.model!r}, but {where} holds no adapter or model: run the "
                                f"{cfg.export.model} stage first")
    figures = {"model": cfg.export.model, "base": cfg.model.id, "dtype": dtype_name(cfg.model, "generation")}
    merged = rundir.export_dir(run_dir, "merged")
    if cfg.export.merged:
        model, tokenizer = load(cfg.model, tuned=tuned, quantized=False, use="generation")
        with atomic_dir(merged) as staging:
            model.to("cpu").save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        figures["merged"] = str(merged.relative_to(run_dir))
        figures["merged_gb"] = round(sum(f.stat().st_size for f in merged.glob("*.safetensors")) / 1024 ** 3, 3)
    if cfg.export.adapter and tuned.name == "adapter":
        adapter = rundir.export_dir(run_dir, "adapter")
        with atomic_dir(adapter) as staging:
            shutil.copytree(tuned, staging, dirs_exist_ok=True)
        figures["adapter"] = str(adapter.relative_to(run_dir))
    if cfg.export.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=os.environ["HF_TOKEN"])
        api.create_repo(cfg.export.push_to_hub, private=cfg.export.private, exist_ok=True)
        api.upload_folder(repo_id=cfg.export.push_to_hub, folder_path=str(merged),
                          commit_message=f"ftkit export of {cfg.name} ({cfg.export.model})")
        figures["pushed_to"] = f"https://huggingface.co/{cfg.export.push_to_hub}"
    return figures


@timing.timed("checking")
def check(cfg, run_dir: str | Path, limit: int = 8) -> dict:
    """Load `export/merged` with plain transformers (no ftkit, no PEFT) in the run's dtype and generate for the first
    test prompts; `same_as_eval` counts outputs identical to the eval stage's predictions for the exported model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = rundir.export_dir(run_dir, "merged")
    if not merged.is_dir():
        return {"skipped": "no merged model (export.merged is false)"}
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=DTYPES[dtype_name(cfg.model, "generation")])
    tokenizer = AutoTokenizer.from_pretrained(merged)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    rows = rundir.load_split(run_dir, "test")
    cfg = with_lengths(cfg, rundir.load_split(run_dir, "train", empty_ok=True) + rows, tokenizer)  # as eval ran
    if "text" in rows[0]:
        prompts = [continuation_prompt(r["text"]) for r in rows[:min(limit, cfg.eval.n_examples_shown)]]
    else:
        prompts = [messages(r) for r in rows[:limit]]
    outputs = generate(model, tokenizer, prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens)
    figures = {"prompts": len(prompts), "dtype": str(model.dtype).removeprefix("torch.")}
    predictions = rundir.eval_records(run_dir, "predictions", cfg.export.model)
    if predictions and cfg.eval.temperature == 0:
        figures["same_as_eval"] = sum(a == p["output"] for a, p in zip(outputs, predictions[:len(prompts)]))
    figures["outputs"] = outputs[:3]
    return figures
