"""Built-in tasks. A task owns its examples, its scorer and its reward (the reward reuses the scorer)."""

from ftkit.tasks.addition import Addition

TASKS = {"addition": Addition}


def get(name: str, **options):
    try:
        return TASKS[name](**options)
    except KeyError:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}") from None
