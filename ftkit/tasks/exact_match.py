"""The default task for datasets read from files: the output must be the reference answer.

Case, surrounding spaces, repeated spaces and trailing '.' or '!' are ignored.
"""

from __future__ import annotations

from ftkit.tasks.common import score_all


class ExactMatch:
    name = "exact_match"

    @staticmethod
    def normalize(text: str) -> str:
        return " ".join(text.strip().rstrip(".!").lower().split())

    @classmethod
    def score(cls, output: str, answer: str) -> float:
        """
        >>> ExactMatch.score(" Paris.", "paris"), ExactMatch.score("Paris, France", "Paris")
        (1.0, 0.0)
        """
        return float(cls.normalize(output) == cls.normalize(answer))

    def reward(self, completions: list, answer: list[str], **_) -> list[float]:
        return score_all(self.score, completions, answer)
