"""A judge: a model the user chooses reads each evaluated model's replies and grades them, or compares them with
another model's (or the data's reference answers) pairwise.

Pairwise verdicts are asked for in both orders (the candidate as reply A, then as reply B), because judges favour
a position; a verdict that flips with the order counts as a tie, and how often that happened is reported. The
judge's replies are parsed by fixed rules (`parse_pairwise`, `parse_grade`); a reply they cannot read is counted
as unreadable, never guessed. The same code runs a tiny model on a CPU and a large judge on a GPU.
"""

from __future__ import annotations

import re

import numpy as np

from ftkit.models.generation import generate

PAIRWISE = """You compare two replies to the same request. {rubric}

Request:
{prompt}

Reply A:
{a}

Reply B:
{b}

Which reply is better? Answer with one word: A, B or tie."""

GRADE = """You grade a reply to a request. {rubric}

Request:
{prompt}

Reply:
{reply}

Grade the reply from 1 (useless) to 5 (excellent). Answer with the number only."""

OUTCOME_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def parse_pairwise(text: str) -> str | None:
    """The verdict in a judge's reply: "A", "B", "tie", or None when it names none of them.

    The reply's first word decides ("A", "B", "tie", "Tie.", "**B**"); else a phrase naming one reply
    ("Reply B is better", "answer A"); a bare article ("A reply ...") is not a verdict.

    >>> [parse_pairwise(t) for t in ("B", " tie.", "**A**", "Reply B is better.", "A reply should be short", "hm")]
    ['B', 'tie', 'A', 'B', None, None]
    """
    first = re.match(r"\W*(A|B)(?=$|[^\w\s]|\s*\n|\s+(?:is|wins|was)\b)", text)
    if first:
        return first.group(1)
    if re.match(r"\W*tie\b", text, re.IGNORECASE):
        return "tie"
    named = re.search(r"\b(?:reply|answer|response|option)\s+([AB])\b", text, re.IGNORECASE)
    return named.group(1).upper() if named else None


def parse_grade(text: str, low: int = 1, high: int = 5) -> int | None:
    """The reply's first whole number, when it is from `low` to `high` (else None: out of range or no number).

    >>> parse_grade("4"), parse_grade("Grade: 5/5"), parse_grade("I'd say 7"), parse_grade("good")
    (4, 5, None, None)
    """
    first = re.search(r"(?<![\d.])\d+(?![\d.])", text)
    return int(first.group()) if first and low <= int(first.group()) <= high else None


def combine(first: str | None, second: str | None) -> str:
    """The candidate's outcome from both orders: `first` judged it as reply A, `second` as reply B.

    Agreeing verdicts stand; a tie and a verdict give the verdict; opposite verdicts (the judge followed the
    position) give a tie; with one verdict unreadable the other decides; with none, "unreadable".

    >>> combine("A", "B"), combine("A", "A"), combine("tie", "B"), combine(None, "A"), combine(None, None)
    ('win', 'tie', 'win', 'loss', 'unreadable')
    """
    as_a = {"A": "win", "B": "loss", "tie": "tie"}.get(first)
    as_b = {"B": "win", "A": "loss", "tie": "tie"}.get(second)
    if as_a is None or as_b is None:
        return as_a or as_b or "unreadable"
    if as_a == as_b:
        return as_a
    if "tie" in (as_a, as_b):
        return as_a if as_b == "tie" else as_b
    return "tie"


def pairwise(model, tokenizer, items: list[dict], rubric: str, batch_size: int, max_new_tokens: int) -> list[dict]:
    """Each item ({prompt, candidate, other}) judged in both orders: the two prompts, raw verdicts, parsed
    verdicts and the candidate's outcome."""
    prompts = []
    for item in items:
        prompts.append(PAIRWISE.format(rubric=rubric, prompt=item["prompt"], a=item["candidate"], b=item["other"]))
        prompts.append(PAIRWISE.format(rubric=rubric, prompt=item["prompt"], a=item["other"], b=item["candidate"]))
    replies = _ask(model, tokenizer, prompts, batch_size, max_new_tokens)
    records = []
    for i, item in enumerate(items):
        raw = replies[2 * i:2 * i + 2]
        verdicts = [parse_pairwise(r) for r in raw]
        records.append({**item, "verdicts": raw, "parsed": verdicts, "outcome": combine(*verdicts),
                        "order_flipped": verdicts[0] == verdicts[1] and verdicts[0] in ("A", "B")})
    return records


def grade(model, tokenizer, items: list[dict], rubric: str, batch_size: int, max_new_tokens: int) -> list[dict]:
    """Each item ({prompt, candidate}) graded 1-5: the raw reply and the grade (None: unreadable)."""
    prompts = [GRADE.format(rubric=rubric, prompt=item["prompt"], reply=item["candidate"]) for item in items]
    replies = _ask(model, tokenizer, prompts, batch_size, max_new_tokens)
    return [{**item, "verdicts": [raw], "grade": parse_grade(raw)} for item, raw in zip(items, replies)]


def _ask(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
    """Greedy replies of the judge, through its chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        conversations = [[{"role": "user", "content": p}] for p in prompts]
    else:
        conversations = [f"{p}\nVerdict:" for p in prompts]
    return generate(model, tokenizer, conversations, batch_size, max_new_tokens)


def summary(records: list[dict]) -> tuple[dict, list[float]]:
    """Win/tie/loss counts (pairwise) or the mean grade (graded) over the readable verdicts, and the per-example
    scores behind it (win 1, tie 0.5, loss 0; or the grade) for an interval; unreadable verdicts are counted, not
    scored.

    >>> summary([{"outcome": o} for o in ("win", "win", "tie", "loss", "unreadable")])[0]["win_rate"]
    0.625
    """
    if records and "grade" in records[0]:
        values = [float(r["grade"]) for r in records if r["grade"] is not None]
        out = {"mean_grade": float(np.mean(values)) if values else None}
    else:
        values = [OUTCOME_SCORE[r["outcome"]] for r in records if r["outcome"] in OUTCOME_SCORE]
        out = {k: sum(r["outcome"] == k for r in records) for k in ("win", "tie", "loss")}
        out["win_rate"] = float(np.mean(values)) if values else None
        out["order_flipped"] = sum(bool(r.get("order_flipped")) for r in records)
    out.update(n=len(records), unreadable=len(records) - len(values))
    return out, values
