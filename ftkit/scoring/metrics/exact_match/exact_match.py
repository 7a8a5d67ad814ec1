"""Exact match after normalization: case, surrounding and repeated spaces, and a trailing '.' or '!' ignored, a lone
number compared by value (ftkit's one normalization, `ftkit.scoring.answers`)."""

import evaluate

from ftkit.scoring import answers
from ftkit.scoring.metrics import info, result


class ExactMatch(evaluate.Metric):
    def _info(self):
        return info(__doc__)

    def _compute(self, predictions, references):
        return result("exact_match", [answers.strict(p, r, "exact") for p, r in zip(predictions, references)])
