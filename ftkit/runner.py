"""Run a recipe: make the run directory, execute each stage's notebook with papermill, record status.

papermill reports a cell timeout or a dead kernel without an error banner in the notebook it writes, so
every exception it raises is recorded here as the stage's failure, and a stage that ends without recording
its metrics is a failure too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ftkit import recipe as recipes
from ftkit.io import read_json, update_json, write_atomic

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {"data": "01_data.ipynb", "sft": "02_sft.ipynb", "rl": "03_rl.ipynb", "eval": "04_eval.ipynb",
             "export": "05_export.ipynb"}
KERNEL_ENV = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
              "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
              # library deprecation notices and tqdm's widget notice say nothing about the run
              "PYTHONWARNINGS": "ignore::FutureWarning,ignore:IProgress not found"}
PACKAGES = ("ftkit", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "evaluate", "papermill",
            "nbconvert", "pydantic")


KERNEL = "ftkit"


def ensure_kernel() -> str:
    """Make sure the `ftkit` Jupyter kernel runs this interpreter (installed into sys.prefix if missing)."""
    import tempfile

    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        spec = manager.get_kernel_spec(KERNEL)
        if spec.argv and Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL
    except NoSuchKernel:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                         "--IPKernelApp.log_level=ERROR"],
                "display_name": "Python (ftkit)", "language": "python", "metadata": {"debugger": True}}
        (Path(tmp) / "kernel.json").write_text(json.dumps(spec, indent=1))
        manager.install_kernel_spec(tmp, KERNEL, prefix=sys.prefix)
    return KERNEL


def notebooks_dir() -> Path:
    return Path(os.environ.get("FTKIT_NOTEBOOKS", ROOT / "notebooks"))


def reports_dir() -> Path:
    return Path(os.environ.get("FTKIT_REPORTS", "reports"))


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def new_run_dir(cfg) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = reports_dir() / cfg.name / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = reports_dir() / cfg.name / f"{stamp}-{suffix}"
    return path


def open_run(recipe_path: str | Path, run_dir: str | Path):
    """Load a recipe for a notebook and make sure the run directory holds its resolved copy."""
    cfg = recipes.load(recipe_path)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / "recipe.yaml"
    if Path(recipe_path).resolve() != target.resolve():
        write_atomic(target, cfg.dump())
    return cfg


def environment(seed: int) -> dict:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"seed": seed, "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu, "git_commit": commit, "packages": versions}


@dataclass
class StageResult:
    stage: str
    ok: bool
    seconds: float
    error: str | None
    notebook: Path


def _error_text(exc: BaseException) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:  # PapermillExecutionError: the exception raised inside the notebook
        return f"{ename}: {evalue}".strip()
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no message'}"


class ProgressWatcher:
    """Reads `<run_dir>/progress.json` (written by the stage's kernel) every few seconds while a notebook runs and
    reports it through `on_event("progress", stage, figures)`: at each further tenth of the work, or once a minute,
    so that a long stage shows where it is without flooding the log."""

    def __init__(self, run_dir: Path, stage: str, on_event, poll_s: float = 2.0):
        import threading

        # absolute: papermill changes the working directory to the notebooks' while the stage runs
        self.path, self.stage, self.on_event, self.poll_s = (run_dir / "progress.json").resolve(), stage, on_event, poll_s
        self.path.unlink(missing_ok=True)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.started = time.perf_counter()

    def _watch(self):
        shown, last = (None, -1), 0.0
        while not self.stop.wait(self.poll_s):
            try:
                figures = read_json(self.path)
            except (OSError, ValueError):
                continue
            if not figures or figures.get("stage") != self.stage or not figures.get("total"):
                continue
            tenth = int(10 * figures["done"] / figures["total"])
            elapsed = time.perf_counter() - self.started
            if (figures["unit"], tenth) != shown or elapsed - last >= 60:
                shown, last = (figures["unit"], tenth), elapsed
                self.on_event("progress", self.stage, {**figures, "elapsed_s": round(elapsed)})

    def __enter__(self):
        if self.on_event:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)


def run_stage(stage: str, cfg, run_dir: Path, on_event=None) -> StageResult:
    """Execute one stage notebook into `<run_dir>/notebooks/` and record its status; its progress goes to
    `on_event("progress", stage, figures)` while it runs."""
    import papermill

    out = run_dir / "notebooks" / NOTEBOOKS[stage]
    out.parent.mkdir(parents=True, exist_ok=True)
    status_path, metrics_path = run_dir / "status.json", run_dir / "metrics.json"
    metrics = read_json(metrics_path, {})
    if stage in metrics:  # a rerun must record afresh; stale metrics must not pass for success
        metrics.pop(stage)
        write_atomic(metrics_path, json.dumps(metrics, indent=2))
    started, t0 = now(), time.perf_counter()
    update_json(status_path, stage, {"state": "running", "start": started, "end": None, "duration_s": None,
                                     "error": None, "notebook": str(out.relative_to(run_dir))})
    error = None
    os.environ.update(KERNEL_ENV)
    try:
        with ProgressWatcher(run_dir, stage, on_event):
            papermill.execute_notebook(
                str(notebooks_dir() / NOTEBOOKS[stage]), str(out),
                parameters={"recipe": str((run_dir / "recipe.yaml").resolve()), "run_dir": str(run_dir.resolve())},
                kernel_name=ensure_kernel(), cwd=str(notebooks_dir()), execution_timeout=cfg.cell_timeout,
                progress_bar=False, log_output=False)
    except Exception as exc:  # papermill raises for errors, timeouts and dead kernels alike
        error = _error_text(exc)
    if error is None and stage not in read_json(metrics_path, {}):
        error = f"the {stage} notebook finished without recording its metrics in metrics.json"
    seconds = time.perf_counter() - t0
    update_json(status_path, stage, {"state": "failed" if error else "done", "start": started, "end": now(),
                                     "duration_s": round(seconds, 1), "error": error,
                                     "notebook": str(out.relative_to(run_dir))})
    return StageResult(stage, error is None, seconds, error, out)


def prepare(cfg, run_dir: str | Path | None = None) -> Path:
    """Create the run directory with the resolved recipe and the environment record."""
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "recipe.yaml", cfg.dump())
    write_atomic(run_dir / "env.json", json.dumps(environment(cfg.seed), indent=2))
    return run_dir


def run(cfg, run_dir: str | Path | None = None, stages: list[str] | None = None, on_event=None):
    """Run `stages` (default: the recipe's) in order; stop at the first failure; always write the report.

    `on_event(kind, stage, result)` is called with kind "start" or "end" (for the CLI's progress lines).
    Returns (run_dir, [StageResult], report_path).
    """
    from ftkit import report

    stages = stages or cfg.stages
    run_dir = prepare(cfg, run_dir)
    results = []
    for stage in stages:
        if on_event:
            on_event("start", stage, None)
        result = run_stage(stage, cfg, run_dir, on_event)
        results.append(result)
        if on_event:
            on_event("end", stage, result)
        if not result.ok:
            for skipped in stages[stages.index(stage) + 1:]:
                update_json(run_dir / "status.json", skipped,
                            {"state": "not run", "start": None, "end": None, "duration_s": None,
                             "error": f"not run because {stage} failed", "notebook": None})
            break
    return run_dir, results, report.render(run_dir)
