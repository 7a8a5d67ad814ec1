"""Built-in tasks. A task owns its examples, its scorer and its reward (the reward reuses the scorer)."""

from ftkit.scoring.tasks.addition import Addition
from ftkit.scoring.tasks.code import Code
from ftkit.scoring.tasks.exact_match import ReferenceAnswer
from ftkit.scoring.tasks.word_problems import WordProblems

__all__ = ["Addition", "Code", "ReferenceAnswer", "WordProblems", "TASKS", "get", "for_data"]

TASKS = {"addition": Addition, "word_problems": WordProblems, "code": Code}


def get(name: str, **options):
    try:
        return TASKS[name](**options)
    except KeyError:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}") from None


def for_data(data_cfg):
    """The task that scores a recipe's data: its built-in task, else the reference answer where `data.extract` says."""
    return get(data_cfg.task) if data_cfg.task else ReferenceAnswer(data_cfg.extract, data_cfg.extract_regex,
                                                                  data_cfg.numeric_tolerance)
