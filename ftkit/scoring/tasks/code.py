"""Code: write a small Python function from a one-line description; scored by running it against unit tests in
`ftkit.scoring.sandbox` (HumanEval/MBPP style, small enough for a CPU).

Twenty-four families of functions (arithmetic, strings, lists, predicates), each with a parameter (a number or a
letter) that changes what the function must do, so that a model cannot pass by copying a solution it saw: train
and test are disjoint (family, parameter) pairs drawn from the seed. Each example carries its `tests` (asserts);
the answer the model learns is a reference solution that passes them. The shifted set for the generalization
claim holds families that training never sees.

Scores: strict is 1.0 when every test passes (solved), lenient is the share of tests passed, and the reward is
that share (a denser signal for RL than solved or not).
"""

from __future__ import annotations

import random
import string
from concurrent.futures import ThreadPoolExecutor

from ftkit.scoring import sandbox
from ftkit.scoring.tasks.common import completion_text

# name pattern, description, solution body, (args -> expected) builder; {k} is the family's parameter
FAMILIES = {
    "add": ("add_{k}(x)", "returns x plus {k}", "return x + {k}", lambda k: [((x,), x + k) for x in (0, 5, -3)]),
    "times": ("times_{k}(x)", "returns x multiplied by {k}", "return x * {k}", lambda k: [((x,), x * k) for x in (0, 4, -2)]),
    "power": ("power_{k}(x)", "returns x to the power {k}", "return x ** {k}", lambda k: [((x,), x ** k) for x in (0, 2, 3)]),
    "divisible": ("divisible_by_{k}(n)", "returns True when n is divisible by {k}, else False", "return n % {k} == 0",
                  lambda k: [((n,), n % k == 0) for n in (k, k + 1, 3 * k, 0)]),
    "multiples": ("multiples_of_{k}(n)", "returns the list of the first n positive multiples of {k}",
                  "return [{k} * i for i in range(1, n + 1)]", lambda k: [((n,), [k * i for i in range(1, n + 1)]) for n in (0, 1, 4)]),
    "repeat": ("repeat_{k}(s)", "returns the string s repeated {k} times", "return s * {k}",
               lambda k: [((s,), s * k) for s in ("ab", "", "x")]),
    "greater": ("sum_above_{k}(numbers)", "returns the sum of the numbers in the list that are greater than {k}",
                "return sum(x for x in numbers if x > {k})",
                lambda k: [((xs,), sum(x for x in xs if x > k)) for xs in ([k, k + 1, k + 5], [], [k - 2, k + 3])]),
    "last": ("last_{k}(items)", "returns the last {k} elements of the list items", "return items[-{k}:]",
             lambda k: [((xs,), xs[-k:]) for xs in (list(range(10)), list(range(k + 2)))]),
    "first": ("first_{k}(items)", "returns the first {k} elements of the list items", "return items[:{k}]",
              lambda k: [((xs,), xs[:k]) for xs in (list(range(10)), list(range(k + 2)))]),
    "count_char": ("count_{c}(s)", "returns how many times the letter '{c}' occurs in the string s", "return s.count('{c}')",
                   lambda c: [((s,), s.count(c)) for s in (f"{c}b{c}", "", f"x{c}{c}{c}")]),
    "starts": ("starts_with_{c}(word)", "returns True when the string word starts with the letter '{c}', else False",
               "return word.startswith('{c}')", lambda c: [((w,), w.startswith(c)) for w in (f"{c}pple", "zoo", "")]),
    "remove_char": ("remove_{c}(s)", "returns the string s with every letter '{c}' removed", "return s.replace('{c}', '')",
                    lambda c: [((s,), s.replace(c, "")) for s in (f"{c}a{c}b", "xyz", "")]),
    "modulo": ("mod_{k}(n)", "returns the remainder of n divided by {k}", "return n % {k}", lambda k: [((n,), n % k) for n in (0, k + 2, 7 * k + 1)]),
    "between": ("between_0_and_{k}(x)", "returns True when x is at least 0 and at most {k}, else False",
                "return 0 <= x <= {k}", lambda k: [((x,), 0 <= x <= k) for x in (-1, 0, k, k + 1)]),
    "clip": ("clip_{k}(x)", "returns x, but at most {k}", "return min(x, {k})", lambda k: [((x,), min(x, k)) for x in (k - 3, k, k + 9)]),
    "countdown": ("countdown_from_{k}()", "returns the list of whole numbers from {k} down to 1",
                  "return list(range({k}, 0, -1))", lambda k: [((), list(range(k, 0, -1)))]),
    "pad": ("pad_{k}(s)", "returns the string s padded on the left with spaces to length {k}", "return s.rjust({k})",
            lambda k: [((s,), s.rjust(k)) for s in ("a", "", "x" * (k + 1))]),
    "count_above": ("count_above_{k}(numbers)", "returns how many numbers in the list are greater than {k}",
                    "return sum(1 for x in numbers if x > {k})",
                    lambda k: [((xs,), sum(1 for x in xs if x > k)) for xs in ([k, k + 1, k + 2], [])]),
    "every_kth": ("every_{k}th(items)", "returns every {k}th element of the list items, starting with the first",
                  "return items[::{k}]", lambda k: [((xs,), xs[::k]) for xs in (list(range(12)), [])]),
    "subtract": ("minus_{k}(x)", "returns x minus {k}", "return x - {k}", lambda k: [((x,), x - k) for x in (0, 10, -1)]),
    "halve": ("floor_div_{k}(x)", "returns x divided by {k}, rounded down to a whole number", "return x // {k}",
              lambda k: [((x,), x // k) for x in (0, k * 3 + 1, 7)]),
    "ends": ("ends_with_{c}(word)", "returns True when the string word ends with the letter '{c}', else False",
             "return word.endswith('{c}')", lambda c: [((w,), w.endswith(c)) for w in (f"ab{c}", "zoo", "")]),
    "upper_char": ("upper_{c}(s)", "returns the string s with every letter '{c}' in upper case",
                   "return s.replace('{c}', '{C}')", lambda c: [((s,), s.replace(c, c.upper())) for s in (f"{c}x{c}", "", "qq")]),
    "square_sum": ("square_plus_{k}(x)", "returns x squared plus {k}", "return x * x + {k}", lambda k: [((x,), x * x + k) for x in (0, 3, -2)]),
}
LETTERS = {"count_char", "starts", "remove_char", "ends", "upper_char"}
SHIFTED = ("square_sum", "upper_char", "halve", "every_kth")  # never in train or test: the generalization set


def _parameters(family: str) -> list:
    if family in LETTERS:
        return [c for c in string.ascii_lowercase if c not in "aeiouxyzq"]
    return list(range(2, 10)) if family in ("power", "last", "first", "every_kth", "pad") else list(range(2, 30))


class Code:
    name = "code"
    system = "Write the Python function asked for. Reply with the code only."
    instruction = "Write a Python function {signature} that {description}."

    def example(self, family: str, k) -> dict:
        """One function to write, with its reference solution and tests.

        >>> e = Code().example("add", 3)
        >>> e["prompt"], e["answer"], e["tests"][1]
        ('Write a Python function add_3(x) that returns x plus 3.', 'def add_3(x):\\n    return x + 3', 'assert add_3(5) == 8')
        """
        signature, description, body, cases = FAMILIES[family]
        fill = {"k": k, "c": k, "C": str(k).upper()}
        signature, description, body = (t.format(**fill) for t in (signature, description, body))
        name = signature.split("(")[0]
        tests = [f"assert {name}({', '.join(repr(a) for a in args)}) == {expected!r}" for args, expected in cases(k)]
        return {"system": self.system, "prompt": self.instruction.format(signature=signature, description=description),
                "answer": f"def {signature}:\n    {body}", "tests": tests}

    def _all(self, families) -> list[tuple[str, object]]:
        return [(f, k) for f in families for k in _parameters(f)]

    def splits(self, train_size: int, test_size: int, seed: int) -> dict[str, list[dict]]:
        """Disjoint (family, parameter) pairs; the test set is drawn first so it does not move with train_size."""
        pool = self._all([f for f in FAMILIES if f not in SHIFTED])
        if train_size + test_size > len(pool):
            raise ValueError(f"the code task has {len(pool)} functions to write; lower data.train_size "
                             f"({train_size}) or data.test_size ({test_size})")
        random.Random(seed).shuffle(pool)
        test, train = pool[:test_size], pool[test_size:test_size + train_size]
        return {"test": [self.example(*p) for p in test], "train": [self.example(*p) for p in train]}

    def shifted(self, n: int, seed: int) -> list[dict]:
        """Generalization: functions of families training never sees."""
        pool = self._all(SHIFTED)
        random.Random(f"{seed}-shifted").shuffle(pool)
        return [self.example(*p) for p in pool[:n]]

    @staticmethod
    def passed(output: str, tests: str) -> float:
        """The share of `tests` (one assert per line) that the reply's code passes, run in the sandbox.

        >>> Code.passed("```python\\ndef f(x):\\n    return x + 1\\n```", "assert f(1) == 2\\nassert f(2) == 4")
        0.5
        """
        lines = [t for t in tests.splitlines() if t.strip()]
        result = sandbox.run(sandbox.extract_code(output), lines)
        return result["passed"] / max(result["total"], 1)

    def score(self, output: str, tests: str) -> float:
        """1.0 when every test passes (the function is solved), else 0.0."""
        return float(self.passed(output, tests) == 1.0)

    def lenient(self, output: str, tests: str, question: str = "") -> float:
        """The share of tests passed (the `question` plays no part)."""
        return self.passed(output, tests)

    def reward(self, completions: list, answer: list[str], **_) -> list[float]:
        """The share of tests each completion passes (TRL passes the tests as `answer`: see rows.scored_against),
        several sandboxes at a time."""
        texts = [completion_text(c) for c in completions]
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(self.passed, texts, answer))
