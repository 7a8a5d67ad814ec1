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
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ftkit import sources
from ftkit.core import rundir
from ftkit.core.io import write_atomic, write_jsonl
from ftkit.core.rows import DataError, context, ends_with_end_of_turn, fields, kind, reply_budget, token_lengths
from ftkit.recipe import data_problem
from ftkit.scoring import robustness, tasks
from ftkit.scoring.classes import class_of, classes

SPLITS = ("train", "test")
NGRAM = 8
COMMON_SHARE, COMMON_MIN = 0.1, 10  # an 8-gram in this share of the prompts (and at least this many) is a template's
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
    """Examples longer than `max_length` tokens are dropped, or kept and counted for the trainer to truncate."""
    lengths = token_lengths(rows, tokenizer)
    figures["length_checked"] += len(rows)
    figures["longest_tokens"] = max([figures["longest_tokens"], *lengths])
    too_long = sum(n > max_length for n in lengths)
    if not too_long:
        return rows
    if mode == "truncate":
        figures["truncated"] += too_long
        return rows
    drops["too_long"] += too_long
    return [r for r, n in zip(rows, lengths) if n <= max_length]


def _grams(text: str) -> list[tuple[str, ...]]:
    """The word 8-grams of a text in order (the whole text if shorter), lower-cased."""
    words = text.lower().split()
    if len(words) <= NGRAM:
        return [tuple(words)]
    return [tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1)]


def common_grams(texts: list[str]) -> dict[tuple[str, ...], int]:
    """Word 8-grams that at least a tenth of the texts (and at least 10) contain, with how many: the wording of an
    instruction or template every prompt repeats ("... degrees Celsius to Fahrenheit. Give the number only."),
    not a story told twice. The contamination check and `split_by: ngram` leave them out. A text of 8 words or
    fewer is its own gram and never common: a repeat of it is an exact duplicate.

    >>> texts = [f"Convert {c} degrees Celsius to Fahrenheit and give the number only" for c in range(20)]
    >>> common = common_grams(texts + ["a story of nine words that nobody else tells"])
    >>> sorted(common.items())[0]
    (('celsius', 'to', 'fahrenheit', 'and', 'give', 'the', 'number', 'only'), 20)
    >>> len(common), common_grams(texts[:9])
    (2, {})
    """
    counts = Counter()
    for text in texts:
        if len(text.split()) > NGRAM:
            counts.update(set(_grams(text)))
    floor = max(COMMON_MIN, COMMON_SHARE * len(texts))
    return {gram: n for gram, n in counts.items() if n >= floor}


def _own_grams(text: str, common: dict) -> list[tuple[str, ...]]:
    """The word 8-grams of a text's own wording: the words that template 8-grams (`common_grams`) cover are taken
    out first, so that a template's seven words and one of the example's do not make two examples one story. None
    where the template covers every word (a repeat of such a text is an exact duplicate).

    >>> common = {tuple("what is the iso 3166-1 alpha-3 code of".split()): 249}
    >>> _own_grams("What is the ISO 3166-1 alpha-3 code of French Polynesia?", common)
    [('french', 'polynesia?')]
    >>> _grams("What is the ISO 3166-1 alpha-3 code of French Polynesia?")[1]  # one word its own: shared by French Guiana
    ('is', 'the', 'iso', '3166-1', 'alpha-3', 'code', 'of', 'french')
    """
    if not common:
        return _grams(text)
    words = text.lower().split()
    covered = [False] * len(words)
    for i in range(len(words) - NGRAM + 1):
        if tuple(words[i:i + NGRAM]) in common:
            covered[i:i + NGRAM] = [True] * NGRAM
    own = [word for word, inside in zip(words, covered) if not inside]
    return _grams(" ".join(own)) if own else []


def _common_figures(common: dict) -> dict:
    """How many template 8-grams the check left out, and the most frequent one, for the report."""
    top = max(common.items(), key=lambda item: (item[1], item[0]))[0] if common else None
    return {"common_ngrams": len(common), "common_example": " ".join(top) if top else None}


