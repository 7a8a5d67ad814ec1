"""ROUGE-L F-measure (longest common subsequence) per example, computed with Google's `rouge_score`."""

import evaluate
from rouge_score import rouge_scorer

from ftkit.metrics import best, info, result


class RougeL(evaluate.Metric):
    def _info(self):
        return info(__doc__, "Lin, 2004. ROUGE: A Package for Automatic Evaluation of Summaries.")

    def _compute(self, predictions, references):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        return result("rouge_l", [best(lambda p, r: scorer.score(r, p)["rougeL"].fmeasure, p, r)
                                  for p, r in zip(predictions, references)])
