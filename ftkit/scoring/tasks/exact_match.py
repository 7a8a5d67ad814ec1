"""The task for datasets read from files: the reply's answer, read where `data.extract` says (`ftkit.scoring.answers`: the
whole reply by default), must be the reference answer."""

from __future__ import annotations

from ftkit.scoring import answers
from ftkit.scoring.tasks.common import score_all


class ReferenceAnswer:
    def __init__(self, extract: str = "exact", pattern: str | None = None, tolerance: float = 0.0):
        self.extract, self.pattern, self.tolerance = extract, pattern, tolerance
        self.name = "exact_match" if extract == "exact" else f"answer ({extract})"
        if tolerance:
            self.name += f", numbers within {tolerance:g}"

    def score(self, output: str, answer: str | list[str]) -> float:
        """Strict: the answer where the format puts it (one of the acceptable answers, given a list).

        >>> ReferenceAnswer().score(" Paris.", "paris"), ReferenceAnswer().score("Paris, France", "Paris")
        (1.0, 0.0)
        >>> ReferenceAnswer("after_hash").score("3 * 4 = 12 #### 12", "#### 12")
        1.0
        >>> ReferenceAnswer("first_number", tolerance=0.5).score("77.5 degrees", "77.4")
        1.0
        """
        return answers.strict(output, answer, self.extract, self.pattern, self.tolerance)

    def lenient(self, output: str, answer: str | list[str], question: str = "",
                options: dict[str, str] | None = None) -> float:
        """The reference answer (or one of the acceptable ones) anywhere in the reply; a number the reply repeats
        from the `question` counts only with `data.extract: exact`; with a multiple-choice row's `options`, the right
        option named and no other (answers.lenient)."""
        return answers.lenient(output, answer, self.extract, self.pattern, self.tolerance, question, options)

    def reward(self, completions: list, answer: list[str], accepted: list[list[str]] | None = None, **_) -> list[float]:
        """TRL's reward signature; a completion giving any of a row's `accepted` answers is right.

        >>> ReferenceAnswer().reward(["Paris", "paris", "Lyon"], ["Paris"] * 3, [["Paris"], ["City of Paris", "paris"], ["Rome"]])
        [1.0, 1.0, 0.0]
        """
        return score_all(self.score, completions, accepted or answer)
