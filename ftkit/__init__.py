"""ftkit: declarative, notebook-driven fine-tuning of LLMs.

A recipe (YAML) says what to run; a notebook per stage tells the story; this package does the work. Its modules sit
in three layers, and imports run one way, downwards (tests/test_layers.py checks it, function-local imports too):

    above   runner  fingerprints  cli              run the stages' notebooks, decide what is up to date
            report  display  compare               read the run directory only: no torch, no stage module
    stages  data  sft  rl  eval  export            one per recipe section and notebook
            sources  models  preflight  training  launch  generation  judge  default_model   what the stages share
    below   rundir  io  recipe  rows  answers  tasks  rewards  metrics  robustness  machine  sandbox   no torch

Submodules load lazily, so that `ftkit validate` and `ftkit report` answer without importing torch.
"""

import importlib

__version__ = "0.1.0"
_SUBMODULES = {"answers", "cli", "compare", "data", "default_model", "display", "eval", "export", "fingerprints",
               "generation", "io", "judge", "launch", "machine", "metrics", "models", "preflight", "recipe", "report",
               "rewards", "robustness", "rows", "rl", "rundir", "runner", "sandbox", "sft", "sources", "tasks",
               "training"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"ftkit.{name}")
    if name in ("open_run", "record"):  # what every stage notebook calls first and last
        return getattr(importlib.import_module("ftkit.rundir"), name)
    raise AttributeError(f"module 'ftkit' has no attribute {name!r}")
