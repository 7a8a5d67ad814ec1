"""A classification's classes: whether a dataset's answers are a few labels, which, and which one a reply gives.
Answers are compared as ftkit compares them (`ftkit.scoring.answers`: "Positive." is "positive")."""

from __future__ import annotations

from collections import Counter

from ftkit.scoring import answers

MOST_CLASSES = 20  # more distinct answers than this: not a classification
NO_CLASS = "(none of them)"  # a reply that gives none of a classification's classes


def classes(train: list[dict], test: list[dict]) -> list[str] | None:
    """The classes, where the data is a classification: its answers take 2 to MOST_CLASSES distinct values (as ftkit
    compares them: "Positive." is "positive"), each seen 5 times in train on average, and every test answer is one
    of train's. Each class is named as train writes it most often; in order (numbers by value: star ratings read 1 to
    5). None otherwise (a task whose answers are free text or numbers, or rows with several acceptable answers).

    >>> rows = [{"answer": a} for a in ["pos"] * 6 + ["neg"] * 4 + ["Neg."]]
    >>> classes(rows, [{"answer": "neg"}]), classes(rows, [{"answer": "neutral"}]), classes(rows[:3], rows[:1])
    (['neg', 'pos'], None, None)
    >>> classes([{"answer": str(n)} for n in [10, 2, 1] * 5], [{"answer": "2"}])
    ['1', '2', '10']
    """
    if not train or not test or any("answer" not in r or r.get("accepted") or r.get("tests") for r in train + test):
        return None
    written: dict[str, Counter] = {}
    for r in train:
        written.setdefault(answers.normalize(r["answer"]), Counter())[r["answer"].strip()] += 1
    if not 2 <= len(written) <= MOST_CLASSES or len(train) < 5 * len(written):
        return None
    if any(answers.normalize(r["answer"]) not in written for r in test):
        return None
    names = [written[k].most_common(1)[0][0] for k in written]
    return sorted(names, key=lambda n: (answers.as_number(n) is None, answers.as_number(n) or 0, n.lower()))


def class_of(answer: str, names: list[str]) -> str | None:
    """Which of the class names an answer is (compared as ftkit compares answers), or None.

    >>> class_of(" Positive.", ["negative", "positive"]), class_of("meh", ["negative", "positive"])
    ('positive', None)
    """
    key = answers.normalize(answer)
    return next((n for n in names if answers.normalize(n) == key), None)
