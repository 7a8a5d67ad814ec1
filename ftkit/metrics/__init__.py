"""ftkit's metrics as `evaluate` modules that load from this folder, so evaluation needs no hub.

    import evaluate
    evaluate.load(str(path("rouge_l"))).compute(predictions=["the cat sat"], references=["the cat sat down"])
    # {'rouge_l': 0.857..., 'per_example': [0.857...]}

Each returns its mean and `per_example` scores (for confidence intervals and paired tests). A metric named by a
hub id (e.g. `evaluate-metric/bertscore`) is loaded from the hub instead, where it can be reached.
"""

from pathlib import Path

LOCAL = ("exact_match", "accuracy", "f1", "rouge_l", "chrf", "bleu")


def path(name: str) -> Path:
    return Path(__file__).parent / name


def info(description: str, citation: str = ""):
    """The `evaluate.MetricInfo` every ftkit metric shares: a prediction string against a reference string."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(description=description, citation=citation,
                               inputs_description="predictions and references: lists of strings",
                               features=datasets.Features({"predictions": datasets.Value("string"),
                                                           "references": datasets.Value("string")}))


def result(name: str, scores: list[float], overall: float | None = None) -> dict:
    """{name: overall (default: the mean), "per_example": scores}."""
    mean = sum(scores) / len(scores) if scores else 0.0
    return {name: mean if overall is None else overall, "per_example": scores}
