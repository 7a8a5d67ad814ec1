"""Two-digit addition: questions with verifiable answers, drawn from a seed.

Train and test are disjoint sets of (a, b) pairs, so no test question is ever seen in training.
"""

from __future__ import annotations

import random
import re

from ftkit.scoring import answers
from ftkit.scoring.tasks.common import careless, score_all

_QUESTION = re.compile(r"What is (\d+) plus (\d+)\?")


class Addition:
    name = "addition"
    extract = "first_number"  # the system prompt asks for the number only
    system = "Answer with the number only."
    instruction = "What is {a} plus {b}?"

    def __init__(self, low: int = 10, high: int = 99):
        self.low, self.high = low, high

    def _pairs(self, seed: int) -> list[tuple[int, int]]:
        pairs = [(a, b) for a in range(self.low, self.high + 1) for b in range(self.low, self.high + 1)]
        random.Random(seed).shuffle(pairs)
        return pairs

    def example(self, a: int, b: int) -> dict:
        return {"system": self.system, "prompt": self.instruction.format(a=a, b=b), "answer": str(a + b)}

    def splits(self, train_size: int, test_size: int, seed: int) -> dict[str, list[dict]]:
        """Disjoint train and test examples; test is drawn first so it does not depend on train_size."""
        pairs = self._pairs(seed)
        if train_size + test_size > len(pairs):
            raise ValueError(f"addition has {len(pairs)} distinct questions; train_size + test_size = "
                             f"{train_size + test_size} is too many: lower data.train_size or data.test_size")
        return {"test": [self.example(a, b) for a, b in pairs[:test_size]],
                "train": [self.example(a, b) for a, b in pairs[test_size:test_size + train_size]]}

    def shifted(self, n: int, seed: int) -> list[dict]:
        """Generalization: the same question with a three-digit first number (training sees two digits only).

        >>> Addition().shifted(1, 0)[0]["prompt"]
        'What is 964 plus 59?'
        """
        rng = random.Random(seed)
        return [self.example(rng.randint(100, 999), rng.randint(self.low, self.high)) for _ in range(n)]

    def reword(self, prompt: str, rng: random.Random) -> str | None:
        """The question asked another way (None when `prompt` is not one of this task's questions).

        >>> Addition().reword("What is 12 plus 30?", random.Random(0))
        '12 + 30 = ?'
        """
        found = _QUESTION.fullmatch(prompt.strip())
        if found is None:
            return None
        a, b = found.groups()
        return rng.choice(["Add {a} and {b}.", "{a} + {b} = ?", "Compute the sum of {a} and {b}."]).format(a=a, b=b)

    def preference_pairs(self, n: int, seed: int) -> list[dict]:
        """`n` questions with the right answer (chosen) against a typical mistake (rejected, `mistake`).
        `recipes/data/addition_preferences.jsonl` is `preference_pairs(400, seed=1)`."""
        rng = random.Random(seed)
        return [{"system": self.system, "prompt": self.instruction.format(a=a, b=b), "chosen": str(a + b),
                 "rejected": self.mistake(a, b, rng)} for a, b in self._pairs(seed)[:n]]

    def feedback(self, n: int, seed: int) -> list[dict]:
        """`n` questions, each with one answer labelled desirable (the right sum, half the time) or not (a typical
        mistake): thumbs up or down on single answers, for KTO. `recipes/data/addition_feedback.jsonl` is
        `feedback(600, seed=2)`."""
        rng = random.Random(seed)
        rows = []
        for a, b in self._pairs(seed)[:n]:
            good = rng.random() < 0.5
            rows.append({"system": self.system, "prompt": self.instruction.format(a=a, b=b),
                         "completion": str(a + b) if good else self.mistake(a, b, rng), "label": good})
        return rows

    def careless(self, rows: list[dict], share: float, seed: int) -> tuple[list[dict], dict]:
        """A careless teacher's demonstrations (tasks.common.careless): on `share` of the sums that carry, the answer
        drops the carry (`38 + 45` -> `73`), the slip this task's learners make most.

        >>> rows = [Addition().example(38, 45), Addition().example(12, 30)]
        >>> wrong, counts = Addition().careless(rows, 1.0, 0)
        >>> [(r["answer"], r.get("verified")) for r in wrong], counts["wrong"], counts["eligible"]
        ([('73', '83'), ('42', None)], 1, 1)
        """
        def dropped_carry(row: dict) -> str | None:
            a, b = map(int, _QUESTION.fullmatch(row["prompt"]).groups())
            return str(a + b - 10) if (a % 10) + (b % 10) >= 10 else None

        return careless(rows, share, seed, dropped_carry, "the carry dropped", "sums that carry")

    @staticmethod
    def mistake(a: int, b: int, rng: random.Random) -> str:
        """A typical wrong answer to a + b: a dropped or doubled carry (off by ten), off by one, or the right number
        buried in a sentence when the system prompt asks for the number only."""
        right = a + b
        kind = rng.choice(["carry", "off_by_one", "sentence"])
        if kind == "carry":
            return str(right - 10 if (a % 10) + (b % 10) >= 10 else right + 10)
        if kind == "off_by_one":
            return str(right + rng.choice([-1, 1]))
        return f"The answer is {right}."

    @staticmethod
    def score(output: str, answer: str) -> float:
        """1.0 when the first number in the output is the answer, else 0.0.

        >>> Addition.score(" 57", "57"), Addition.score("12 + 45 = 57", "57"), Addition.score("", "57")
        (1.0, 0.0, 0.0)
        """
        return answers.strict(output, answer, Addition.extract)

    @staticmethod
    def lenient(output: str, answer: str, question: str = "") -> float:
        """1.0 when the answer appears anywhere in the output, other than as a number repeated from the `question`.

        >>> Addition.lenient("12 + 45 = 57", "57"), Addition.lenient("0 + 57", "57", "What is 0 + 57?")
        (1.0, 0.0)
        """
        return answers.lenient(output, answer, Addition.extract, question=question)

    def reward(self, completions: list, answer: list[str], **_) -> list[float]:
        """TRL reward signature: one float per completion (chat completions are lists of messages).

        >>> Addition().reward([[{"role": "assistant", "content": "57"}], "56"], answer=["57", "57"])
        [1.0, 0.0]
        """
        return score_all(self.score, completions, answer)
