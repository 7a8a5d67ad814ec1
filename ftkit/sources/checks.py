"""What the data stage says about the splits it made, beyond errors: a classification's classes and its
commonest-class baseline, and the warnings for a run that is valid but likely to disappoint (a train split smaller
than test, many examples dropped as too long, prompts that do not name the classes, one prompt with different
answers)."""

from __future__ import annotations

import re
from collections import Counter

from ftkit.core.rows import context
from ftkit.scoring.classes import class_of


def shown_split(splits: dict[str, list[dict]]) -> tuple[str, list[dict]]:
    """The split that shows what the examples look like, and its name: train, or test where the recipe only
    evaluates (data.test_size: all leaves train empty).

    >>> shown_split({"train": [], "test": [{"prompt": "2+2?", "answer": "4"}]})
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
    basis, _ = shown_split(splits)
    commonest = max(names, key=lambda n: counts[basis][n])
    return {"names": names, "counts": counts,
            "commonest": {"class": commonest, "test_share": round(counts["test"][commonest] / len(splits["test"]), 4),
                          "of": basis}}


def small_train(splits: dict[str, list[dict]], drops: dict) -> list[str]:
    """A warning when the held-out test set takes more examples than are left to train on (the run is valid, but
    the tuned models learn from little), with what cleaning dropped.

    >>> small_train({"train": [{}] * 11, "test": [{}] * 50}, {"duplicate": 237})
    ['train keeps 11 examples, fewer than the 50 held out for test (cleaning dropped 237: duplicate 237); lower data.test_size or add data']
    >>> small_train({"train": [{}] * 50, "test": [{}] * 50}, {})
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
