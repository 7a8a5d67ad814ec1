"""ftkit: declarative, notebook-driven fine-tuning of LLMs.

A recipe (YAML) says what to run; a notebook per stage tells the story; this package does the work.
Submodules load lazily so that `ftkit validate` answers without importing torch.
"""

import importlib

__version__ = "0.1.0"
_SUBMODULES = {"data", "evaluation", "io", "models", "recipe", "report", "rl", "runner", "sft", "tasks"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"ftkit.{name}")
    if name == "open_run":
        return importlib.import_module("ftkit.runner").open_run
    if name == "record":
        return importlib.import_module("ftkit.report").record
    raise AttributeError(f"module 'ftkit' has no attribute {name!r}")
