"""Data stage: the recipe's source -> rows -> cleaning -> held-out splits -> checks and stats.

A source is a built-in task (`data.task`), local files (`data.path`, with `data.test_path` for the files' own test
split), a Hugging Face Hub dataset (`data.hub`), or several files and hub datasets mixed by weight (`data.mix`); see
`ftkit.sources` for reading and normalizing them to rows (`ftkit.core.rows`). Rows with an empty field, duplicates and
examples over `sft.max_length` are dropped and counted, the test split is held out first (seeded), train/test
contamination is checked, and the splits are written to `<run_dir>/data/`. Problems in the data raise `DataError`
naming the file, the line and the fix, before any training starts.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np

from ftkit import sources
from ftkit.core import rundir, timing
from ftkit.core.io import write_atomic, write_jsonl
from ftkit.core.rows import (
    DataError,
    ends_with_end_of_turn,
    fields,
    kind,
    reply_budget,
    token_lengths,
    tools_unrendered,
    turns_that_fit,
)
from ftkit.recipe import data_problem
from ftkit.scoring import robustness, tasks
from ftkit.scoring.classes import classes
from ftkit.sources.checks import (
    class_counts,
    conflicting_answers,
    dropped_long,
    shown_split,
    small_train,
    unnamed_classes,
)
from ftkit.sources.leakage import contamination, contamination_error, group_keys, without_test_groups

SPLITS = ("train", "test")
DROP_REASONS = {
    "empty_field": "an empty prompt, answer or text (a class label -1 too: datasets' 'no label', as in GLUE's "
                   "test splits; take the test examples from a labelled split)",
    "duplicate": "the same example again (data.dedupe)",
    "turn_order": "a conversation that is not user and assistant turns in turn, ending with the assistant",
    "ends_with_user": "a conversation ending with the user's turn: a prompt without an answer (to use such "
                      "conversations as RL prompts: data.format: prompts, data.columns: {prompt: <its column>})",
    "identical_pair": "a preference pair whose chosen and rejected answers are the same",
    "unshared_prompt": "chosen and rejected conversations (without a prompt column) that differ before their last turn",
    "too_long": "over sft.max_length tokens (data.too_long: truncate keeps them)",
    "grouped_with_test": "a train example in a data.split_by group that the test split holds",
}


def dropped(drops: Counter) -> str:
    """What cleaning dropped, by reason, as a sentence for an error ("" when nothing was).

    >>> dropped(Counter({"turn_order": 371}))
    'cleaning dropped 371: 371 turn_order (a conversation that is not user and assistant turns in turn, ending with the assistant)'
    """
    if not sum(drops.values()):
        return ""
    parts = [f"{n} {reason} ({DROP_REASONS.get(reason, reason)})" for reason, n in drops.most_common() if n]
    return f"cleaning dropped {sum(drops.values())}: " + ", ".join(parts)


# ---------------------------------------------------------------- cleaning, mixing, splits, checks


def clean(rows: list[tuple[str, dict]], drops: Counter, dedupe: bool = True) -> list[dict]:
    """Drop rows with an empty field and (optionally) exact duplicates, also across sources, counting each reason."""
    kept, seen = [], set()
    for _, row in rows:
        if not all(row[field].strip() for field in fields(row)):
            drops["empty_field"] += 1
            continue
        key = json.dumps({k: v for k, v in row.items() if k not in ("source", "group")}, sort_keys=True)
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


def limit_length(rows: list[dict], tokenizer, max_length: int, mode: str, drops: Counter,
                 figures: Counter) -> list[dict]:
    """Examples longer than `max_length` tokens are dropped; with data.too_long: truncate a conversation with earlier
    turns is cut to the whole turns that fit (`rows.turns_that_fit`: never half an answer; dropped when its first
    answer does not fit), and a single exchange or plain text is kept and counted for the trainer to cut."""
    lengths = token_lengths(rows, tokenizer)
    figures["length_checked"] += len(rows)
    figures["longest_tokens"] = max([figures["longest_tokens"], *lengths])
    if not any(n > max_length for n in lengths):
        return rows
    kept = []
    for row, n in zip(rows, lengths):
        if n <= max_length:
            kept.append(row)
        elif mode == "truncate" and not _turns(row):
            figures["truncated"] += 1
            kept.append(row)
        elif mode == "truncate" and (cut := turns_that_fit(row, tokenizer, max_length)) is not None:
            figures["cut_to_whole_turns"] += 1
            token_lengths([cut], tokenizer)
            kept.append(cut)
        else:
            drops["too_long"] += 1
    return kept


def _turns(row: dict) -> bool:
    """Whether a row is a conversation with earlier answers that could be cut at a whole turn: not a preference pair
    or a rated answer, whose pair or rating belongs to the last answer."""
    return "rejected" not in row and "label" not in row and any(m["role"] == "assistant"
                                                                 for m in row.get("history", []))


def split(rows: list[dict], test_size: int, train_size: int | None, seed: int, source: str,
          validation_size: int = 0, drops: Counter | None = None, split_by: str | None = None) -> dict[str, list[dict]]:
    """Seeded test split first (so it does not move with train_size), then validation, then train. With
    `split_by`, whole groups are drawn (seeded), so a held-out split may exceed its size by part of a group.
    test_size "all" (a recipe that only evaluates): every row is test, in the sources' order, and train is empty."""
    if test_size == "all":
        return {"test": list(rows), "train": []}
    held_out = test_size + validation_size
    if len(rows) <= held_out:
        why = dropped(drops or Counter())
        raise DataError(f"{source}: {len(rows)} examples after cleaning, not enough for a test split of {test_size}"
                        f"{f', a validation split of {validation_size}' if validation_size else ''} and a train split"
                        f"{f' ({why})' if why else ''}; lower data.test_size or add data")
    keys = group_keys(rows, split_by)
    members: dict = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    order = list(members)
    random.Random(seed).shuffle(order)
    splits = {"test": [], "validation": [], "train": []}
    for key in order:
        name = ("test" if len(splits["test"]) < test_size else
                "validation" if len(splits["validation"]) < validation_size else "train")
        splits[name] += [rows[i] for i in members[key]]
    if not splits["train"]:
        raise DataError(f"{source}: data.split_by {split_by!r} leaves no group for train after the held-out splits "
                        f"({len(members)} groups of {len(rows)} examples); lower data.test_size or add data")
    if not validation_size:
        del splits["validation"]
    if train_size:
        splits["train"] = splits["train"][:train_size]
    return splits


