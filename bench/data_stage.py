"""Data stage on 10,000 chat examples: ftkit's whole stage vs the bare cost of reading and tokenizing them.

    python bench/data_stage.py [--examples 10000] [--model DIR_OR_ID]

Writes a JSONL of multi-turn chat examples (with some duplicates and empty answers), then times
(a) the baseline: read the file with `json`, apply the chat template and tokenize every example once, and
(b) `ftkit run --stages data` on a recipe that reads the file (a papermill kernel, cleaning, splits,
contamination check, token-length stats, report). Prints both times and their ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ftkit.models.loader import load_tokenizer, resolve
from ftkit.recipe import DEFAULT_MODEL

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qui", "do", "fe", "gu", "ha", "jo"]


def sentence(rng: random.Random, words: int) -> str:
    return " ".join("".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(words))


def example(rng: random.Random) -> dict:
    """A random multi-turn conversation: 1-3 user/assistant exchanges after a system prompt."""
    turns = [{"role": "system", "content": "You are a concise assistant."}]
    for _ in range(rng.randint(1, 3)):
        turns.append({"role": "user", "content": sentence(rng, rng.randint(8, 30)) + "?"})
        turns.append({"role": "assistant", "content": sentence(rng, rng.randint(5, 40)) + "."})
    return {"messages": turns}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = [example(rng) for _ in range(args.examples)]
        rows[10:60] = rows[:50]  # duplicates
        (tmp / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

        start = time.perf_counter()
        tokenizer = load_tokenizer(resolve(args.model))
        loaded = [json.loads(line) for line in (tmp / "chat.jsonl").read_text().splitlines()]
        texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in loaded]
        tokenizer(texts, add_special_tokens=False)
        baseline = time.perf_counter() - start

        recipe = tmp / "chat.yaml"
        recipe.write_text(yaml.safe_dump({"name": "chat-bench", "model": {"id": args.model},
                                          "data": {"path": "chat.jsonl", "test_size": 500},
                                          "sft": {"max_length": 512}}))
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "ftkit", "run", str(recipe), "--stages", "data",
                               "--run-dir", str(tmp / "run")], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the data stage failed:\n{done.stdout}{done.stderr}")
        stage = time.perf_counter() - start
        stats = json.loads((tmp / "run" / "data" / "stats.json").read_text())
    print(json.dumps({"examples": args.examples, "baseline_read_template_tokenize_s": round(baseline, 1),
                      "ftkit_data_stage_s": round(stage, 1), "ratio": round(stage / baseline, 2),
                      "drops": stats["drops"], "splits": stats["splits"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
