"""Token-overlap F1 between a prediction and its reference (SQuAD style: lower case, punctuation and articles
dropped, bag of words)."""

import re
import string
from collections import Counter

import evaluate

from ftkit.scoring.metrics import best, info, result


def tokens(text: str) -> list[str]:
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def f1(prediction: str, reference: str) -> float:
    predicted, expected = tokens(prediction), tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


class F1(evaluate.Metric):
    def _info(self):
        return info(__doc__)

    def _compute(self, predictions, references):
        return result("f1", [best(f1, p, r) for p, r in zip(predictions, references)])
