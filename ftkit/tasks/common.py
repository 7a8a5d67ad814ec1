"""What every task's reward shares: TRL completions in, one score per completion out."""


def completion_text(completion) -> str:
    """A TRL completion is a string, or a list of chat messages whose last one is the answer."""
    return completion[-1]["content"] if isinstance(completion, list) else completion


def score_all(score, completions: list, answers: list[str]) -> list[float]:
    return [score(completion_text(c), ref) for c, ref in zip(completions, answers, strict=True)]
