"""Data stage: task examples -> checked train/test splits on disk -> stats.

Splits are JSONL files of {"system": str (optional), "prompt": str, "answer": str} in `<run_dir>/data/`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ftkit import tasks
from ftkit.io import write_atomic

SPLITS = ("train", "test")


def build_splits(cfg) -> dict[str, list[dict]]:
    """Make the recipe's splits and check them before any training sees them."""
    task = tasks.get(cfg.data.task)
    splits = task.splits(cfg.data.train_size, cfg.data.test_size, cfg.seed)
    check(splits)
    return splits


def check(splits: dict[str, list[dict]], source: str = "data") -> None:
    """Raise ValueError naming the split, row and field of the first problems found."""
    problems = []
    for name in SPLITS:
        rows = splits.get(name) or []
        if not rows:
            problems.append(f"{source}: split {name!r} is empty; raise data.{name}_size or check the source")
        for i, row in enumerate(rows):
            for field in ("prompt", "answer"):
                value = row.get(field)
                if not isinstance(value, str) or not value.strip():
                    problems.append(f"{source}: {name} row {i}: field {field!r} is {value!r}; "
                                    f"every row needs a non-empty string {field!r}")
    train_prompts = {r["prompt"] for r in splits.get("train", []) if isinstance(r.get("prompt"), str)}
    leaked = [r["prompt"] for r in splits.get("test", []) if r.get("prompt") in train_prompts]
    if leaked:
        problems.append(f"{source}: {len(leaked)} test prompts also appear in train (first: {leaked[0]!r}); "
                        "the test set must be held out")
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError("the data has problems:\n  " + "\n  ".join(problems[:10]) + more)


def messages(row: dict) -> list[dict]:
    """The chat messages a model sees for a row: the optional system prompt, then the user prompt."""
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return system + [{"role": "user", "content": row["prompt"]}]


def save_splits(splits: dict[str, list[dict]], run_dir: str | Path) -> Path:
    out = Path(run_dir) / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        write_atomic(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_atomic(out / "stats.json", json.dumps(stats(splits), indent=2))
    return out


def load_split(run_dir: str | Path, name: str) -> list[dict]:
    path = Path(run_dir) / "data" / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the data stage first (ftkit run RECIPE --stages data)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} is empty: rerun the data stage")
    return rows


def stats(splits: dict[str, list[dict]]) -> dict:
    """Per split: examples and prompt/answer length in characters."""
    out = {}
    for name, rows in splits.items():
        frame = pd.DataFrame(rows)
        out[name] = {"examples": len(rows),
                     "prompt_chars_mean": round(float(frame["prompt"].str.len().mean()), 1),
                     "answer_chars_mean": round(float(frame["answer"].str.len().mean()), 1)}
    return out
