"""Exact match after normalization: case, surrounding and repeated spaces, and a trailing '.' or '!' ignored."""

import evaluate

from ftkit.metrics import info, result


def normalize(text: str) -> str:
    return " ".join(text.strip().rstrip(".!").lower().split())


class ExactMatch(evaluate.Metric):
    def _info(self):
        return info(__doc__)

    def _compute(self, predictions, references):
        return result("exact_match", [float(normalize(p) == normalize(r)) for p, r in zip(predictions, references)])