def augment(train: list[dict], shares: dict[str, float], seed: int, task=None) -> tuple[list[dict], dict]:
    """Train plus perturbed copies (`data.augment`: perturbation -> share of the train examples, drawn seeded per
    perturbation), each marked with its "augmented" perturbation; the counts added."""
    rows, added = list(train), {}
    for name, share in shares.items():
        chosen = random.Random(f"{seed}-augment-{name}").sample(train, round(share * len(train)))
        copies = robustness.perturb(chosen, name, f"augment-{seed}", task)
        rows += [{**copy, "augmented": name} for copy in copies]
        added[name] = len(copies)
    return rows, added


def with_system(rows: list, system: str | None) -> list:
    """Rows (or (place, row) pairs) with `data.system` as their system prompt, when the recipe sets one; plain text
    has none."""
    if system:
        for row in rows:
            row = row[1] if isinstance(row, tuple) else row
            if "text" not in row:
                row["system"] = system
    return rows


def _load_clean(cfg, tokenizer, drops: Counter, counts: Counter, own_test: bool = False) -> list[dict]:
    """Every source read, normalized, tagged (for a mix), cleaned, sampled by weight and length-checked."""
    data_cfg, weights, rows = cfg.data, sources.sources(cfg.data), []
    for name in weights if not own_test else list(weights)[:1]:
        loaded, source_drops = sources.load_source(name, data_cfg, own_test)
        drops.update(source_drops)
        if data_cfg.mix and not own_test:
            for _, row in loaded:
                row["source"] = name
        rows += loaded
    rows = clean(with_system(rows, data_cfg.system), drops, data_cfg.dedupe)
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
        rows = limit_length(rows, tokenizer, fitted_length(cfg, rows, tokenizer, counts), data_cfg.too_long, drops,
                            counts)
    return rows


def fitted_length(cfg, rows: list[dict], tokenizer, counts: Counter) -> int:
    """sft.max_length, with `auto` fitted to these rows (`preflight.fit_length`) the first time and set on the
    (copied) recipe for the rest of the stage; the fit is kept in counts for the figures."""
    if cfg.sft.max_length == "auto":
        from ftkit.training import preflight

        counts["max_length"] = preflight.fit_length(cfg, token_lengths(rows, tokenizer))
        cfg.sft.max_length = counts["max_length"]["chosen"]
    return cfg.sft.max_length


