"""Eval stage: batched greedy generation on the held-out test split, scored by the task, per model.

Plain-text data (continued pre-training) is measured by perplexity instead, with greedy continuations of the
first few test texts as examples.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ftkit import data, models, tasks
from ftkit.io import write_atomic


@torch.inference_mode()
def generate(model, tokenizer, conversations: list, batch_size: int, max_new_tokens: int) -> list[str]:
    """Greedy chat completions (plain-text continuations for string prompts), batched with left padding;
    prompts sorted by length to waste less padding."""
    tokenizer.padding_side = "left"
    texts = [c if isinstance(c, str) else tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
             for c in conversations]
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


@torch.inference_mode()
def token_losses(model, tokenizer, texts: list[str], batch_size: int, max_length: int) -> np.ndarray:
    """(summed negative log-likelihood, predicted tokens) of each text with EOS appended, as SFT trains on it."""
    tokenizer.padding_side = "right"
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer([t + tokenizer.eos_token for t in texts[start:start + batch_size]], return_tensors="pt",
                          padding=True, truncation=True, max_length=max_length, add_special_tokens=False)
        batch = batch.to(model.device)
        logits = model(**batch).logits[:, :-1].float()
        targets, mask = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        out += zip((nll * mask).sum(1).tolist(), mask.sum(1).tolist())
    return np.asarray(out, dtype=float)


def evaluate_text(cfg, model, tokenizer, rows: list[dict], run_dir: Path, name: str) -> dict:
    """Perplexity on the test texts (95% bootstrap CI over texts), and greedy continuations of the first
    `eval.n_examples_shown` texts from their first half."""
    start = time.perf_counter()
    losses = token_losses(model, tokenizer, [r["text"] for r in rows], cfg.eval.batch_size, cfg.sft.max_length)
    halves = [r["text"].split() for r in rows[:cfg.eval.n_examples_shown]]
    prompts = [" ".join(words[:max(1, min(len(words) // 2, 64))]) for words in halves]
    outputs = generate(model, tokenizer, prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens)
    seconds = time.perf_counter() - start
    per_text = np.exp(losses[:, 0] / np.maximum(losses[:, 1], 1))
    records = [{"prompt": prompts[i] if i < len(prompts) else r["text"][:200],
                "reference": r["text"][len(prompts[i]):].strip()[:300] if i < len(prompts) else "",
                "output": outputs[i] if i < len(outputs) else "", "perplexity": round(float(p), 3)}
               for i, (r, p) in enumerate(zip(rows, per_text))]
    write_atomic(run_dir / "eval" / f"predictions_{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    rng = np.random.default_rng(cfg.seed)
    idx = rng.integers(0, len(losses), size=(1000, len(losses)))
    boot = np.exp(losses[idx, 0].sum(1) / losses[idx, 1].sum(1))
    return {"metric": "perplexity", "perplexity": float(np.exp(losses[:, 0].sum() / losses[:, 1].sum())),
            "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))], "n": len(rows),
            "tokens": int(losses[:, 1].sum()), "generate_seconds": round(seconds, 1)}


def evaluate_model(cfg, run_dir: str | Path, name: str) -> dict:
    """Generate for every test prompt with model `name` (base/sft/rl); write eval/predictions_<name>.jsonl."""
    run_dir = Path(run_dir)
    task = tasks.for_data(cfg.data)
    rows = data.load_split(run_dir, "test")
    model, tokenizer = models.load(cfg.model, adapter=adapter_path(run_dir, name))
    if "text" in rows[0]:
        return evaluate_text(cfg, model, tokenizer, rows, run_dir, name)
    start = time.perf_counter()
    outputs = generate(model, tokenizer, [data.messages(r) for r in rows], cfg.eval.batch_size,
                       cfg.eval.max_new_tokens)
    seconds = time.perf_counter() - start
    scores = [task.score(o, r["answer"]) for o, r in zip(outputs, rows)]
    records = [{"prompt": r["prompt"], "reference": r["answer"], "output": o, "score": s}
               for r, o, s in zip(rows, outputs, scores)]
    write_atomic(run_dir / "eval" / f"predictions_{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    low, high = bootstrap_ci(scores, seed=cfg.seed)
    return {"metric": "accuracy", "accuracy": float(np.mean(scores)), "ci95": [low, high], "n": len(scores),
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

    from ftkit.report import shown

    preds = {n: load_predictions(run_dir, n)[:limit] for n in names}
    first = preds[names[0]]
    frame = pd.DataFrame({"prompt": [p["prompt"] for p in first], "reference": [p["reference"] for p in first]})
    for name in names:
        frame[name] = [shown(p) for p in preds[name]]
    return frame

