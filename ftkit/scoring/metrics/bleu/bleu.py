"""BLEU for the corpus (sacrebleu's standard settings) and smoothed sentence BLEU per example, scaled to 0-1."""

import evaluate
import sacrebleu

from ftkit.scoring.metrics import info, result, streams


class Bleu(evaluate.Metric):
    def _info(self):
        return info(__doc__, "Papineni et al., 2002; Post, 2018 (sacreBLEU).")

    def _compute(self, predictions, references):
        refs = streams(references)
        scores = [sacrebleu.sentence_bleu(p, [s[i] for s in refs if s[i] is not None]).score / 100
                  for i, p in enumerate(predictions)]
        corpus = sacrebleu.corpus_bleu(list(predictions), refs).score / 100 if scores else 0.0
        return result("bleu", scores, corpus)
