"""ROUGE-L F-measure (longest common subsequence) per example, computed with Google's `rouge_score`."""

import evaluate

from ftkit.scoring.metrics import info, result, rouge_l


class RougeL(evaluate.Metric):
    def _info(self):
        return info(__doc__, "Lin, 2004. ROUGE: A Package for Automatic Evaluation of Summaries.")

    def _compute(self, predictions, references):
        return result("rouge_l", [rouge_l(p, r) for p, r in zip(predictions, references)])
