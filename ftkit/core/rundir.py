"""The run directory: the contract between the stages, and between the stages and what reads their results.

    reports/<recipe name>/<run id>/
      recipe.yaml  status.json  env.json  metrics.json  report.html  progress.json (while a stage runs)
      notebooks/<NN_stage>.ipynb                   the executed notebooks
      data/{train,test,validation,generalization}.jsonl  data/stats.json
      sft/ rl/   adapter/ (LoRA) or model/ (full fine-tuning), plan.json, log_history.json, checkpoints/,
                 train_result.json, accelerate.yaml (launch.shard),
                 tb/ (TensorBoard)
                 and launch.log (several processes); rl/samples.jsonl
      eval/{predictions,generalization,robustness,flips,judge}_<model>.jsonl
      export/merged/ export/adapter/

Every path of it is spelled here and only here; so are the stage order, the notebook of each stage and what each
stage builds on. The readers turn its files back into data (splits, predictions, training curves) for the stages,
the notebooks, the report and `ftkit compare`. Nothing here imports torch or a stage module.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections import defaultdict
from pathlib import Path

from ftkit.core import timing
from ftkit.core.io import read_json, read_jsonl, recover_dir, update_json, write_atomic

ROOT = Path(__file__).resolve().parents[2]  # the repository (ftkit/core/rundir.py)
STAGES = ("data", "sft", "rl", "eval", "export")  # in the order they run
NOTEBOOKS = {"data": "01_data.ipynb", "sft": "02_sft.ipynb", "rl": "03_rl.ipynb", "eval": "04_eval.ipynb",
             "export": "05_export.ipynb"}
BUILDS_ON = {"data": (), "sft": ("data",), "rl": ("data", "sft"), "eval": ("data", "sft", "rl"),
             "export": ("sft", "rl", "eval")}
assert set(NOTEBOOKS) == set(BUILDS_ON) == set(STAGES), "every stage has a notebook and a place in the order"

RECIPE, STATUS, ENV, METRICS, REPORT, PROGRESS = ("recipe.yaml", "status.json", "env.json", "metrics.json",
                                                 "report.html", "progress.json")
STATS, LOG_HISTORY, TRAIN_RESULT, LAUNCH_LOG, SAMPLES, PLAN = ("stats.json", "log_history.json", "train_result.json",
                                                               "launch.log", "samples.jsonl", "plan.json")
ACCELERATE_CONFIG = "accelerate.yaml"  # <stage>/: the accelerate config ftkit writes for launch.shard
CHECKPOINT_MARKER = "ftkit-complete.json"  # written into a checkpoint once transformers has written all of it
EVAL_FILES = ("predictions", "generalization", "robustness", "flips", "judge")  # eval/<kind>_<model>.jsonl
RESULTS = ("adapter", "model")  # what a training stage saves: a LoRA adapter or a whole model
EXPORTS = ("merged", "adapter", "gguf")
PHASES = "phases"  # metrics.json's key beside the stages': per stage, where its time went (ftkit.core.timing)


# ---------------------------------------------------------------- where things are


def notebooks_dir() -> Path:
    """The stage notebooks' sources (FTKIT_NOTEBOOKS, else the repository's notebooks/)."""
    return Path(os.environ.get("FTKIT_NOTEBOOKS", ROOT / "notebooks"))


def reports_dir() -> Path:
    """Where run directories go: FTKIT_REPORTS, else reports/ under the working directory."""
    return Path(os.environ.get("FTKIT_REPORTS", "reports"))


def new_run_dir(name: str) -> Path:
    """reports/<name>/<date-time>, with a suffix when that exists already."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = reports_dir() / name / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = reports_dir() / name / f"{stamp}-{suffix}"
    return path


def _known(name: str, allowed: tuple) -> None:
    if name not in allowed:
        raise ValueError(f"{name!r} is not part of a run directory here; one of {', '.join(allowed)}")


def path(run_dir: str | Path, name: str) -> Path:
    """A top-level file of the run: one of RECIPE, STATUS, ENV, METRICS, REPORT, PROGRESS."""
    _known(name, (RECIPE, STATUS, ENV, METRICS, REPORT, PROGRESS))
    return Path(run_dir) / name


def executed_notebook(run_dir: str | Path, stage: str) -> Path:
    """notebooks/<NN_stage>.ipynb: the stage's notebook as executed in this run."""
    return Path(run_dir) / "notebooks" / NOTEBOOKS[stage]


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    """<stage>/: the folder of a stage's artifacts."""
    return Path(run_dir) / stage


def split_path(run_dir: str | Path, name: str) -> Path:
    """data/<name>.jsonl: a split (train, test, validation, generalization) as the data stage wrote it."""
    return Path(run_dir) / "data" / f"{name}.jsonl"


def stats_path(run_dir: str | Path) -> Path:
    """data/stats.json: the data stage's counts, drops, lengths and checks."""
    return Path(run_dir) / "data" / STATS


