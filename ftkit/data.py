"""Data stage: sources -> normalized rows -> cleaning -> held-out splits -> checks and stats.

A source is a built-in task (`data.task`), local files (`data.path`: JSONL, JSON, CSV or Parquet, globs
allowed; `data.test_path` for the source's own test split), a Hugging Face Hub dataset (`data.hub`), or several
files and hub datasets mixed by weight (`data.mix`). Every format is normalized to rows

    {"system": str (optional), "history": [messages] (optional), "prompt": str, "answer": str}

that is, the last user turn and the assistant answer the model must learn, with any earlier turns as history;
plain text (continued pre-training) becomes {"text": str}. The data stage adds "tokens" (the length as trained)
and, for a mix, "source". Splits are written as JSONL to `<run_dir>/data/`. Problems in the data raise `DataError` naming the file, the
line and the fix, before any training starts.
"""

from __future__ import annotations

import glob
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np

from ftkit import tasks
from ftkit.io import write_atomic

SPLITS = ("train", "test")
FORMATS = ("prompt_completion", "question_answer", "alpaca", "messages", "sharegpt", "preference", "text")
FIELDS = {"prompt_completion": ("prompt", "completion"), "question_answer": ("question", "answer"),
          "alpaca": ("instruction", "output"), "messages": ("messages",), "sharegpt": ("conversations",),
          "preference": ("prompt", "chosen", "rejected"), "text": ("text",)}
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}
NGRAM = 8


class DataError(ValueError):
    """Bad input data; the message names the file, the place and the fix."""


# ---------------------------------------------------------------- reading files


def expand(pattern: str) -> list[Path]:
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(f"{pattern}: no file matches; check data.path (relative paths start at the recipe's folder)")
    return files


def _text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); re-save the file as UTF-8") from None


