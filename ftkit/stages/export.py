"""Export stage: the tuned model as files a colleague loads with plain transformers, checked the way they would.

`export/merged/` is the base with the adapter merged in (safetensors, tokenizer and chat template), in the dtype eval
generated in (`model.dtype` resolved for generation) and with the weights the eval stage measured: in bfloat16 or
float16, the float32 merge rounded once (`models.merge_in_float32`). `export/adapter/` is the adapter alone.
`export/gguf/` holds one GGUF file per type in `export.gguf`, each from the float32 merge (rounded once) with an Ollama
Modelfile beside it; `check` loads each back with transformers and compares it with the float32 merge. With
`export.push_to_hub` the merged model is uploaded with the token in HF_TOKEN, which is passed to the hub client only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ftkit.core import rundir, timing
from ftkit.core.io import atomic_dir
from ftkit.core.rows import acceptable, messages, shared_system, with_lengths
from ftkit.models import gguf_export
from ftkit.models.generation import continuation_prompt, cut_reply, generate
from ftkit.models.loader import DTYPES, dtype_name, load, load_tokenizer
from ftkit.scoring.grading import metric_names, score


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
    if cfg.export.gguf:
        figures["gguf"] = write_gguf(cfg, run_dir, tuned)
    if cfg.export.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=os.environ["HF_TOKEN"])
        api.create_repo(cfg.export.push_to_hub, private=cfg.export.private, exist_ok=True)
        api.upload_folder(repo_id=cfg.export.push_to_hub, folder_path=str(merged),
                          commit_message=f"ftkit export of {cfg.name} ({cfg.export.model})")
        figures["pushed_to"] = f"https://huggingface.co/{cfg.export.push_to_hub}"
    return figures


def _float32(cfg):
    """The recipe's model section in float32: the merge that GGUF files are written from and checked against."""
    return cfg.model.model_copy(update={"dtype": "float32"})


def _prompts(cfg, run_dir, tokenizer, limit: int) -> tuple:
    """(the eval settings as eval ran them, the first `limit` test rows, their prompts)."""
    rows = rundir.load_split(run_dir, "test")
    cfg = with_lengths(cfg, rundir.load_split(run_dir, "train", empty_ok=True) + rows, tokenizer)  # as eval ran
    rows = rows[:limit]
    prompts = [continuation_prompt(r["text"]) for r in rows] if "text" in rows[0] else [messages(r) for r in rows]
    return cfg, rows, prompts


def _file_names(cfg, kind: str) -> tuple[str, str]:
    """(the GGUF file's name, its Modelfile's) in export/gguf/: <recipe name>-<model>-<type>.gguf and .Modelfile."""
    stem = f"{cfg.name}-{cfg.export.model}-{kind}"
    return f"{stem}.gguf", f"{stem}.Modelfile"


def write_gguf(cfg, run_dir: str | Path, tuned: Path) -> dict:
    """export/gguf/: a GGUF file per type of export.gguf and its Ollama Modelfile (`<name>-<model>-<type>.gguf`,
    `....Modelfile`); returns each file's path, size and what went in."""
    model, tokenizer = load(_float32(cfg), tuned=tuned, quantized=False, use="generation")
    settings, rows, _ = _prompts(cfg, run_dir, tokenizer, 10 ** 9)
    folder, written = rundir.export_dir(run_dir, "gguf"), {}
    with atomic_dir(folder) as staging:
        for kind in cfg.export.gguf:
            name, recipe = _file_names(cfg, kind)
            figures = gguf_export.write(model, tokenizer, staging / name, kind, f"{cfg.name} ({cfg.export.model})")
            (staging / recipe).write_text(gguf_export.modelfile(
                name, tokenizer, shared_system(rows) if "text" not in rows[0] else None, settings.eval.temperature,
                settings.eval.max_new_tokens, list(settings.eval.stop)))
            written[kind] = {"file": str(folder.relative_to(run_dir) / name),
                             "modelfile": str(folder.relative_to(run_dir) / recipe),
                             "mb": round(figures["bytes"] / 2 ** 20, 1), **figures}
    return written


@timing.timed("checking")
def check_gguf(cfg, run_dir: str | Path, limit: int = 200) -> dict:
    """Each GGUF file loaded back with transformers (its own tokenizer, weights dequantized to float32) against the
    float32 merge it was written from, on the first `limit` test prompts: the same token ids for the prompts, the
    chat template kept, the largest logit difference and how often the top token agrees over the prompts'
    positions, the same greedy replies, and the held-out score of both."""
    from transformers import AutoModelForCausalLM

    folder = rundir.export_dir(run_dir, "gguf")
    if not cfg.export.gguf or not folder.is_dir():
        return {}
    reference, tokenizer = load(_float32(cfg), tuned=rundir.tuned_dir(run_dir, cfg.export.model), quantized=False,
                                use="generation")
    cfg, rows, prompts = _prompts(cfg, run_dir, tokenizer, limit)
    replies = _greedy(cfg, reference, tokenizer, prompts)
    out = {"prompts": len(prompts), "merged": _scored(cfg, rows, replies)}
    texts = [p if isinstance(p, str) else tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
             for p in prompts]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for kind in cfg.export.gguf:
        name = _file_names(cfg, kind)[0]
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        own = load_tokenizer(str(folder), gguf_file=name)
        theirs = own(texts, add_special_tokens=False)["input_ids"]
        gguf_replies = _greedy(cfg, model, own, prompts)
        out[kind] = {"tokenizer_same": sum(a == b for a, b in zip(ids, theirs)),
                     "chat_template_same": own.chat_template == tokenizer.chat_template,
                     **gguf_export.logit_agreement(reference, model, ids[:8]),
                     "greedy_same": sum(a == b for a, b in zip(replies, gguf_replies)),
                     **_scored(cfg, rows, gguf_replies)}
        del model
        ran = gguf_export.llama_cpp_replies(folder / name, texts, ids, cfg.eval.max_new_tokens)
        if ran is not None:
            answers = [cut_reply(tokenizer.decode(r, skip_special_tokens=True), cfg.eval.stop) for r in ran["replies"]]
            out[kind]["llama_cpp"] = {"tokenizer_same": ran["tokenized_alike"],
                                      "greedy_same": sum(a == b for a, b in zip(replies, answers)),
                                      **_scored(cfg, rows, answers)}
    return out


def _greedy(cfg, model, tokenizer, prompts) -> list[str]:
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    return generate(model, tokenizer, prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens, stop=cfg.eval.stop)


def _scored(cfg, rows, replies) -> dict:
    """{the headline metric: its value} for `replies` to `rows`, where the rows have references."""
    if "text" in rows[0] or not any("answer" in r or "answers" in r for r in rows):
        return {}
    primary = metric_names(cfg)[0]
    overall = score(cfg, replies, [acceptable(r) for r in rows], rows)[1]
    return {primary: overall[primary]} if primary in overall else {}


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