def contamination(train: list[dict], test: list[dict], exact_only: bool = False, show: int = 5) -> dict:
    """Test examples whose conversation (earlier turns and prompt) also occurs in train: exactly, or sharing a
    word 8-gram (the whole text if shorter). `fraction` counts the n-gram overlaps, or with `exact_only` the exact
    repeats alone: a built-in task's generated problems share their template's wording by design, and the task
    guarantees that no test problem is a train problem. Wording that a tenth of all the prompts repeat (an
    instruction, a template: `common_grams`) is not counted as overlap, nor are the words it covers (`_own_grams`);
    `common_ngrams` says how many 8-grams that left out, `common_example` the most frequent. `pairs`: the first
    `show` counted ones, side by side."""
    train_texts = {context(r).strip().lower(): i for i, r in enumerate(train)}
    common = {} if exact_only else common_grams([context(r) for r in train + test])
    owner = {}
    for i, row in enumerate(train):
        for gram in _own_grams(context(row), common):
            owner.setdefault(gram, i)
    exact = overlap = 0
    pairs = []
    for row in test:
        text = context(row)
        same = train_texts.get(text.strip().lower())
        shared = next((g for g in _own_grams(text, common) if g in owner), None)
        exact += same is not None
        overlap += same is not None or shared is not None
        if len(pairs) < show and (same is not None or (shared is not None and not exact_only)):
            partner = same if same is not None else owner[shared]
            pairs.append({"test": text[:400], "train": context(train[partner])[:400],
                          "shared": "the whole prompt" if same is not None else " ".join(shared)})
    counted = exact if exact_only else overlap
    return {"exact_matches": exact, "ngram_overlaps": overlap, "ngram": NGRAM, "counted": "exact" if exact_only
            else "ngram", "fraction": round(counted / len(test), 4) if test else 0.0, **_common_figures(common),
            "pairs": pairs}


def contamination_error(source: str, figures: dict, test_size: int, limit: float) -> DataError:
    """The error for too much train/test overlap: both counts, the first pairs, and the settings that help."""
    exact, overlap, common = figures["exact_matches"], figures["ngram_overlaps"], figures.get("common_ngrams")
    template = (f"; wording that a tenth of the prompts repeat, a template's, is not counted: {common} "
                f"{'8-gram' if common == 1 else '8-grams'} such as {figures['common_example']!r}" if common else "")
    counted = (f"{exact} of {test_size} test prompts also occur in train word for word" if figures["counted"] == "exact"
               else f"{overlap} of {test_size} test prompts share a word {NGRAM}-gram with a train prompt ({exact} of "
                    f"them word for word{template})")
    shown = "".join(f"\n  test:   {p['test'][:160]!r}\n  train:  {p['train'][:160]!r}\n  shared: {p['shared']!r}"
                    for p in figures["pairs"][:3])
    return DataError(
        f"{source}: {counted}; fraction {figures['fraction']} is above data.max_contamination = {limit}. The first "
        f"pairs:{shown}\nExamples that tell one story in different words (several questions on one passage, one "
        "document in pieces) belong on one side of the split: data.split_by: ngram keeps prompts that share an "
        f"{NGRAM}-gram together, data.split_by: <column> keeps a group id together (with the data's own test split "
        "both drop the train examples grouped with a test one). Repeated prompts with different answers: remove "
        "them from the sources. If the overlap is expected, raise data.max_contamination.")