def stage_file(run_dir: str | Path, stage: str, name: str) -> Path:
    """A training stage's file: PLAN, LOG_HISTORY, TRAIN_RESULT, LAUNCH_LOG, SAMPLES or ACCELERATE_CONFIG."""
    _known(name, (PLAN, LOG_HISTORY, TRAIN_RESULT, LAUNCH_LOG, SAMPLES, ACCELERATE_CONFIG))
    return stage_dir(run_dir, stage) / name


def tensorboard_dir(run_dir: str | Path, stage: str) -> Path:
    """<stage>/tb/: the stage's TensorBoard event files (`tensorboard --logdir <run_dir>` shows every stage)."""
    return stage_dir(run_dir, stage) / "tb"


def checkpoints_dir(run_dir: str | Path, stage: str) -> Path:
    """<stage>/checkpoints/: the training states `ftkit resume` continues from (removed once the result is saved)."""
    return stage_dir(run_dir, stage) / "checkpoints"


def result_dir(run_dir: str | Path, stage: str, kind: str) -> Path:
    """Where a training stage saves its result of `kind` (one of RESULTS)."""
    _known(kind, RESULTS)
    return stage_dir(run_dir, stage) / kind


def tuned_dir(run_dir: str | Path, stage: str) -> Path | None:
    """Where a training stage saved its result: `<stage>/adapter` (LoRA) or `<stage>/model` (full fine-tuning)."""
    for kind in RESULTS:
        if recover_dir(result_dir(run_dir, stage, kind)).is_dir():
            return result_dir(run_dir, stage, kind)
    return None


def eval_file(run_dir: str | Path, kind: str, model: str) -> Path:
    """eval/<kind>_<model>.jsonl, `kind` one of EVAL_FILES."""
    _known(kind, EVAL_FILES)
    return Path(run_dir) / "eval" / f"{kind}_{model}.jsonl"


def remove_eval_files(run_dir: str | Path, kinds=EVAL_FILES, model: str | None = None) -> None:
    """Delete an earlier eval's eval/<kind>_<model>.jsonl (every model's when `model` is None), so that a re-run eval
    leaves no result of a model or comparison it no longer makes."""
    for kind in kinds:
        _known(kind, EVAL_FILES)
        stale = [eval_file(run_dir, kind, model)] if model else (Path(run_dir) / "eval").glob(f"{kind}_*.jsonl")
        for path in stale:
            path.unlink(missing_ok=True)


def export_dir(run_dir: str | Path, kind: str) -> Path:
    """export/merged/, export/adapter/ or export/gguf/ (`kind` one of EXPORTS)."""
    _known(kind, EXPORTS)
    return Path(run_dir) / "export" / kind


# ---------------------------------------------------------------- recording results


def record(run_dir: str | Path, stage: str, metrics: dict) -> None:
    """Record one stage's metrics under its key in `metrics.json`, and the phases timed so far in this process
    (`ftkit.core.timing`) as its entry under `phases` (`ftkit run` adds the kernel's start and the notebook's own
    time)."""
    update_json(path(run_dir, METRICS), stage, metrics)
    record_phases(run_dir, stage, timing.seconds())


def record_phases(run_dir: str | Path, stage: str, seconds: dict[str, float]) -> None:
    """Where a stage's time went: its entry in metrics.json's `phases` (phase name: seconds)."""
    recorded = metrics(run_dir)
    update_json(path(run_dir, METRICS), PHASES, {**recorded.get(PHASES, {}), stage: seconds})


def phases(run_dir: str | Path) -> dict[str, dict[str, float]]:
    """metrics.json's `phases`: per stage that ran, the seconds of each of its phases (`ftkit.core.timing.PHASES`)."""
    return metrics(run_dir).get(PHASES, {})


def metrics(run_dir: str | Path) -> dict:
    """metrics.json: one key per stage, as the stages recorded them, and `phases` (where each stage's time went)."""
    return read_json(path(run_dir, METRICS), {})


def forget_metrics(run_dir: str | Path, stage: str) -> None:
    """Drop a stage's recorded metrics (a rerun must record afresh; stale metrics must not pass for success)."""
    recorded = metrics(run_dir)
    if stage in recorded or stage in recorded.get(PHASES, {}):
        recorded.pop(stage, None)
        recorded.get(PHASES, {}).pop(stage, None)
        write_atomic(path(run_dir, METRICS), json.dumps(recorded, indent=2))


def status(run_dir: str | Path) -> dict:
    """status.json: per stage its state, times, fingerprint, error and notebook."""
    return read_json(path(run_dir, STATUS), {})


def set_status(run_dir: str | Path, stage: str, entry: dict) -> None:
    """Replace a stage's entry in status.json (atomically)."""
    update_json(path(run_dir, STATUS), stage, entry)


def stage_state(entry: dict | None) -> str:
    """A stage's state from its status.json entry; "running" left behind by a process that is gone is
    "interrupted"."""
    import psutil

    if not entry:
        return "not run"
    state = entry.get("state", "not run")
    if state == "running" and entry.get("host") == platform.node() and entry.get("pid") \
            and not psutil.pid_exists(entry["pid"]):
        return "interrupted"
    return state


