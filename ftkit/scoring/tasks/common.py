"""What the tasks share: TRL completions in, one score per completion out; a careless teacher's demonstrations."""

import random


def completion_text(completion) -> str:
    """A TRL completion is a string, or a list of chat messages whose last one is the answer."""
    return completion[-1]["content"] if isinstance(completion, list) else completion


def score_all(score, completions: list, answers: list[str]) -> list[float]:
    return [score(completion_text(c), ref) for c, ref in zip(completions, answers, strict=True)]


def careless(rows: list[dict], share: float, seed: int, slip, slipped: str, of: str) -> tuple[list[dict], dict]:
    """Training demonstrations from a careless teacher (data.teacher_errors): `slip(row)` is the task's wrong answer
    for a row (None where its mistake does not apply); `share` of the rows it applies to get it. Each changed row keeps
    its right answer as `verified`, which the rewards check (rows.scored_against); SFT imitates `answer`. Returns the
    rows and the counts, with the slip's name and the rows it applies to (`slipped`, `of`) for the data stage's note.

    >>> rows, counts = careless([{"answer": "4"}, {"answer": "5"}], 1.0, 0, lambda r: r["answer"] + "0", "x", "y")
    >>> rows, counts["wrong"]
    ([{'answer': '40', 'verified': '4'}, {'answer': '50', 'verified': '5'}], 2)
    """
    rng, out, eligible, wrong = random.Random(seed), [], 0, 0
    for row in rows:
        mistaken = slip(row)
        if mistaken is not None:
            eligible += 1
            if rng.random() < share:
                row = {**row, "answer": mistaken, "verified": row["answer"]}
                wrong += 1
        out.append(row)
    return out, {"share": share, "wrong": wrong, "eligible": eligible, "train": len(rows), "slip": slipped, "of": of}
