"""Word problems: short stories with two or three operations on small numbers (add, take away, groups of, share
equally) and a whole-number answer, with a worked solution that ends in `#### <answer>` (GSM8K's layout).

Generated from a seed, so no download is needed; train and test are disjoint sets of problems. A model learns to
write the steps and the answer after `####` (SFT), and to get them right (RL, rewarded on the answer alone). The
shifted set for the generalization claim has four operations instead of two or three.
"""

from __future__ import annotations

import random
import re

from ftkit.scoring import answers
from ftkit.scoring.tasks.common import careless, score_all

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon", "Kemi", "Liam", "Mia", "Noor",
         "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara")
ITEMS = ("apples", "stickers", "marbles", "pencils", "cookies", "stamps", "shells", "cards", "books", "coins")
_OPENING = re.compile(r"^(\w+) has (\d+) (\w+)\.")


def _step(rng: random.Random, name: str, item: str, value: int) -> tuple[str, str, int] | None:
    """One operation on the running count: (sentence, worked line, new count), or None when none fits."""
    kind = rng.choice(["add", "take", "groups", "share"])
    if kind == "add":
        b = rng.randint(2, 20)
        verb = rng.choice(["finds", "buys", "is given"])
        return f"{name} {verb} {b} more.", f"{value} + {b} = {value + b}", value + b
    if kind == "take" and value > 2:
        c = rng.randint(1, min(value - 1, 20))
        verb = rng.choice(["gives away", "loses", "uses"])
        return f"Then {name} {verb} {c}.", f"{value} - {c} = {value - c}", value - c
    if kind == "groups" and value <= 12:
        b = rng.randint(2, 6)
        return (f"Then {name} has {b} times as many {item}.", f"{value} * {b} = {value * b}", value * b)
    if kind == "share":
        ways = [d for d in range(2, 7) if value % d == 0 and value // d >= 1]
        if ways:
            d = rng.choice(ways)
            return (f"{name} splits them into {d} equal piles and keeps one pile.",
                    f"{value} / {d} = {value // d}", value // d)
    return None


class WordProblems:
    name = "word_problems"
    extract = "after_hash"
    system = "Solve the problem step by step, then give the answer after ####."

    def __init__(self, operations: tuple[int, int] = (2, 3)):
        self.operations = operations

    def problem(self, rng: random.Random, operations: int) -> dict:
        """One problem with `operations` steps after the opening count.

        >>> WordProblems().problem(random.Random(1), 2)["answer"]
        '15 + 10 = 25\\n25 / 5 = 5\\n#### 5'
        """
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        value = rng.randint(2, 15)
        sentences, lines = [f"{name} has {value} {item}."], []
        while len(lines) < operations:
            step = _step(rng, name, item, value)
            if step is not None:
                sentence, line, value = step
                sentences.append(sentence)
                lines.append(line)
        sentences.append(f"How many {item} does {name} have now?")
        return {"system": self.system, "prompt": " ".join(sentences), "answer": "\n".join([*lines, f"#### {value}"])}

    def _unique(self, n: int, rng: random.Random, operations: tuple[int, int], seen: set) -> list[dict]:
        out = []
        while len(out) < n:
            example = self.problem(rng, rng.randint(*operations))
            if example["prompt"] not in seen:
                seen.add(example["prompt"])
                out.append(example)
        return out

    def splits(self, train_size: int, test_size: int, seed: int) -> dict[str, list[dict]]:
        """Disjoint train and test problems; test is drawn first so it does not depend on train_size."""
        rng, seen = random.Random(seed), set()
        test = self._unique(test_size, rng, self.operations, seen)
        return {"test": test, "train": self._unique(train_size, rng, self.operations, seen)}

    def shifted(self, n: int, seed: int) -> list[dict]:
        """Generalization: four operations (training sees two or three)."""
        return self._unique(n, random.Random(f"{seed}-shifted"), (4, 4), set())

    def reword(self, prompt: str, rng: random.Random) -> str | None:
        """The same problem told another way (None when `prompt` is not one of this task's problems).

        >>> WordProblems().reword("Sam has 4 cards. Sam finds 2 more. How many cards does Sam have now?", None)
        'Sam starts with 4 cards. Sam finds 2 more. What is the number of cards Sam ends up with?'
        """
        found = _OPENING.match(prompt)
        if found is None:
            return None
        name, count, item = found.groups()
        body = prompt[found.end():].replace(f"How many {item} does {name} have now?",
                                            f"What is the number of {item} {name} ends up with?")
        return f"{name} starts with {count} {item}.{body}"

    def score(self, output: str, answer: str) -> float:
        """1.0 when the number after the reply's last `####` is the answer.

        >>> WordProblems().score("4 + 2 = 6\\n#### 6", "4 + 2 = 6\\n#### 6"), WordProblems().score("6", "#### 6")
        (1.0, 0.0)
        """
        return answers.strict(output, answer, self.extract)

    def lenient(self, output: str, answer: str, question: str = "") -> float:
        """1.0 when the answer is any number of the reply (a right result without the `####`) other than those it
        repeats from the `question` (answers.lenient).

        >>> WordProblems().lenient("so she has 6 left", "4 + 2 = 6\\n#### 6")
        1.0
        >>> WordProblems().lenient("12 + 7 = 19\\n#### 19", "#### 12", "Chloe has 12 cards. She finds 7 more. ...")
        0.0
        """
        return answers.lenient(output, answer, self.extract, question=question)

    def careless(self, rows: list[dict], share: float, seed: int) -> tuple[list[dict], dict]:
        """A careless teacher's demonstrations (tasks.common.careless): on `share` of the problems, the solution stops
        one step short, its answer the count before the story's last event.

        >>> row = {"prompt": "Sam has 4 cards. ...", "answer": "4 + 2 = 6\\n6 * 2 = 12\\n#### 12"}
        >>> wrong, counts = WordProblems().careless([row], 1.0, 0)
        >>> wrong[0]["answer"], wrong[0]["verified"] == row["answer"], counts["wrong"]
        ('4 + 2 = 6\\n#### 6', True, 1)
        """
        def one_step_short(row: dict) -> str:
            *steps, _, _ = row["answer"].split("\n")
            return "\n".join([*steps, f"#### {steps[-1].rsplit(' = ', 1)[1]}"])

        return careless(rows, share, seed, one_step_short, "the solution stopped one step short", "problems")

    def reward(self, completions: list, answer: list[str], **_) -> list[float]:
        return score_all(self.score, completions, answer)
