"""ftkit's metrics as `evaluate` modules that load from this folder, so evaluation needs no hub.

    import evaluate
    evaluate.load(str(path("rouge_l"))).compute(predictions=["the cat sat"], references=["the cat sat down"])
    # {'rouge_l': 0.857..., 'per_example': [0.857...]}

Each returns its mean and `per_example` scores (for confidence intervals and paired tests). A reference is a string
or a list of acceptable ones (a prediction is scored against the best match: SQuAD's rule for several answer spans;
BLEU and chrF take them as multiple references). A metric named by a hub id (e.g. `evaluate-metric/bertscore`) is
loaded from the hub instead, where it can be reached.
"""

import functools
from pathlib import Path

from ftkit.scoring.answers import alternatives

LOCAL = ("exact_match", "accuracy", "f1", "rouge_l", "chrf", "bleu")


def path(name: str) -> Path:
    return Path(__file__).parent / name


def info(description: str, citation: str = ""):
    """The `evaluate.MetricInfo` every ftkit metric shares: a prediction string against a reference string, or
    against a list of acceptable references."""
    import datasets
    import evaluate

    text = datasets.Value("string")
    return evaluate.MetricInfo(description=description, citation=citation,
                               inputs_description="predictions: strings; references: strings, or lists of strings",
                               features=[datasets.Features({"predictions": text, "references": text}),
                                         datasets.Features({"predictions": text,
                                                            "references": datasets.Sequence(text)})])


def best(score, prediction: str, reference) -> float:
    """`score(prediction, reference)`, the best over a list of acceptable references.

    >>> best(lambda p, r: float(p == r), "b", ["a", "b"]), best(lambda p, r: float(p == r), "b", "a")
    (1.0, 0.0)
    """
    return max((score(prediction, r) for r in alternatives(reference)), default=0.0)


def streams(references: list) -> list[list]:
    """References as sacrebleu's reference streams: stream i holds each prediction's i-th reference (None where it
    has fewer).

    >>> streams(["a", ["b", "c"]])
    [['a', 'b'], [None, 'c']]
    """
    lists = [alternatives(r) for r in references]
    width = max((len(r) for r in lists), default=1)
    return [[r[i] if i < len(r) else None for r in lists] for i in range(width)]


def result(name: str, scores: list[float], overall: float | None = None) -> dict:
    """{name: overall (default: the mean), "per_example": scores}."""
    mean = sum(scores) / len(scores) if scores else 0.0
    return {name: mean if overall is None else overall, "per_example": scores}


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference) -> float:
    """ROUGE-L F-measure (longest common subsequence of stemmed words), against the best of the acceptable references:
    what eval's `rouge_l` metric gives each example and the `rouge_l` reward each completion.

    >>> round(rouge_l("the cat sat", "the cat sat down"), 3), rouge_l("a dog", ["cats", "a dog"])
    (0.857, 1.0)
    """
    return best(lambda p, r: _rouge_scorer().score(r, p)["rougeL"].fmeasure, prediction, reference)