def _held_out(cfg, tokenizer, drops: Counter, counts: Counter) -> tuple[dict[str, list[dict]], str]:
    """The train, test (and validation) splits of the recipe's source, and the source's name."""
    data_cfg = cfg.data
    if data_cfg.task:
        source = f"task {data_cfg.task}"
        task = tasks.get(data_cfg.task)
        splits = task.splits(data_cfg.train_size or 1000, data_cfg.test_size, cfg.seed)
        if data_cfg.teacher_errors:
            splits["train"], counts["teacher_errors"] = task.careless(splits["train"], data_cfg.teacher_errors,
                                                                      cfg.seed)
        splits = {name: with_system(rows, data_cfg.system) for name, rows in splits.items()}
        if data_cfg.validation_size:
            splits = {**split(splits["train"], 0, None, cfg.seed, source, data_cfg.validation_size),
                      "test": splits["test"]}
        return splits, source
    source = ", ".join(n.removeprefix("hub:") for n in sources.sources(data_cfg))
    train = _load_clean(cfg, tokenizer, drops, counts)
    if data_cfg.test_path or data_cfg.test_split:
        test = _load_clean(cfg, tokenizer, drops, counts, own_test=True)
        train = without_test_groups(train, test, data_cfg.split_by, drops)
        held_out = split(train, 0, data_cfg.train_size, cfg.seed, source, data_cfg.validation_size, drops,
                         data_cfg.split_by)
        return {**held_out, "test": test}, source
    return split(train, data_cfg.test_size, data_cfg.train_size, cfg.seed, source, data_cfg.validation_size, drops,
                 data_cfg.split_by), source


def _generalization(cfg) -> list[dict] | None:
    """The shifted test set: the task's own, or the rows of data.generalization_path (None when there is none)."""
    data_cfg = cfg.data
    shifted = getattr(tasks.get(data_cfg.task), "shifted", None) if data_cfg.task else None
    if not data_cfg.generalization_size or not (shifted or data_cfg.generalization_path):
        return None
    if shifted:
        return with_system(shifted(data_cfg.generalization_size, cfg.seed), data_cfg.system)
    rows, _ = sources.load_files(data_cfg.generalization_path, data_cfg.format, data_cfg.columns,
                                 label_names=data_cfg.label_names)
    return clean(with_system(rows, data_cfg.system), Counter())[:data_cfg.generalization_size]


@timing.timed("preparing data")
def build_splits(cfg, tokenizer=None) -> tuple[dict[str, list[dict]], dict]:
    """The recipe's splits, cleaned and checked, and the figures that describe them (with `sft.max_length: auto`,
    the length fitted to the data: the figures' max_length, which the stages after data read)."""
    cfg, drops, counts = cfg.model_copy(deep=True), Counter(), Counter()  # auto fitted afresh on every call
    splits, source = _held_out(cfg, tokenizer, drops, counts)
    if tokenizer is not None and cfg.sft.max_length == "auto":  # a task's examples, made to measure: none dropped
        fitted_length(cfg, [r for rows in splits.values() for r in rows], tokenizer, counts)
    evaluate_only = cfg.data.test_size == "all"
    check(splits, source, drops, evaluate_only)
    overlap = contamination(splits["train"], splits["test"], exact_only=bool(cfg.data.task))
    if overlap["fraction"] > cfg.data.max_contamination:
        raise contamination_error(source, overlap, len(splits["test"]), cfg.data.max_contamination)
    added = {}
    if cfg.data.augment:
        task = tasks.get(cfg.data.task) if cfg.data.task else None
        splits["train"], added = augment(splits["train"], cfg.data.augment, cfg.seed, task)
        if tokenizer is not None:  # a reworded prompt is longer
            splits["train"] = limit_length(splits["train"], tokenizer, cfg.sft.max_length, cfg.data.too_long, drops,
                                           counts)
    shifted = _generalization(cfg)
    if shifted is not None:
        splits["generalization"] = shifted
    _, examples = shown_split(splits)
    problem = data_problem(cfg.stages, cfg.rl.method, kind(examples), list(cfg.rl.rewards), cfg.eval.metrics)
    if problem:
        raise DataError(f"{source}: {problem}")
    if tokenizer is not None:
        for rows in splits.values():
            token_lengths(rows, tokenizer)  # measured once here; stats and plots read row["tokens"]
    trained = _as_trained(splits, examples, tokenizer, source)
    figures = {"source": source, "format": trained.pop("format"), "chat_template": trained.pop("chat_template"),
               "drops": dict(drops), "truncated": counts["truncated"],
               **({"cut_to_whole_turns": counts["cut_to_whole_turns"]} if counts["cut_to_whole_turns"] else {}),
               **({"max_length": counts["max_length"]} if "max_length" in counts else {}),
               "contamination": overlap, **trained,
               **_described(cfg, splits, examples, counts, added)}
    warnings = (([] if evaluate_only else small_train(splits, dict(drops)))
                + dropped_long(drops, counts, cfg.sft.max_length)
                + (unnamed_classes(splits["test"], figures["classes"]["names"]) if "classes" in figures else [])
                + conflicting_answers([r for rows in splits.values() for r in rows]))
    if warnings:
        figures["warnings"] = warnings
    return splits, figures


