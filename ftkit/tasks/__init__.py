"""Built-in tasks. A task owns its examples, its scorer and its reward (the reward reuses the scorer)."""

from ftkit.tasks.addition import Addition
from ftkit.tasks.exact_match import ExactMatch

TASKS = {"addition": Addition}


def get(name: str, **options):
    try:
        return TASKS[name](**options)
    except KeyError:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}") from None


def for_data(data_cfg):
    """The task that scores a recipe's data: its built-in task, else exact match against the reference."""
    return get(data_cfg.task) if data_cfg.task else ExactMatch()
