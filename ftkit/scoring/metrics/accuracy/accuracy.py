"""Accuracy of predicted labels (stripped strings compared exactly), computed with scikit-learn."""

import evaluate
from sklearn.metrics import accuracy_score

from ftkit.scoring.metrics import best, info, result


class Accuracy(evaluate.Metric):
    def _info(self):
        return info(__doc__)

    def _compute(self, predictions, references):
        if any(isinstance(r, (list, tuple)) for r in references):  # several acceptable labels: any one is right
            return result("accuracy", [best(lambda p, r: float(p.strip() == r.strip()), p, r)
                                       for p, r in zip(predictions, references)])
        predicted, expected = [p.strip() for p in predictions], [r.strip() for r in references]
        scores = [float(p == r) for p, r in zip(predicted, expected)]
        return result("accuracy", scores, float(accuracy_score(expected, predicted)) if scores else 0.0)
