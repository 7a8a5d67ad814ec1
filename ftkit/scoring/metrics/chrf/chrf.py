"""chrF (character n-gram F-score) per sentence and for the corpus, computed with `sacrebleu`, scaled to 0-1."""

import evaluate
import sacrebleu

from ftkit.scoring.metrics import info, result, streams


class ChrF(evaluate.Metric):
    def _info(self):
        return info(__doc__, "Popović, 2015. chrF: character n-gram F-score for automatic MT evaluation.")

    def _compute(self, predictions, references):
        refs = streams(references)
        scores = [sacrebleu.sentence_chrf(p, [s[i] for s in refs if s[i] is not None]).score / 100
                  for i, p in enumerate(predictions)]
        corpus = sacrebleu.corpus_chrf(list(predictions), refs).score / 100 if scores else 0.0
        return result("chrf", scores, corpus)
