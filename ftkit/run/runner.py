"""Run a recipe: make the run directory, execute each stage's notebook with papermill, record status.

papermill reports a cell timeout or a dead kernel without an error banner in the notebook it writes, so
every exception it raises is recorded here as the stage's failure, and a stage that ends without recording
its metrics is a failure too. A stage whose fingerprint (`ftkit.run.fingerprints`) matches its last completed run in the
same run directory is skipped; a stage left "running" by a process that no longer exists reads as interrupted.
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
from pathlib import Path

from ftkit.core import machine, rundir, timing
from ftkit.core.io import NO_SPACE, read_json, redact, secret_values, write_atomic
from ftkit.run import fingerprints, kernels

log = logging.getLogger(__name__)

KERNEL_ENV = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
              "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
              # library deprecation notices and tqdm's widget notice say nothing about the run
              "PYTHONWARNINGS": "ignore::FutureWarning,ignore:IProgress not found"}
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


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def environment(seed: int, model_id: str | None = None, dtype: str | None = None) -> dict:
    """What env.json records: versions, the machine, and, for `model.dtype: auto`, the dtype it gives here for
    training and for generation with the reason (`ftkit.models.dtypes`)."""
    import torch

    from ftkit.models import dtypes
    from ftkit.models.offline import OFFLINE

    versions = machine.package_versions()
    try:
        commit = subprocess.run(["git", "-C", str(rundir.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"seed": seed, "python": platform.python_version(), "platform": platform.platform(),
            "cpu": machine.cpu(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "git_commit": commit, "packages": versions,
            **({"dtype_auto": dtypes.describe()} if dtype == "auto" else {}),
            **({"model_terms": OFFLINE[model_id].licence} if model_id in OFFLINE and OFFLINE[model_id].terms else {})}


@dataclass
class StageResult:
    stage: str
    ok: bool
    seconds: float
    error: str | None
    notebook: Path
    warnings: tuple[str, ...] = ()  # the stage's own, from its metrics (e.g. data: a test split larger than train)


def _error_text(exc: BaseException, run_dir: Path) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:  # PapermillExecutionError: the exception raised inside the notebook
        text = f"{ename}: {evalue}".strip()
    else:
        lines = str(exc).strip().splitlines()
        text = f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"
        if type(exc).__name__ == "DeadKernelError":
            text += (" (the kernel process died: killed for lack of memory, or by a signal; `ftkit resume "
                     f"{run_dir}` continues from the last checkpoint)")
    if getattr(exc, "errno", None) in NO_SPACE or any(f"[Errno {e}]" in text for e in NO_SPACE):
        import shutil

        text += (f" — the disk is full ({shutil.disk_usage(run_dir).free / 2**20:.0f} MB free under {run_dir}): free "
                 f"space, then `ftkit resume {run_dir}`")
    return redact(text)


def _redact_notebook(path: Path) -> None:
    """Remove secret values (see `ftkit.core.io.secret_values`) from an executed notebook, should any have been printed."""
    secrets = secret_values()
    if secrets and path.is_file():
        text = path.read_text()
        clean = redact(text, secrets)
        if clean != text:
            log.warning("removed a secret value from %s", path)
            write_atomic(path, clean)


class ProgressWatcher:
    """Reads `<run_dir>/progress.json` (written by the stage's kernel) every few seconds while a notebook runs and
    reports it through `on_event("progress", stage, figures)`: at each further tenth of the work, or once a minute,
    so that a long stage shows where it is without flooding the log."""

    def __init__(self, run_dir: Path, stage: str, on_event, poll_s: float = 2.0):
        import threading

        # absolute: papermill changes the working directory to the notebooks' while the stage runs
        self.path = rundir.path(run_dir, rundir.PROGRESS).resolve()
        self.stage, self.on_event, self.poll_s = stage, on_event, poll_s
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


def cell_times(notebook: Path) -> list[tuple[float, float]]:
    """(start, end) of each executed code cell of a notebook papermill wrote, in seconds since the epoch."""
    cells = []
    for cell in read_json(notebook, {}).get("cells", []):
        meta = cell.get("metadata", {}).get("papermill", {})
        if cell.get("cell_type") == "code" and meta.get("start_time") and meta.get("end_time"):
            cells.append(tuple(dt.datetime.fromisoformat(meta[k]).timestamp() for k in ("start_time", "end_time")))
    return cells


def run_stage(stage: str, cfg, run_dir: Path, on_event=None, fingerprint: dict | None = None,
              ahead: kernels.Ahead | None = None) -> StageResult:
    """Execute one stage notebook into `<run_dir>/notebooks/` and record its status and fingerprint; its progress
    goes to `on_event("progress", stage, figures)` while it runs. `ahead`: a kernel started for it ahead
    (`ftkit.run.kernels`; a wait for its warm-up counts in the stage's time), shut down here when the notebook ends;
    without one papermill starts the kernel."""
    import papermill

    fingerprint = fingerprint or fingerprints.fingerprint(cfg, run_dir, stage)
    out = rundir.executed_notebook(run_dir, stage)
    out.parent.mkdir(parents=True, exist_ok=True)
    rundir.forget_metrics(run_dir, stage)
    started, t0, wall_start = now(), time.perf_counter(), time.time()
    km = ahead.take() if ahead else None
    record = {"fingerprint": fingerprint["fingerprint"], "fingerprint_parts": fingerprint["parts"],
              "pid": os.getpid(), "host": platform.node(), "kernel": "started ahead" if km else "started with the stage"}
    rundir.set_status(run_dir, stage, {"state": "running", "start": started, "end": None, "duration_s": None,
                                       "error": None, "notebook": str(out.relative_to(run_dir)), **record})
    error = None
    os.environ.update(KERNEL_ENV)
    parameters = {"recipe": str(rundir.path(run_dir, rundir.RECIPE).resolve()), "run_dir": str(run_dir.resolve())}
    if not all(name.isidentifier() for name in parameters):  # papermill writes each name into the notebook as code
        raise ValueError(f"notebook parameter names must be identifiers: {sorted(parameters)}")
    try:
        with ProgressWatcher(run_dir, stage, on_event):
            papermill.execute_notebook(
                str(rundir.notebooks_dir() / rundir.NOTEBOOKS[stage]), str(out), parameters=parameters,
                kernel_name=ensure_kernel(), cwd=str(rundir.notebooks_dir()), execution_timeout=cfg.cell_timeout,
                progress_bar=False, log_output=False, km=km, shutdown_kernel="immediate")
    except Exception as exc:  # papermill raises for errors, timeouts and dead kernels alike
        error = _error_text(exc, run_dir)
    finally:
        if km is not None:
            kernels.shut_down(km)
    _redact_notebook(out)
    if error is None and stage not in rundir.metrics(run_dir):
        error = f"the {stage} notebook finished without recording its metrics in {rundir.METRICS}"
    seconds = time.perf_counter() - t0
    if error is None:
        inside = rundir.phases(run_dir).get(stage, {})
        rundir.record_phases(run_dir, stage, timing.completed(inside, cell_times(out), wall_start, time.time()))
    rundir.set_status(run_dir, stage, {"state": "failed" if error else "done", "start": started, "end": now(),
                                       "duration_s": round(seconds, 1), "error": error,
                                       "notebook": str(out.relative_to(run_dir)), **record})
    warnings = tuple(rundir.metrics(run_dir).get(stage, {}).get("warnings", ())) if error is None else ()
    return StageResult(stage, error is None, seconds, error, out, warnings)


def _start_ahead(cfg, run_dir: Path, later: list[str], running: set[str], force: bool) -> dict:
    """{stage: kernels.Ahead} for the next of the `later` stages, where it will run (it is not up to date, or it
    builds on a stage that runs), so that its kernel starts and imports while the stages before it run."""
    if not later:
        return {}
    stage = later[0]
    if not force and _up_to_date(run_dir, stage, fingerprints.fingerprint(cfg, run_dir, stage), running):
        return {}
    os.environ.update(KERNEL_ENV)
    try:
        return {stage: kernels.Ahead(ensure_kernel(), rundir.notebooks_dir() / rundir.NOTEBOOKS[stage],
                                     rundir.notebooks_dir(), rundir.path(run_dir, rundir.RECIPE).resolve())}
    except Exception as exc:  # its stage starts its own kernel, as without this
        log.warning("could not start the %s stage's kernel ahead: %s", stage, exc)
        return {}


def prepare(cfg, run_dir: str | Path | None = None) -> Path:
    """Create the run directory with the resolved recipe and the environment record."""
    run_dir = Path(run_dir) if run_dir else rundir.new_run_dir(cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stage in rundir.NOTEBOOKS:  # a notebook autosaved by papermill before a kill, say
        _redact_notebook(rundir.executed_notebook(run_dir, stage))
    write_atomic(rundir.path(run_dir, rundir.RECIPE), cfg.dump())
    write_atomic(rundir.path(run_dir, rundir.ENV), json.dumps(environment(cfg.seed, cfg.model.id, cfg.model.dtype), indent=2))
    return run_dir


def plan(cfg, run_dir: str | Path | None, stages: list[str], force: bool = False) -> list[str]:
    """The stages among `stages` that `run` would execute in `run_dir` (the others are up to date there)."""
    if force or run_dir is None or not rundir.path(run_dir, rundir.STATUS).is_file():
        return list(stages)
    todo = []
    for stage in stages:
        if not _up_to_date(run_dir, stage, fingerprints.fingerprint(cfg, run_dir, stage), set(todo)):
            todo.append(stage)
    return todo


def _up_to_date(run_dir: Path, stage: str, fingerprint: dict, ran: set[str]) -> bool:
    """Done with this fingerprint, and no stage it builds on runs (or ran) now."""
    return not ran & set(rundir.BUILDS_ON[stage]) and fingerprints.is_done(run_dir, stage, fingerprint)


def run(cfg, run_dir: str | Path | None = None, stages: list[str] | None = None, on_event=None,
        force: bool = False):
    """Run `stages` (default: the recipe's) in order; skip each whose fingerprint matches its last completed run in
    `run_dir` (unless `force`, or a stage it builds on ran now); stop at the first failure; always write the report.

    `on_event(kind, stage, detail)` is called with kind "skip" (detail: the status entry), "start" (detail: the
    changed fingerprint parts, or "interrupted"), "progress" and "end" (a StageResult), for the CLI's lines.
    Returns (run_dir, [StageResult], report_path).
    """
    from ftkit.report import page

    stages = stages or cfg.stages
    run_dir = prepare(cfg, run_dir)
    results, ran, ahead = [], set(), {}
    try:
        for index, stage in enumerate(stages):
            fingerprint = fingerprints.fingerprint(cfg, run_dir, stage)
            entry = rundir.status(run_dir).get(stage)
            if not force and _up_to_date(run_dir, stage, fingerprint, ran):
                rundir.set_status(run_dir, stage, {**entry, "reused": now()})
                if stage in ahead:
                    ahead.pop(stage).discard()
                if on_event:
                    on_event("skip", stage, entry)
                continue
            if on_event:
                interrupted = (rundir.stage_state(entry) == "interrupted"
                               and entry.get("fingerprint") == fingerprint["fingerprint"])
                on_event("start", stage, "interrupted" if interrupted else fingerprints.changed(entry, fingerprint))
            warm = ahead.pop(stage, None)
            ahead.update(_start_ahead(cfg, run_dir, stages[index + 1:], ran | {stage}, force))
            result = run_stage(stage, cfg, run_dir, on_event, fingerprint, ahead=warm)
            ran.add(stage)
            results.append(result)
            if on_event:
                on_event("end", stage, result)
            if not result.ok:
                for skipped in stages[index + 1:]:  # their recorded results no longer follow
                    rundir.set_status(run_dir, skipped, {"state": "not run", "start": None, "end": None,
                                                         "duration_s": None, "error": f"not run because {stage} failed",
                                                         "notebook": None})
                break
    finally:
        for kernel in ahead.values():
            kernel.discard()
    report_path = rundir.path(run_dir, rundir.REPORT)
    if ran or not report_path.is_file():  # nothing ran: the report already shows these very results
        report_path = page.render(run_dir)
    return run_dir, results, report_path