def running_fingerprint(run_dir: str | Path, stage: str) -> str | None:
    """The fingerprint `ftkit run` recorded for the stage it is running now (None when the notebook runs by hand):
    the one its checkpoints are marked with, so that only a run with the same settings resumes from them."""
    entry = status(run_dir).get(stage) or {}
    return entry.get("fingerprint") if entry.get("state") == "running" else None


def write_progress(run_dir: str | Path, stage: str, done: int, total: int, unit: str) -> None:
    """Where the running stage is (e.g. 12 of 40 steps), for `ftkit run` to show while the notebook executes."""
    write_atomic(path(run_dir, PROGRESS), json.dumps({"stage": stage, "done": done, "total": total, "unit": unit}))


# ---------------------------------------------------------------- readers


def load_split(run_dir: str | Path, name: str, empty_ok: bool = False) -> list[dict]:
    """The rows of a split the data stage wrote (missing, or empty unless `empty_ok`: an error that says to run the
    data stage). Train is empty where the recipe only evaluates (data.test_size: all)."""
    split = split_path(run_dir, name)
    if not split.is_file():
        raise FileNotFoundError(f"{split} is missing: run the data stage first (ftkit run RECIPE --stages data)")
    rows = read_jsonl(split)
    if not rows and not empty_ok:
        raise ValueError(f"{split} is empty: rerun the data stage")
    return rows


def has_split(run_dir: str | Path, name: str) -> bool:
    """Whether the data stage wrote a non-empty split `name` (validation and generalization are optional)."""
    split = split_path(run_dir, name)
    return split.is_file() and split.stat().st_size > 0


def eval_records(run_dir: str | Path, kind: str, model: str) -> list[dict]:
    """The records of eval/<kind>_<model>.jsonl ([] when there is none)."""
    return read_jsonl(eval_file(run_dir, kind, model), [])


def load_predictions(run_dir: str | Path, model: str) -> list[dict]:
    """The eval stage's predictions of `model` on the test split (missing: an error naming the file)."""
    found = eval_file(run_dir, "predictions", model)
    if not found.is_file():
        raise FileNotFoundError(f"{found} is missing: run the eval stage with {model!r} in eval.models")
    return read_jsonl(found)


def rl_samples(run_dir: str | Path) -> list[dict]:
    """Completions sampled during RL with each reward ([] for DPO, or before RL ran)."""
    return read_jsonl(stage_file(run_dir, "rl", SAMPLES), [])


def log_history(run_dir: str | Path, stage: str) -> list[dict]:
    """A training stage's log history (transformers' `state.log_history`; [] before it ran)."""
    return read_json(stage_file(run_dir, stage, LOG_HISTORY), [])


def series(history: list[dict], key: str) -> tuple[list, list]:
    """Steps and values of one logged quantity."""
    points = [(h["step"], h[key]) for h in history if key in h and "step" in h]
    return [p[0] for p in points], [p[1] for p in points]


def loss_curve(run_dir: str | Path, stage: str = "sft", key: str = "loss") -> tuple[list, list]:
    """Steps and values of `key` ("loss", or "eval_loss" on the validation split) from a stage's log history."""
    return series(log_history(run_dir, stage), key)


def reward_curve(run_dir: str | Path) -> tuple[list, list, list]:
    """Steps, reward means and reward stds of the RL stage."""
    points = [(h["step"], h["reward"], h.get("reward_std", 0.0)) for h in log_history(run_dir, "rl") if "reward" in h]
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


SIGNAL = ["frac_reward_zero_std", "completions/clipped_ratio"]  # GRPO/RLOO: how much of a step could teach
RL_CURVES = {"grpo": ["reward", "rewards/*", *SIGNAL, "kl", "completions/mean_length", "loss"],
             "rloo": ["reward", "rewards/*", *SIGNAL, "kl", "completions/mean_length", "loss"],
             "dpo": ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "loss"],
             "kto": ["rewards/chosen", "rewards/rejected", "rewards/margins", "kl", "loss"]}


def rl_curves(run_dir: str | Path) -> dict[str, tuple[list, list]]:
    """Every logged RL series worth plotting: name -> (steps, values). GRPO/RLOO: total reward, each reward
    function, KL to the reference, completion length, loss; DPO: chosen/rejected rewards, margin, accuracy, loss; KTO:
    desirable/undesirable rewards, margin, KL estimate, loss."""
    history = log_history(run_dir, "rl")
    margins = any("rewards/margins" in h for h in history)
    method = ("dpo" if any("rewards/accuracies" in h for h in history) else "kto") if margins else "grpo"
    found = defaultdict(lambda: ([], []))
    for entry in history:
        for key, value in entry.items():
            wanted = key in RL_CURVES[method] or (method == "grpo" and key.startswith("rewards/")
                                                  and key.endswith("/mean"))
            if wanted and isinstance(value, (int, float)) and "step" in entry:
                found[key][0].append(entry["step"])
                found[key][1].append(value)
    return {k: found[k] for k in sorted(found, key=lambda k: (k != "reward", k))}