def read_records(path: Path) -> list[tuple[str, dict]]:
    """(place, record) pairs from one file; place is 'file:line' (JSONL, CSV) or 'file item N' / 'file row N'."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        records = []
        for number, line in enumerate(_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: malformed JSON ({exc.msg} at column {exc.colno}); "
                                "fix or delete this line") from None
    elif suffix == ".json":
        try:
            loaded = json.loads(_text(path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}); a .json file must hold one list of "
                            "objects (use .jsonl for one object per line)") from None
        if isinstance(loaded, dict) and isinstance(loaded.get("data"), list):
            loaded = loaded["data"]
        if not isinstance(loaded, list):
            raise DataError(f"{path}: expected a list of objects, found a {type(loaded).__name__}")
        records = [(f"{path} item {i}", r) for i, r in enumerate(loaded)]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise DataError(f"{path}: cannot be read as Parquet ({exc})") from None
        records = [(f"{path} row {i}", r) for i, r in enumerate(table.to_pylist())]
    elif suffix in (".csv", ".tsv"):
        import pandas as pd

        try:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                                encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); re-save the file as UTF-8") from None
        except Exception as exc:
            raise DataError(f"{path}: cannot be read as {suffix[1:].upper()} ({exc})") from None
        records = [(f"{path}:{i + 2}", r) for i, r in enumerate(frame.to_dict(orient="records"))]
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet")
    for place, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{place}: expected an object with named fields, found {type(record).__name__}")
    return records


# ---------------------------------------------------------------- formats


def detect_format(columns, place: str) -> str:
    keys = set(columns)
    for name in ("messages", "sharegpt", "preference", "alpaca", "prompt_completion", "question_answer"):
        if set(FIELDS[name]) <= keys:
            return name
    if {"prompt", "answer"} <= keys:
        return "question_answer"
    if "text" in keys:
        return "text"
    raise DataError(f"{place}: cannot tell the format from the columns {sorted(keys)}; set data.format (one of "
                    f"{', '.join(FORMATS)}) or map your columns, e.g. data.columns: {{prompt: <column>, answer: <column>}}")


def _messages_to_row(messages, place: str, role_key: str, content_key: str) -> dict | None:
    """A conversation -> row; None when its turn order is invalid (dropped and counted by the caller)."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DataError(f"{place}: the conversation must be a list of objects with {role_key!r} and {content_key!r}")
    turns = []
    for i, message in enumerate(messages):
        if role_key not in message or content_key not in message:
            raise DataError(f"{place}: message {i} has keys {sorted(message)}; each message needs "
                            f"{role_key!r} and {content_key!r}")
        role = ROLES.get(str(message[role_key]).lower())
        if role is None:
            raise DataError(f"{place}: message {i} has role {message[role_key]!r}; allowed roles: "
                            f"{', '.join(ROLES)}; fix the role or set data.format")
        content = message[content_key]
        turns.append({"role": role, "content": "" if content is None else str(content)})
    system = turns.pop(0)["content"] if turns and turns[0]["role"] == "system" else None
    expected = ["user", "assistant"] * (len(turns) // 2)
    if len(turns) < 2 or len(turns) % 2 or [t["role"] for t in turns] != expected:
        return None
    row = {"prompt": turns[-2]["content"], "answer": turns[-1]["content"]}
    if system is not None:
        row["system"] = system
    if len(turns) > 2:
        row["history"] = turns[:-2]
    return row


def _answer_text(value) -> str:
    """A preference answer: a string, or a conversation (as in UltraFeedback) whose last message is the answer."""
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        return str(value[-1]["content"])
    return "" if value is None else str(value)


def normalize(record: dict, fmt: str, place: str) -> dict | None:
    """One raw record -> row (None for a conversation with invalid turn order)."""
    fields = FIELDS[fmt]
    if fmt == "question_answer" and "question" not in record and "prompt" in record:
        fields = ("prompt", "answer")  # ftkit's own rows: prompt + answer
    missing = [f for f in fields if f not in record]
    if missing:
        raise DataError(f"{place}: missing column {missing[0]!r} for format {fmt!r}; the columns are "
                        f"{sorted(record)}; map yours with data.columns: {{{missing[0]}: <column>}}")
    if fmt == "messages":
        return _messages_to_row(record["messages"], place, "role", "content")
    if fmt == "sharegpt":
        return _messages_to_row(record["conversations"], place, "from", "value")
    if fmt == "text":
        return {"text": record["text"]}
    if fmt == "preference":
        chosen, rejected = (_answer_text(record[k]) for k in ("chosen", "rejected"))
        if chosen.strip() and chosen.strip() == rejected.strip():
            raise DataError(f"{place}: chosen and rejected are the same ({chosen[:60]!r}); a preference pair needs "
                            "two different answers: fix or remove the row")
        row = {"prompt": record["prompt"], "answer": chosen, "rejected": rejected}
    elif fmt == "alpaca":
        extra = record.get("input")
        prompt = f"{record['instruction']}\n\n{extra}" if isinstance(extra, str) and extra.strip() else \
            record["instruction"]
        row = {"prompt": prompt, "answer": record["output"]}
    else:
        first, second = fields
        row = {"prompt": record[first], "answer": record[second]}
    if isinstance(record.get("system"), str) and record["system"].strip():
        row["system"] = record["system"]
    return row


def normalize_records(records: list[tuple[str, dict]], fmt: str, columns: dict[str, str],
                      drops: Counter) -> list[tuple[str, dict]]:
    """Rename mapped columns, detect the format from the first record, normalize every record to a row."""
    if not records:
        return []
    if columns:
        absent = [c for c in columns.values() if c not in records[0][1]]
        if absent:
            raise DataError(f"{records[0][0]}: data.columns names {absent[0]!r}, which is not a column here; "
                            f"the columns are {sorted(records[0][1])}")
        rename = {v: k for k, v in columns.items()}
        records = [(p, {rename.get(k, k): v for k, v in r.items()}) for p, r in records]
    source_format = detect_format(records[0][1], records[0][0]) if fmt == "auto" else fmt
    rows = []
    for place, record in records:
        row = normalize(record, source_format, place)
        if row is None:
            drops["turn_order"] += 1
            continue
        for field in ("prompt", "answer", "system", "text"):
            if field in row and not isinstance(row[field], str):
                row[field] = "" if row[field] is None else str(row[field])
        rows.append((place, row))
    return rows


def load_files(pattern: str, fmt: str, columns: dict[str, str]) -> tuple[list[tuple[str, dict]], Counter]:
    """Read and normalize every file matching `pattern`; returns ((place, row) pairs, drop counts)."""
    rows, drops = [], Counter()
    for path in expand(pattern):
        rows += normalize_records(read_records(path), fmt, columns, drops)
    return rows, drops


def read_hub(dataset_id: str, subset: str | None, split_name: str, revision: str | None) -> list[tuple[str, dict]]:
    """Records of a Hugging Face Hub dataset split, through `datasets`."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(dataset_id, subset, split=split_name, revision=revision)
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(f"hub dataset {dataset_id!r} (subset {subset!r}, split {split_name!r}) could not be loaded: "
                        f"{type(exc).__name__}: {detail}. If the Hugging Face hub cannot be reached from here, save "
                        "the data where it can (load_dataset(...).to_json('data.jsonl')), copy the file over and set "
                        "data.path to it (and data.hub to null)") from None
    return [(f"{dataset_id}[{split_name}] row {i}", dict(r)) for i, r in enumerate(dataset)]


def sources(data_cfg) -> dict[str, float]:
    """The recipe's file and hub sources with their weights: data.mix, or the one data.path / data.hub."""
    if data_cfg.mix:
        return dict(data_cfg.mix)
    return {data_cfg.path if data_cfg.path else f"hub:{data_cfg.hub}": 1.0}


def load_source(name: str, data_cfg, own_test: bool = False) -> tuple[list[tuple[str, dict]], Counter]:
    """Normalized rows of one source (a file pattern or hub:<id>); its own test split when `own_test`."""
    if name.startswith("hub:"):
        split_name = data_cfg.test_split if own_test else data_cfg.split
        records = read_hub(name.removeprefix("hub:"), data_cfg.subset, split_name, data_cfg.revision)
        drops = Counter()
        return normalize_records(records, data_cfg.format, data_cfg.columns, drops), drops
    return load_files(data_cfg.test_path if own_test else name, data_cfg.format, data_cfg.columns)


# ---------------------------------------------------------------- cleaning, mixing, splits, checks


def fields(row: dict) -> tuple[str, ...]:
    """The text fields a row must fill: its text (plain text), else prompt and answer (and rejected)."""
    if "text" in row:
        return ("text",)
    return ("prompt", "answer", "rejected") if "rejected" in row else ("prompt", "answer")


def clean(rows: list[tuple[str, dict]], drops: Counter, dedupe: bool = True) -> list[dict]:
    """Drop rows with an empty field and (optionally) exact duplicates, also across sources, counting each reason."""
    kept, seen = [], set()
    for _, row in rows:
        if not all(row[field].strip() for field in fields(row)):
            drops["empty_field"] += 1
            continue
        key = json.dumps({k: v for k, v in row.items() if k != "source"}, sort_keys=True)
        if dedupe and key in seen:
            drops["duplicate"] += 1
            continue
        seen.add(key)
        kept.append(row)
    return kept


def draw(rows: list[dict], weights: dict[str, float], max_examples: int | None, seed: int) -> tuple[list[dict], dict]:
    """Seeded sample of the rows of each source in proportion to its weight.

    The total is `max_examples`, or else the largest that keeps the proportions without repeating a row. A
    source with fewer rows than its share gives all it has (its `taken` is below `wanted`).
    """
    by_source = {name: [r for r in rows if r.get("source", name) == name] for name in weights}
    total_weight = sum(weights.values())
    shares = {name: w / total_weight for name, w in weights.items()}
    total = max_examples or int(min(len(by_source[n]) / shares[n] for n in weights))
    rng, drawn, figures = random.Random(seed), [], {}
    for name, share in shares.items():
        wanted = round(total * share)
        pool = by_source[name]
        taken = pool if wanted >= len(pool) else rng.sample(pool, wanted)
        drawn += taken
        figures[name] = {"weight": weights[name], "available": len(pool), "wanted": wanted, "taken": len(taken)}
    return drawn, figures


def messages(row: dict) -> list[dict]:
    """The chat messages a model sees for a row: system prompt, earlier turns, then the user prompt."""
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return system + list(row.get("history", [])) + [{"role": "user", "content": row["prompt"]}]


def trained_text(row: dict, tokenizer) -> str:
    """A row as the trainer sees it: chat template over its messages and answer; plain text with EOS appended."""
    if "text" in row:
        return row["text"] + tokenizer.eos_token
    return tokenizer.apply_chat_template(messages(row) + [{"role": "assistant", "content": row["answer"]}],
                                         tokenize=False)


def token_lengths(rows: list[dict], tokenizer) -> list[int]:
    """Tokens of each row as trained. Measured once, in one batch, and kept on the row as "tokens"."""
    todo = [r for r in rows if "tokens" not in r]
    if todo:
        ids = tokenizer([trained_text(r, tokenizer) for r in todo], add_special_tokens=False)["input_ids"]
        for row, row_ids in zip(todo, ids):
            row["tokens"] = len(row_ids)
    return [r["tokens"] for r in rows]


def trained_tokens(row: dict, tokenizer) -> tuple[list[str], list[str]]:
    """(prompt tokens, answer tokens) of a row as SFT sees it: the loss counts only the answer tokens.

    The answer is what the chat template adds after the generation prompt, so it ends with the template's
    end-of-turn token; plain text is trained whole. Raises DataError when nothing would be trained.
    """
    if "text" in row:
        return [], tokenizer.convert_ids_to_tokens(tokenizer(trained_text(row, tokenizer),
                                                             add_special_tokens=False)["input_ids"])
    prompt = tokenizer.apply_chat_template(messages(row), tokenize=False, add_generation_prompt=True)
    full = trained_text(row, tokenizer)
    if not full.startswith(prompt) or len(full) == len(prompt):
        raise DataError(f"the chat template of {tokenizer.name_or_path!r} does not put the answer after the "
                        f"generation prompt for {row['prompt'][:60]!r}: every label would be masked; use a model "
                        "whose template renders the assistant turn last")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    return tokenizer.convert_ids_to_tokens(ids), tokenizer.convert_ids_to_tokens(answer_ids)


def ends_with_end_of_turn(row: dict, tokenizer) -> bool:
    """Whether the trained tokens include the end-of-turn/EOS token, so the model learns to stop."""
    _, answer = trained_tokens(row, tokenizer)
    return tokenizer.eos_token in answer


def limit_length(rows: list[dict], tokenizer, max_length: int, mode: str, drops: Counter,
                 figures: Counter) -> list[dict]:
    """Examples longer than `max_length` tokens are dropped, or kept and counted for the trainer to truncate."""
    lengths = token_lengths(rows, tokenizer)
    too_long = sum(n > max_length for n in lengths)
    if not too_long:
        return rows
    if mode == "truncate":
        figures["truncated"] += too_long
        return rows
    drops["too_long"] += too_long
    return [r for r, n in zip(rows, lengths) if n <= max_length]


def _grams(text: str) -> set[tuple[str, ...]]:
    words = text.lower().split()
    if len(words) <= NGRAM:
        return {tuple(words)}
    return {tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


def context(row: dict) -> str:
    """The conversation a row asks about (earlier turns and the prompt) as one text. The system prompt is left
    out: datasets share one, and it says nothing about leaked questions. Plain text: the text."""
    if "text" in row:
        return row["text"]
    return "\n".join([m["content"] for m in row.get("history", [])] + [row["prompt"]])


def contamination(train: list[dict], test: list[dict]) -> dict:
    """Test examples whose conversation (earlier turns and prompt) also occurs in train: exactly, or sharing a
    word 8-gram (the whole text if shorter)."""
    train_texts = {context(r).strip().lower() for r in train}
    train_grams = set().union(*(_grams(context(r)) for r in train)) if train else set()
    exact = sum(context(r).strip().lower() in train_texts for r in test)
    overlap = sum(bool(_grams(context(r)) & train_grams) for r in test)
    return {"exact_matches": exact, "ngram_overlaps": overlap, "ngram": NGRAM,
            "fraction": round(overlap / len(test), 4) if test else 0.0}


def split(rows: list[dict], test_size: int, train_size: int | None, seed: int, source: str,
          validation_size: int = 0) -> dict[str, list[dict]]:
    """Seeded test split first (so it does not move with train_size), then validation, then train."""
    held_out = test_size + validation_size
    if len(rows) <= held_out:
        raise DataError(f"{source}: {len(rows)} examples after cleaning, not enough for a test split of {test_size}"
                        f"{f', a validation split of {validation_size}' if validation_size else ''} and a train split; "
                        "lower data.test_size or add data")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    splits = {"test": [rows[i] for i in order[:test_size]]}
    if validation_size:
        splits["validation"] = [rows[i] for i in order[test_size:held_out]]
    train = [rows[i] for i in order[held_out:]]
    splits["train"] = train[:train_size] if train_size else train
    return splits


def _load_clean(cfg, tokenizer, drops: Counter, counts: Counter, own_test: bool = False) -> list[dict]:
    """Every source read, normalized, tagged (for a mix), cleaned, sampled by weight and length-checked."""
    data_cfg, weights, rows = cfg.data, sources(cfg.data), []
    for name in weights if not own_test else list(weights)[:1]:
        loaded, source_drops = load_source(name, data_cfg, own_test)
        drops.update(source_drops)
        if data_cfg.mix and not own_test:
            for _, row in loaded:
                row["source"] = name
        rows += loaded
    rows = clean(rows, drops, data_cfg.dedupe)
    kinds = {"plain text" if "text" in r else "prompt/answer" for r in rows}
    if len(kinds) > 1:
        raise DataError(f"{', '.join(weights)}: the sources mix plain text with prompt/answer examples; continued "
                        "pre-training and instruction tuning are separate runs: mix sources of one kind")
    if not own_test and (data_cfg.mix or data_cfg.max_examples):
        empty = [name for name in weights if not any(r.get("source", name) == name for r in rows)]
        if empty:
            raise DataError(f"data.mix source {empty[0]!r} has no examples left after cleaning; fix it or remove it")
        rows, drawn = draw(rows, weights, data_cfg.max_examples, cfg.seed)
        if data_cfg.mix:
            counts["mix"] = drawn
    if tokenizer is not None:
        rows = limit_length(rows, tokenizer, cfg.sft.max_length, data_cfg.too_long, drops, counts)
    return rows


def build_splits(cfg, tokenizer=None) -> tuple[dict[str, list[dict]], dict]:
    """The recipe's splits, cleaned and checked, and the figures that describe them."""
    data_cfg, drops, counts = cfg.data, Counter(), Counter()
    if data_cfg.task:
        source = f"task {data_cfg.task}"
        splits = tasks.get(data_cfg.task).splits(data_cfg.train_size or 1000, data_cfg.test_size, cfg.seed)
        if data_cfg.validation_size:
            splits = {**split(splits["train"], 0, None, cfg.seed, source, data_cfg.validation_size),
                      "test": splits["test"]}
    else:
        source = ", ".join(n.removeprefix("hub:") for n in sources(data_cfg))
        train = _load_clean(cfg, tokenizer, drops, counts)
        if data_cfg.test_path or data_cfg.test_split:
            test = _load_clean(cfg, tokenizer, drops, counts, own_test=True)
            splits = {**split(train, 0, data_cfg.train_size, cfg.seed, source, data_cfg.validation_size), "test": test}
        else:
            splits = split(train, data_cfg.test_size, data_cfg.train_size, cfg.seed, source, data_cfg.validation_size)
    check(splits, source)
    shifted = getattr(tasks.get(data_cfg.task), "shifted", None) if data_cfg.task else None
    if data_cfg.generalization_size and (shifted or data_cfg.generalization_path):
        splits["generalization"] = (shifted(data_cfg.generalization_size, cfg.seed) if shifted else
                                    clean(load_files(data_cfg.generalization_path, data_cfg.format,
                                                     data_cfg.columns)[0], Counter())[:data_cfg.generalization_size])
    if "text" in splits["train"][0] and "rl" in cfg.stages:
        raise DataError(f"{source}: plain text (continued pre-training) trains with SFT only, there is no prompt to "
                        "answer for a reward: remove rl from stages, or use prompt/answer data")
    if "rl" in cfg.stages and cfg.rl.method == "dpo" and not all("rejected" in r for r in splits["train"]):
        raise DataError(f"{source}: rl.method dpo trains on preference pairs, and these rows have no rejected answer; "
                        "use data with prompt/chosen/rejected columns (data.format: preference), or rl.method grpo")
    if tokenizer is not None:
        for rows in splits.values():
            token_lengths(rows, tokenizer)  # measured once here; stats and plots read row["tokens"]
    sample = splits["train"][:20]
    end_of_turn = all(ends_with_end_of_turn(r, tokenizer) for r in sample) if tokenizer is not None else None
    figures = contamination(splits["train"], splits["test"])
    if figures["fraction"] > data_cfg.max_contamination:
        raise DataError(f"{source}: {figures['ngram_overlaps']} of {len(splits['test'])} test prompts also occur in "
                        f"train ({figures['exact_matches']} exactly); fraction {figures['fraction']} is above "
                        f"data.max_contamination = {data_cfg.max_contamination}; deduplicate the sources or raise it")
    out = {"source": source, "format": "text" if "text" in splits["train"][0] else "prompt_answer",
           "drops": dict(drops), "truncated": counts["truncated"], "contamination": figures,
           "answers_end_with_end_of_turn": end_of_turn}
    if counts["mix"]:
        out["mix"] = counts["mix"]
    return splits, out


def check(splits: dict[str, list[dict]], source: str = "data") -> None:
    """Raise DataError naming the split, row and field of the first problems found."""
    problems = []
    for name in SPLITS:
        rows = splits.get(name) or []
        if not rows:
            problems.append(f"{source}: split {name!r} is empty after cleaning; add data or lower data.test_size")
        for i, row in enumerate(rows):
            for field in fields(row):
                value = row.get(field)
                if not isinstance(value, str) or not value.strip():
                    problems.append(f"{source}: {name} row {i}: field {field!r} is {value!r}; "
                                    f"every row needs a non-empty string {field!r}")
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError("the data has problems:\n  " + "\n  ".join(problems[:10]) + more)


def save_splits(splits: dict[str, list[dict]], run_dir: str | Path, figures: dict | None = None,
                tokenizer=None) -> dict:
    """Write the splits and `data/stats.json`; return the stats."""
    out = Path(run_dir) / "data"
    out.mkdir(parents=True, exist_ok=True)
    for optional in ("validation", "generalization"):  # a rerun without them must not leave stale ones
        (out / f"{optional}.jsonl").unlink(missing_ok=True)
    for name, rows in splits.items():
        write_atomic(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    figures = {**(figures or {}), "splits": stats(splits, tokenizer)}
    write_atomic(out / "stats.json", json.dumps(figures, indent=2))
    return figures


def load_split(run_dir: str | Path, name: str) -> list[dict]:
    path = Path(run_dir) / "data" / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the data stage first (ftkit run RECIPE --stages data)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} is empty: rerun the data stage")
    return rows


def stats(splits: dict[str, list[dict]], tokenizer=None) -> dict:
    """Per split: examples (per source, for a mix), and token-length percentiles as trained (with a tokenizer)."""
    out = {}
    for name, rows in splits.items():
        out[name] = {"examples": len(rows)}
        if any("source" in r for r in rows):
            out[name]["by_source"] = dict(Counter(r.get("source", "") for r in rows))
        if tokenizer is not None and rows:
            lengths = np.asarray(token_lengths(rows, tokenizer))
            out[name].update({f"tokens_p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 99)})
            out[name]["tokens_max"] = int(lengths.max())
    return out