def _as_trained(splits: dict[str, list[dict]], examples: list[dict], tokenizer, source: str) -> dict:
    """How the model will see the examples: their format, the chat template, whether the answers end with the
    end-of-turn token (the first 20), and the reply lengths that eval and RL take for `auto` lengths."""
    trains = kind(examples)
    out = {"format": trains if trains in ("text", "prompts") else "prompt_answer", "chat_template": None}
    answered = "answer" in examples[0] or "text" in examples[0]
    out["answers_end_with_end_of_turn"] = (all(ends_with_end_of_turn(r, tokenizer) for r in examples[:20])
                                           if tokenizer is not None and answered else None)
    if tokenizer is not None and "text" not in examples[0]:
        from ftkit.models.loader import DEFAULT_CHAT_TEMPLATE

        refused = tools_unrendered([r for rows in splits.values() for r in rows], tokenizer)
        if refused:
            raise DataError(f"{source}: {refused}")

        out["chat_template"] = "ftkit's default" if tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE else "the model's own"
        out["reply_tokens"] = reply_budget(splits["train"] + splits["test"], tokenizer)
    return out


def _described(cfg, splits: dict[str, list[dict]], examples: list[dict], counts: Counter, added: dict) -> dict:
    """The figures a run has only where they apply: test_size all, a mix's shares, a task's teacher errors, the
    augmentation, the grouping, rows with several acceptable answers, a classification's classes."""
    out = {}
    if cfg.data.test_size == "all":
        out["evaluate_only"] = True
    if counts["mix"]:
        out["mix"] = counts["mix"]
    if counts["teacher_errors"]:
        out["teacher_errors"] = counts["teacher_errors"]
    if added:
        out["augmented"] = added
    if cfg.data.split_by:
        out["split_by"] = cfg.data.split_by
    several = {name: sum(bool(r.get("accepted")) for r in rows) for name, rows in splits.items()}
    if any(several.values()):  # a reply giving any of them counts as right, in eval and the rewards
        out["several_acceptable_answers"] = several
    names = classes(examples, splits["test"])
    if names:  # a classification: eval adds a confusion matrix and macro-F1, the report the commonest-class baseline
        out["classes"] = class_counts(splits, names)
    return out


def check(splits: dict[str, list[dict]], source: str = "data", drops: Counter | None = None,
          evaluate_only: bool = False) -> None:
    """Raise DataError naming the split, row and field of the first problems found (`evaluate_only`: test_size all,
    where train is empty by design)."""
    problems = []
    for name in SPLITS:
        rows = splits.get(name) or []
        if not rows and not (evaluate_only and name == "train"):
            why = dropped(drops or Counter())
            problems.append(f"{source}: split {name!r} is empty after cleaning{f' ({why})' if why else ''}; "
                            "add data or lower data.test_size")
        for i, row in enumerate(rows):
            for field in fields(row):
                value = row.get(field)
                if not isinstance(value, str) or not value.strip():
                    problems.append(f"{source}: {name} row {i}: field {field!r} is {value!r}; "
                                    f"every row needs a non-empty string {field!r}")
    if problems:
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataError("the data has problems:\n  " + "\n  ".join(problems[:10]) + more)


@timing.timed("saving")
def save_splits(splits: dict[str, list[dict]], run_dir: str | Path, figures: dict | None = None,
                tokenizer=None) -> dict:
    """Write the splits and `data/stats.json`; return the stats."""
    for optional in ("validation", "generalization"):  # a rerun without them must not leave stale ones
        rundir.split_path(run_dir, optional).unlink(missing_ok=True)
    for name, rows in splits.items():
        write_jsonl(rundir.split_path(run_dir, name), rows)
    figures = {**(figures or {}), "splits": stats(splits, tokenizer)}
    write_atomic(rundir.stats_path(run_dir), json.dumps(figures, indent=2))
    return figures


@timing.timed("preparing data")
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
