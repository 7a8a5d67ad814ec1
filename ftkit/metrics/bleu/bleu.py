"""BLEU for the corpus (sacrebleu's standard settings) and smoothed sentence BLEU per example, scaled to 0-1."""

import evaluate
import sacrebleu

from ftkit.metrics import info, result


class Bleu(evaluate.Metric):
    def _info(self):
        return info(__doc__, "Papineni et al., 2002; Post, 2018 (sacreBLEU).")

    def _compute(self, predictions, references):
        scores = [sacrebleu.sentence_bleu(p, [r]).score / 100 for p, r in zip(predictions, references)]
        corpus = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score / 100 if scores else 0.0
        return result("bleu", scores, corpus)
