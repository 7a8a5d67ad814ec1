"""Robustness: the test prompts perturbed the way real users write, one kind of perturbation at a time.

Only the user's last turn changes (never the system prompt or the reference), and every perturbation is seeded
by the example's position, so each model sees exactly the same perturbed prompts.
"""

from __future__ import annotations

import random

PERTURBATIONS = ("typo", "case", "whitespace", "reword")


def typo(text: str, rng: random.Random) -> str:
    """Two neighbouring letters swapped in one word of four letters or more (the text unchanged if none).

    >>> typo("What is the capital of France?", random.Random(0))
    'What is the captial of France?'
    """
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 4]
    if not candidates:
        return text
    i = rng.choice(candidates)
    letters = [j for j in range(len(words[i]) - 1) if words[i][j].isalpha() and words[i][j + 1].isalpha()]
    j = rng.choice(letters)
    word = words[i]
    words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2:]
    return " ".join(words)


def case(text: str, rng: random.Random) -> str:
    """All lower case or all upper case.

    >>> case("What is 12 plus 30?", random.Random(1))
    'WHAT IS 12 PLUS 30?'
    """
    return text.upper() if rng.random() < 0.5 else text.lower()


def whitespace(text: str, rng: random.Random) -> str:
    """Doubled spaces between words and stray spaces and a newline around the text.

    >>> whitespace("What is 12 plus 30?", random.Random(0))
    '  What  is  12  plus  30?\\n'
    """
    return "  " + "  ".join(text.split()) + "\n"


def reword(text: str, rng: random.Random, task=None) -> str:
    """The task's own rewording of its instruction when it has one, else the question wrapped in a request.

    >>> reword("Name a prime.", random.Random(0))
    'Could you help me with this? Name a prime.'
    """
    rewording = getattr(task, "reword", None)
    if rewording is not None:
        changed = rewording(text, rng)
        if changed is not None:
            return changed
    return f"Could you help me with this? {text}"


def perturb(rows: list[dict], kind: str, seed: int, task=None) -> list[dict]:
    """Copies of `rows` with the prompt perturbed by `kind` (one of PERTURBATIONS)."""
    out = []
    for i, row in enumerate(rows):
        rng = random.Random(f"{seed}-{kind}-{i}")
        prompt = reword(row["prompt"], rng, task) if kind == "reword" else globals()[kind](row["prompt"], rng)
        out.append({**row, "prompt": prompt})
    return out
