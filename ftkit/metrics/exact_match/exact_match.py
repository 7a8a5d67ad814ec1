"""Exact match after normalization: case, surrounding and repeated spaces, and a trailing '.' or '!' ignored (the
normalization of ftkit's exact-match task, `ftkit.tasks.exact_match`)."""

import evaluate

from ftkit.metrics import info, result
from ftkit.tasks.exact_match import ExactMatch as Task


class ExactMatch(evaluate.Metric):
    def _info(self):
        return info(__doc__)

    def _compute(self, predictions, references):
        return result("exact_match", [Task.score(p, r) for p, r in zip(predictions, references)])
