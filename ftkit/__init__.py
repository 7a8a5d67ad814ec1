"""ftkit: declarative, notebook-driven fine-tuning of LLMs.

A recipe (YAML) says what to run; a notebook per stage tells the story; this package does the work. Its folders are
its layers, top to bottom, and imports run one way, downwards (tests/test_layers.py reads the layers from this list,
checks that it names every folder, and checks every import, function-local ones too):

    cli.py  __main__.py             the command line
    run/  report/                   run the stages' notebooks; the report reads the run directory only (no torch)
    stages/                         data  sft  rl  eval  export: one per recipe section and notebook
    models/  sources/  training/    what the stages share: loading and generating, reading data, trainer plumbing
    recipe/                         the schema, loading and validation of a recipe
    scoring/                        answers, classes, tasks, metrics, rewards, robustness, sandbox, statistics
    core/                           io, rundir (every path of a run), rows, machine

A module may import its own folder, a folder on its line (without a circle) or a line below.

Nothing is imported eagerly, so that `ftkit validate` and `ftkit report` answer without importing torch.
"""

import importlib
import time

__version__ = "0.1.0"
IMPORTED_AT = time.perf_counter()  # a stage notebook's first cell imports ftkit, then the stage: the imports phase


def __getattr__(name):
    if name == "open_run":  # what every stage notebook calls first
        return importlib.import_module("ftkit.recipe.reading").open_run
    if name == "record":  # ... and last
        return importlib.import_module("ftkit.core.rundir").record
    raise AttributeError(f"module 'ftkit' has no attribute {name!r}")