def group_keys(rows: list[dict], split_by: str | None) -> list:
    """Each row's group for the split: its own (no split_by), its "group" column value, or with "ngram" the
    connected set of rows whose prompts share a word 8-gram of their own wording (a template's words taken out:
    `_own_grams`). Raises DataError when one group would swallow most rows: no held-out split could keep it on one
    side.

    >>> rows = [{"prompt": p, "answer": "x"} for p in ("a b c d e f g h i", "z b c d e f g h i", "q")]
    >>> group_keys(rows, "ngram")
    [0, 0, 2]
    """
    if not split_by:
        return list(range(len(rows)))
    if split_by != "ngram":
        return [row["group"] for row in rows]
    parent = list(range(len(rows)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    common = common_grams([context(row) for row in rows])
    owner, link = {}, Counter()  # link: how often a gram joined two groups, for the error's example
    for i, row in enumerate(rows):
        for gram in _own_grams(context(row), common):
            j = owner.setdefault(gram, i)
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
                link[gram] += 1
    keys = [root(i) for i in range(len(rows))]
    largest = Counter(keys).most_common(1)[0][1] if rows else 0
    if len(rows) >= 10 and largest > len(rows) / 2:
        wording = " ".join(link.most_common(1)[0][0]) if link else ""
        raise DataError(f"data.split_by: ngram links {largest} of {len(rows)} examples into one group through "
                        f"shared wording such as {wording!r}, so no held-out split could keep that group on one "
                        "side: wording that many prompts repeat belongs in data.system, or a column names the "
                        "groups (data.split_by: <column>)")
    return keys


def apart(train: list[dict], test: list[dict], split_by: str | None, drops: Counter) -> list[dict]:
    """With the data's own test split: train rows that share a group with a test row are dropped and counted."""
    if not split_by:
        return train
    if split_by == "ngram":
        common = common_grams([context(row) for row in train + test])
        test_grams = {g for row in test for g in _own_grams(context(row), common)}
        kept = [r for r in train if not any(g in test_grams for g in _own_grams(context(r), common))]
    else:
        test_groups = {row["group"] for row in test}
        kept = [r for r in train if r["group"] not in test_groups]
    drops["grouped_with_test"] += len(train) - len(kept)
    return kept


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
        rows = limit_length(rows, tokenizer, cfg.sft.max_length, data_cfg.too_long, drops, counts)
    return rows


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
        train = apart(train, test, data_cfg.split_by, drops)
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


def build_splits(cfg, tokenizer=None) -> tuple[dict[str, list[dict]], dict]:
    """The recipe's splits, cleaned and checked, and the figures that describe them."""
    drops, counts = Counter(), Counter()
    splits, source = _held_out(cfg, tokenizer, drops, counts)
    evaluate_only = cfg.data.test_size == "all"
    check(splits, source, drops, evaluate_only)
    figures = contamination(splits["train"], splits["test"], exact_only=bool(cfg.data.task))
    if figures["fraction"] > cfg.data.max_contamination:
        raise contamination_error(source, figures, len(splits["test"]), cfg.data.max_contamination)
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
    _, examples = shown(splits)
    trains = kind(examples)
    problem = data_problem(cfg.stages, cfg.rl.method, trains, list(cfg.rl.rewards), cfg.eval.metrics)
    if problem:
        raise DataError(f"{source}: {problem}")
    if tokenizer is not None:
        for rows in splits.values():
            token_lengths(rows, tokenizer)  # measured once here; stats and plots read row["tokens"]
    sample = examples[:20]
    answered = "answer" in examples[0] or "text" in examples[0]
    end_of_turn = (all(ends_with_end_of_turn(r, tokenizer) for r in sample)
                   if tokenizer is not None and answered else None)
    template = None
    if tokenizer is not None and "text" not in examples[0]:
        from ftkit.models.loader import DEFAULT_CHAT_TEMPLATE

        template = "ftkit's default" if tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE else "the model's own"
    out = {"source": source, "format": trains if trains in ("text", "prompts") else "prompt_answer",
           "chat_template": template,
           "drops": dict(drops), "truncated": counts["truncated"], "contamination": figures,
           "answers_end_with_end_of_turn": end_of_turn}
    if tokenizer is not None and "text" not in examples[0]:  # what eval and RL take for `auto` lengths
        out["reply_tokens"] = reply_budget(splits["train"] + splits["test"], tokenizer)
    if evaluate_only:
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
    warnings = (([] if evaluate_only else thin_train(splits, dict(drops)))
                + dropped_long(drops, counts, cfg.sft.max_length)
                + (unnamed_classes(splits["test"], names) if names else [])
                + conflicting_answers([r for rows in splits.values() for r in rows]))
    if warnings:
        out["warnings"] = warnings
    return splits, out


def shown(splits: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    """The split that shows what the examples look like, and its name: train, or test where the recipe only
    evaluates (data.test_size: all leaves train empty).

    >>> shown({"train": [], "test": [{"prompt": "2+2?", "answer": "4"}]})
    ('test', [{'prompt': '2+2?', 'answer': '4'}])
    """
    return ("train", splits["train"]) if splits["train"] else ("test", splits["test"])


def class_counts(splits: dict[str, list[dict]], names: list[str]) -> dict:
    """For a classification: the examples of each class per split (not the shifted set, whose classes may differ),
    and the baseline a model reaches by always answering train's commonest class, on test.

    >>> splits = {"train": [{"answer": "pos"}] * 3 + [{"answer": "neg"}], "test": [{"answer": "neg"}, {"answer": "pos"}]}
    >>> found = class_counts(splits, ["neg", "pos"])
    >>> found["counts"], found["commonest"]
    ({'train': {'neg': 1, 'pos': 3}, 'test': {'neg': 1, 'pos': 1}}, {'class': 'pos', 'test_share': 0.5, 'of': 'train'})
    """
    counts = {split: dict(Counter(class_of(r["answer"], names) for r in rows)) for split, rows in splits.items()
              if split != "generalization"}
    counts = {split: {n: found.get(n, 0) for n in names} for split, found in counts.items()}
    basis, _ = shown(splits)
    commonest = max(names, key=lambda n: counts[basis][n])
    return {"names": names, "counts": counts,
            "commonest": {"class": commonest, "test_share": round(counts["test"][commonest] / len(splits["test"]), 4),
                          "of": basis}}


def thin_train(splits: dict[str, list[dict]], drops: dict) -> list[str]:
    """A warning when the held-out test set takes more examples than are left to train on (the run is valid, but
    the tuned models learn from little), with what cleaning dropped.

    >>> thin_train({"train": [{}] * 11, "test": [{}] * 50}, {"duplicate": 237})
    ['train keeps 11 examples, fewer than the 50 held out for test (cleaning dropped 237: duplicate 237); lower data.test_size or add data']
    >>> thin_train({"train": [{}] * 50, "test": [{}] * 50}, {})
    []
    """
    train, test = len(splits["train"]), len(splits["test"])
    if train >= test:
        return []
    listed = ", ".join(f"{k} {v}" for k, v in drops.items())
    why = f" (cleaning dropped {sum(drops.values())}: {listed})" if drops else ""
    return [f"train keeps {train} examples, fewer than the {test} held out for test{why}; lower data.test_size or "
            "add data"]


def dropped_long(drops: Counter, counts: Counter, max_length: int) -> list[str]:
    """A warning when data.too_long: drop took a twentieth or more of the examples for being over sft.max_length
    (whose default, 128 tokens, fits short questions and answers, not documents), with the length that keeps them.

    >>> dropped_long(Counter(too_long=96), Counter(length_checked=300, longest_tokens=231), 128)[0]
    '96 of 300 examples (32 %) are longer than sft.max_length = 128 tokens and were dropped; sft.max_length: 231 keeps them all (the longest), data.too_long: truncate keeps them cut'
    >>> dropped_long(Counter(too_long=4), Counter(length_checked=300, longest_tokens=231), 128)
    []
    """
    dropped, checked = drops["too_long"], counts["length_checked"]
    if not checked or dropped < checked / 20:
        return []
    return [f"{dropped} of {checked} examples ({round(100 * dropped / checked)} %) are longer than sft.max_length = "
            f"{max_length} tokens and were dropped; sft.max_length: {counts['longest_tokens']} keeps them all (the "
            "longest), data.too_long: truncate keeps them cut"]


def _names_classes(text: str, names: list[str]) -> bool:
    """Whether a prompt (with its system prompt) names every class: each as a word, or for classes that are whole
    numbers each number, or where they run without a gap (1 to 5) the first and the last.

    >>> _names_classes("Answer with a number from 1 to 5.", ["1", "2", "3", "4", "5"])
    True
    >>> _names_classes("Title: Review 123. How many stars?", ["1", "2", "3"]), _names_classes("Good?", ["no", "yes"])
    (False, False)
    """
    text = text.lower()
    if not all(re.fullmatch(r"-?\d+", n) for n in names):
        return all(n.lower() in text for n in names)
    said = {int(x) for x in re.findall(r"-?\d+" if any(n.startswith("-") for n in names) else r"\d+", text)}
    values = sorted(int(n) for n in names)
    ranged = len(values) > 2 and values == list(range(values[0], values[-1] + 1))
    return set(values) <= said or ranged and {values[0], values[-1]} <= said


def unnamed_classes(rows: list[dict], names: list[str]) -> list[str]:
    """A warning when a classification's prompts (with their system prompt) do not name its classes: a model that
    has not been tuned cannot know which words to answer with, and scores by exact match say little about it.

    >>> unnamed_classes([{"prompt": "Great film!"}], ["negative", "positive"])[0][:60]
    'the answers are 2 classes (negative, positive), and the prom'
    >>> unnamed_classes([{"prompt": "Great film!", "system": "Answer positive or negative."}], ["negative", "positive"])
    []
    >>> unnamed_classes([{"prompt": "Great film!"}], ["0", "1"])[0].endswith("give them with data.label_names")
    True
    """
    sample = rows[:50]
    said = [_names_classes(f"{r.get('system', '')} {r['prompt']}", names) for r in sample]
    if not sample or sum(said) >= len(sample) / 2:
        return []
    listed = ", ".join(names)
    numbers = all(n.isdigit() for n in names)
    return [f"the answers are {len(names)} classes ({listed}), and the prompts do not name them: an untuned model "
            f"cannot know which words to answer with; say so in data.system, e.g. \"Answer with one of: {listed}.\""
            + ("; if the numbers stand for names (0: negative, ...), give them with data.label_names" if numbers
               else "")]


def conflicting_answers(rows: list[dict], show: int = 2) -> list[str]:
    """A warning when one prompt (with its earlier turns) comes with different answers (case and spacing aside):
    a labelling slip where the task has one right answer, and fine where a prompt has several good replies. Preference
    pairs, feedback rows (answers labelled desirable or not) and plain text are left alone.

    >>> conflicting_answers([{"prompt": "Great!", "answer": "positive"}, {"prompt": "great!", "answer": "Negative"},
    ...                      {"prompt": "Bad.", "answer": "negative"}, {"prompt": "Bad.", "answer": "negative "}])
    ["1 prompt comes with different answers, e.g. 'Great!' -> 'Negative' / 'positive'; where the task has one right answer (a label, a number), fix them in the sources (several good replies to one prompt are fine for SFT; eval scores each row against its own)"]
    """
    answers: dict[str, set] = {}
    first: dict[str, str] = {}
    for row in rows:
        if "answer" not in row or "rejected" in row or "label" in row:
            continue
        key = " ".join(context(row).lower().split())
        answers.setdefault(key, set()).add(" ".join(row["answer"].split()))
        first.setdefault(key, context(row))
    conflicts = [key for key, found in answers.items() if len({a.lower() for a in found}) > 1]
    if not conflicts:
        return []
    shown = "; ".join(f"{first[k][:80]!r} -> {' / '.join(repr(a) for a in sorted(answers[k]))}"
                      for k in conflicts[:show])
    return [f"{len(conflicts)} {'prompt comes' if len(conflicts) == 1 else 'prompts come'} with different answers, e.g. "
            f"{shown}; where the task has one right answer (a label, a number), fix them in the sources (several good "
            "replies to one prompt are fine for SFT; eval scores each row against its own)"]


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
