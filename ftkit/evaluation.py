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


def tuned_path(run_dir: Path, name: str) -> Path | None:
    """The saved adapter or model of a tuned stage (None for the base model)."""
    if name == "base":
        return None
    path = models.tuned_dir(run_dir, name)
    if path is None:
        raise FileNotFoundError(f"eval.models lists {name!r} but {run_dir / name} holds no adapter or model: run the "
                                f"{name} stage first or remove {name!r} from eval.models")
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


def continuation_prompt(text: str) -> str:
    """The first half of a text's words (at most 64), which a model continues in the plain-text examples."""
    words = text.split()
    return " ".join(words[:max(1, min(len(words) // 2, 64))])


def evaluate_text(cfg, model, tokenizer, rows: list[dict], run_dir: Path, name: str) -> dict:
    """Perplexity on the test texts (95% bootstrap CI over texts), and greedy continuations of the first
    `eval.n_examples_shown` texts from their first half."""
    start = time.perf_counter()
    losses = token_losses(model, tokenizer, [r["text"] for r in rows], cfg.eval.batch_size, cfg.sft.max_length)
    prompts = [continuation_prompt(r["text"]) for r in rows[:cfg.eval.n_examples_shown]]
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
    model, tokenizer = models.load(cfg.model, tuned=tuned_path(run_dir, name))
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


def check_export(cfg, run_dir: str | Path, limit: int = 8) -> dict:
    """Load `<run_dir>/export/merged` with plain transformers (no ftkit, no PEFT) and generate for the first test
    prompts; the outputs must be the eval stage's predictions for the exported model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = Path(run_dir)
    path = run_dir / "export" / "merged"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=models.DTYPES[models.dtype_name(cfg.model)])
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    rows = data.load_split(run_dir, "test")
    if "text" in rows[0]:
        prompts = [continuation_prompt(r["text"]) for r in rows[:min(limit, cfg.eval.n_examples_shown)]]
    else:
        prompts = [data.messages(r) for r in rows[:limit]]
    outputs = generate(model, tokenizer, prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens)
    figures = {"prompts": len(prompts)}
    predictions = run_dir / "eval" / f"predictions_{cfg.export.model}.jsonl"
    if predictions.is_file():
        expected = [p["output"] for p in load_predictions(run_dir, cfg.export.model)[:len(prompts)]]
        figures["same_as_eval"] = sum(a == b for a, b in zip(outputs, expected))
    figures["outputs"] = outputs[:3]
    return figures


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

