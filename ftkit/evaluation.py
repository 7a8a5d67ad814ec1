"""Eval stage: batched greedy generation on the held-out test split, scored by the task, per model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ftkit import data, models, tasks
from ftkit.io import write_atomic


@torch.inference_mode()
def generate(model, tokenizer, conversations: list[list[dict]], batch_size: int, max_new_tokens: int) -> list[str]:
    """Greedy chat completions, batched with left padding; prompts sorted by length to waste less padding."""
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    outputs = [""] * len(texts)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(model.device)
        generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
        new_tokens = generated[:, batch["input_ids"].shape[1]:]
        for i, text in zip(idx, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            outputs[i] = text.strip()
    return outputs


def adapter_path(run_dir: Path, name: str) -> Path | None:
    if name == "base":
        return None
    path = run_dir / name / "adapter"
    if not path.is_dir():
        raise FileNotFoundError(f"eval.models lists {name!r} but {path} is missing: run the {name} stage first "
                                f"or remove {name!r} from eval.models")
    return path


def evaluate_model(cfg, run_dir: str | Path, name: str) -> dict:
    """Generate for every test prompt with model `name` (base/sft/rl); write eval/predictions_<name>.jsonl."""
    run_dir = Path(run_dir)
    task = tasks.for_data(cfg.data)
    rows = data.load_split(run_dir, "test")
    model, tokenizer = models.load(cfg.model, adapter=adapter_path(run_dir, name))
    start = time.perf_counter()
    outputs = generate(model, tokenizer, [data.messages(r) for r in rows], cfg.eval.batch_size,
                       cfg.eval.max_new_tokens)
    seconds = time.perf_counter() - start
    scores = [task.score(o, r["answer"]) for o, r in zip(outputs, rows)]
    records = [{"prompt": r["prompt"], "reference": r["answer"], "output": o, "score": s}
               for r, o, s in zip(rows, outputs, scores)]
    write_atomic(run_dir / "eval" / f"predictions_{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    low, high = bootstrap_ci(scores, seed=cfg.seed)
    return {"accuracy": float(np.mean(scores)), "ci95": [low, high], "n": len(scores),
            "generate_seconds": round(seconds, 1)}


def bootstrap_ci(scores: list[float], samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap confidence interval of the mean score."""
    values = np.asarray(scores, dtype=float)
    means = np.random.default_rng(seed).choice(values, size=(samples, len(values))).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def load_predictions(run_dir: str | Path, name: str) -> list[dict]:
    path = Path(run_dir) / "eval" / f"predictions_{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def comparison(run_dir: str | Path, names: list[str], limit: int = 10):
    """Side-by-side outputs of every model on the first `limit` test prompts (a DataFrame)."""
    import pandas as pd

    preds = {n: load_predictions(run_dir, n)[:limit] for n in names}
    first = preds[names[0]]
    frame = pd.DataFrame({"prompt": [p["prompt"] for p in first], "reference": [p["reference"] for p in first]})
    for name in names:
        frame[name] = [("✓ " if p["score"] else "✗ ") + p["output"] for p in preds[name]]
    return frame
