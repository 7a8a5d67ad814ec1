"""Where a stage's time goes: named phases timed inside the stage's kernel (loading, generation, update, ...),
completed by the runner with what only it sees (the kernel's start, the notebook's own code, writing the notebook).

A phase's seconds are its own: time spent in a phase opened inside it counts to the inner one, so the phases of a
stage add up to its time instead of counting a second twice.

>>> reset()
>>> with phase("generation"):
...     with phase("scoring"):
...         pass
>>> sorted(seconds())
['generation', 'scoring']
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager

# in the order a stage passes through them; the report's bars keep this order and one colour per name
PHASES = ("kernel start", "imports", "loading", "preparing data", "filtering prompts", "generation", "rewards",
          "update", "validation loss", "checkpointing", "sampled replies", "finishing cut replies", "shifted set",
          "perturbation sets", "likelihoods", "scoring", "judge", "saving", "checking", "notebook code",
          "writing the notebook")

_seconds: dict[str, float] = {}
_open: list[list] = []  # [name, start, seconds spent in phases opened inside it]


@contextmanager
def phase(name: str):
    """Time the block as phase `name` (one of PHASES), less the phases opened inside it."""
    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r}: one of {', '.join(PHASES)}")
    _open.append([name, time.perf_counter(), 0.0])
    try:
        yield
    finally:
        _, start, inner = _open.pop()
        elapsed = time.perf_counter() - start
        _seconds[name] = _seconds.get(name, 0.0) + elapsed - inner
        if _open:
            _open[-1][2] += elapsed


def timed(name: str, fn=None):
    """`fn` with each call timed as phase `name` (a library's method, e.g. a trainer's generation); without `fn`, a
    decorator."""
    if fn is None:
        return functools.partial(timed, name)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with phase(name):
            return fn(*args, **kwargs)

    return call


def add(name: str, value: float) -> None:
    """Count `value` seconds measured elsewhere (another process, a clock started before ftkit was imported)."""
    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r}: one of {', '.join(PHASES)}")
    _seconds[name] = _seconds.get(name, 0.0) + value
    if _open:
        _open[-1][2] += value


@contextmanager
def spent():
    """Collect the seconds each phase gains while the block runs into the dict it yields (filled on exit).

    >>> with spent() as during:
    ...     with phase("update"):
    ...         pass
    >>> list(during)
    ['update']
    """
    before, during = dict(_seconds), {}
    try:
        yield during
    finally:
        during.update({name: round(_seconds[name] - before.get(name, 0.0), 4) for name in PHASES
                       if _seconds.get(name, 0.0) > before.get(name, 0.0)})


def seconds() -> dict[str, float]:
    """The phases timed so far in this process, in PHASES order, rounded to a tenth of a millisecond."""
    return {name: round(_seconds[name], 4) for name in PHASES if name in _seconds}


def reset() -> None:
    """Forget the phases timed so far (a new stage in the same process: a test, a notebook run twice)."""
    _seconds.clear()
    _open.clear()


def completed(inside: dict[str, float], cells: list[tuple[float, float]], start: float, end: float) -> dict:
    """A stage's phases: those timed inside its kernel (`inside`), and, from the executed notebook's cells (their
    start and end, seconds since the epoch) and the stage's `start` and `end`, the kernel's start (before the first
    cell), the notebook's own code (the cells' time outside every phase: imports aside, tables and plots) and writing
    the notebook (after the last cell).

    >>> completed({"update": 8.0}, [(10.5, 11.0), (11.0, 20.0)], start=10.0, end=20.5)
    {'kernel start': 0.5, 'update': 8.0, 'notebook code': 1.5, 'writing the notebook': 0.5}
    """
    figures = dict(inside)
    if cells:
        figures["kernel start"] = max(0.0, cells[0][0] - start)
        figures["notebook code"] = max(0.0, sum(e - s for s, e in cells) - sum(inside.values()))
        figures["writing the notebook"] = max(0.0, end - max(e for _, e in cells))
    return {name: round(figures[name], 4) for name in PHASES if name in figures}


def largest(phases: dict[str, float], n: int = 3) -> list[tuple[str, float]]:
    """The `n` phases that took longest, longest first.

    >>> largest({"loading": 2.0, "update": 30.0, "saving": 1.0, "imports": 4.0}, 2)
    [('update', 30.0), ('imports', 4.0)]
    """
    return sorted(phases.items(), key=lambda item: -item[1])[:n]
