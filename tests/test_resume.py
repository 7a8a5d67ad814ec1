"""Runs that survive faults: stages skipped when up to date, training resumed after SIGKILL (also mid-save), dead
kernels recorded as failures."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ftkit import cli
from ftkit.core import rundir
from ftkit.core.io import read_json
from ftkit.run import fingerprints, runner
from ftkit.training import trainer
from tests.conftest import recipe_file

TRAINING = {"sft": {"max_steps": 12, "save_steps": 3}, "rl": {"max_steps": 6, "save_steps": 2}}


def _run(recipe, run_dir, *extra) -> int:
    return cli.main(["run", str(recipe), "--run-dir", str(run_dir), *extra])


def _launch(recipe, run_dir, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ftkit", "run", str(recipe), "--run-dir", str(run_dir), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill(proc: subprocess.Popen, kernel_only: bool = False) -> None:
    """SIGKILL the ftkit process and its kernel (or the kernel alone), as the OOM killer or a pre-emption would."""
    kernels = psutil.Process(proc.pid).children(recursive=True)
    assert kernels, "no kernel process was running"
    for victim in kernels if kernel_only else [proc, *kernels]:
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_for(proc, condition, what: str, timeout: float = 240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}")
        found = condition()
        if found:
            return found
        time.sleep(0.002)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """One uninterrupted run (data, sft, rl, eval) with checkpoints every 3 SFT and 2 RL steps."""

    root = tmp_path_factory.mktemp("resume")
    recipe = recipe_file(root, {
        "name": "tiny", "seed": 0, "model": {"id": str(tiny_model_dir), "lora_r": 4, "lora_alpha": 8},
        "data": {"task": "addition", "train_size": 48, "test_size": 16},
        "sft": {**TRAINING["sft"], "batch_size": 8, "learning_rate": 1.0e-2, "logging_steps": 1},
        "rl": {**TRAINING["rl"], "batch_size": 4, "num_generations": 2, "learning_rate": 1.0e-3, "logging_steps": 1,
               "max_completion_length": 4, "temperature": 1.5},
        "eval": {"batch_size": 8, "max_new_tokens": 4, "robustness_size": 0}}, file="tiny.yaml")
    assert _run(recipe, root / "reference") == 0
    return recipe, root / "reference"


def _history(run_dir, stage):
    """The logged training figures, timings left out; also TRL's `num_tokens` counter, which restarts from 0 when
    training resumes, and the closing `train_loss`, which transformers averages over the steps this process ran."""
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()
             if "time" not in k and "per_second" not in k and k not in ("num_tokens", "train_loss")}
            for h in read_json(run_dir / stage / "log_history.json")]


@pytest.mark.pipeline
def test_sigkill_at_a_random_sft_step_resumes_to_the_same_results(reference, tmp_path):
    recipe, ref = reference
    step = random.Random().randint(4, 11)  # after the first checkpoint (step 3), before the end (12)
    run_dir = tmp_path / "killed"
    proc = _launch(recipe, run_dir)
    progress = run_dir / "progress.json"
    _wait_for(proc, lambda: progress.is_file() and (read_json(progress) or {}).get("stage") == "sft"
              and read_json(progress)["done"] >= step, f"SFT step {step}")
    _kill(proc)
    proc.wait()
    status = read_json(run_dir / "status.json")
    assert rundir.stage_state(status["sft"]) == "interrupted", f"killed at step {step}: {status['sft']}"
    assert cli.main(["report", str(run_dir)]) == 0
    assert "interrupted" in (run_dir / "report.html").read_text()

    assert cli.main(["resume", str(run_dir)]) == 0, f"resume after a kill at step {step}"
    metrics, expected = read_json(run_dir / "metrics.json"), read_json(ref / "metrics.json")
    assert 3 <= metrics["sft"]["resumed_from_step"] <= step, (step, metrics["sft"])
    assert metrics["sft"]["steps"] == 12 and not (run_dir / "sft" / "checkpoints").exists()
    # same training and the same held-out results as the uninterrupted run (tolerance 1e-4 on losses)
    assert _history(run_dir, "sft") == _history(ref, "sft"), f"killed at step {step}"
    for model in ("base", "sft", "rl"):
        got, want = metrics["eval"][model], expected["eval"][model]
        assert got["accuracy"] == want["accuracy"] and got["answer_loss"] == pytest.approx(want["answer_loss"],
                                                                                             abs=1e-4), model
    assert read_json(run_dir / "status.json")["data"].get("reused"), "the finished data stage must not rerun"


@pytest.mark.pipeline
def test_kill_during_a_checkpoint_save_skips_the_partial_checkpoint(reference, tmp_path):
    """The kernel is killed while transformers writes checkpoint-6 (its folder holds some files, no completion
    marker); ftkit records the dead kernel as a failure, and the resumed run starts from checkpoint-3."""
    recipe, ref = reference
    run_dir = tmp_path / "mid-save"
    folder = run_dir / "sft" / "checkpoints" / "checkpoint-6"
    proc = _launch(recipe, run_dir, "--stages", "data,sft")
    _wait_for(proc, lambda: (folder / "adapter_model.safetensors").is_file()
              and not (folder / rundir.CHECKPOINT_MARKER).is_file(), "checkpoint-6 being written")
    _kill(proc, kernel_only=True)
    assert proc.wait(timeout=120) == cli.EXIT_FAILED
    assert folder.is_dir() and not (folder / rundir.CHECKPOINT_MARKER).exists(), "the kill did not land mid-save"
    status = read_json(run_dir / "status.json")
    assert status["sft"]["state"] == "failed" and "DeadKernelError" in status["sft"]["error"]
    assert "kernel process died" in status["sft"]["error"] and "sft" not in read_json(run_dir / "metrics.json")

    assert _run(recipe, run_dir, "--stages", "data,sft") == 0
    assert read_json(run_dir / "metrics.json")["sft"]["resumed_from_step"] == 3
    notebook = (run_dir / "notebooks" / "02_sft.ipynb").read_text()
    assert "checkpoint-6 is incomplete" in notebook and "deleted, not loaded" in notebook
    assert _history(run_dir, "sft") == _history(ref, "sft")


@pytest.mark.pipeline
def test_sigkill_during_rl_resumes_from_its_checkpoint(reference, tmp_path):
    recipe, ref = reference
    run_dir = tmp_path / "rl-killed"
    shutil.copytree(ref, run_dir)  # data and SFT done; RL killed after its checkpoint at step 2
    shutil.rmtree(run_dir / "rl")
    proc = _launch(recipe, run_dir, "--stages", "data,sft,rl")
    marker = run_dir / "rl" / "checkpoints" / "checkpoint-2" / rundir.CHECKPOINT_MARKER
    _wait_for(proc, lambda: read_json(run_dir / "status.json", {}).get("rl", {}).get("state") == "running"
              and marker.is_file(), "RL checkpoint 2")
    _kill(proc)
    proc.wait()
    assert _run(recipe, run_dir, "--stages", "data,sft,rl") == 0
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["rl"]["resumed_from_step"] in (2, 4) and metrics["rl"]["steps"] == 6
    assert _history(run_dir, "rl") == _history(ref, "rl")


def test_checkpoints_made_with_other_settings_are_not_loaded(tmp_path):
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    (folder / rundir.CHECKPOINT_MARKER).write_text(json.dumps({"step": 4, "fingerprint": "old"}))
    good = tmp_path / "checkpoint-2"
    good.mkdir()
    (good / rundir.CHECKPOINT_MARKER).write_text(json.dumps({"step": 2, "fingerprint": "new"}))
    assert trainer.resume_point(tmp_path, "new") == good
    assert not folder.exists()
    assert trainer.resume_point(tmp_path, "newer") is None


@pytest.mark.pipeline
def test_unchanged_stages_are_skipped_and_an_eval_change_reruns_only_eval(reference, tmp_path, capsys):
    recipe, ref = reference
    run_dir = tmp_path / "again"
    shutil.copytree(ref, run_dir)
    before = read_json(run_dir / "status.json")
    started = time.perf_counter()
    assert _run(recipe, run_dir) == 0
    assert time.perf_counter() - started < 60
    out = capsys.readouterr().out
    assert out.count("↷") == 4 and "▶" not in out and "parameters" not in out
    after = read_json(run_dir / "status.json")
    assert all(after[s]["start"] == before[s]["start"] and after[s]["reused"] for s in before)

    assert (run_dir / "eval" / "flips_rl.jsonl").is_file() and (run_dir / "eval" / "predictions_base.jsonl").is_file()
    assert _run(recipe, run_dir, "--set", "eval.max_new_tokens=3", "--set", "eval.models=[sft, rl]") == 0
    out = capsys.readouterr().out
    assert "▶ eval ... (changed: config)" in out and out.count("↷") == 3
    after = read_json(run_dir / "status.json")
    assert [s for s in before if after[s]["start"] != before[s]["start"]] == ["eval"]
    assert read_json(run_dir / "metrics.json")["sft"] == read_json(ref / "metrics.json")["sft"]
    # without the base model this time, no comparison with it survives from the earlier eval
    assert set(read_json(run_dir / "metrics.json")["eval"]) == {"sft", "rl"}
    assert not (run_dir / "eval" / "flips_rl.jsonl").exists() and not (run_dir / "eval" / "flips_sft.jsonl").exists()
    assert (run_dir / "eval" / "flips_rl_vs_sft.jsonl").is_file()
    page = (run_dir / "report.html").read_text()
    assert "rl against base" not in page and "sft against base" not in page


@pytest.mark.pipeline
def test_what_reruns_follows_what_changed(reference, tmp_path, monkeypatch):
    """`runner.plan` (what `ftkit run --run-dir` would execute) for one change at a time."""
    from ftkit import recipe as recipes

    recipe, ref = reference
    run_dir = tmp_path / "plan"
    shutil.copytree(ref, run_dir)
    stages = ["data", "sft", "rl", "eval"]

    def plan(*overrides):
        return runner.plan(recipes.load(recipe, list(overrides)), run_dir, stages)

    assert plan() == []
    assert plan("sft.learning_rate=0.02") == ["sft", "rl", "eval"]
    assert plan("rl.temperature=1.0") == ["rl", "eval"]
    assert plan("eval.batch_size=4") == ["eval"]
    assert plan("data.test_size=15") == stages
    assert plan("cell_timeout=100") == []  # how long a cell may run changes no result
    assert runner.plan(recipes.load(recipe), run_dir, stages, force=True) == stages
    # a notebook's source (not its outputs) is part of its stage's fingerprint
    notebooks = tmp_path / "notebooks"
    shutil.copytree(rundir.notebooks_dir(), notebooks)
    eval_nb = json.loads((notebooks / "04_eval.ipynb").read_text())
    eval_nb["cells"][0]["source"] = ["# Evaluation, edited\n"] + eval_nb["cells"][0]["source"][1:]
    (notebooks / "04_eval.ipynb").write_text(json.dumps(eval_nb))
    monkeypatch.setenv("FTKIT_NOTEBOOKS", str(notebooks))
    assert plan() == ["eval"]
    monkeypatch.delenv("FTKIT_NOTEBOOKS")
    # so is ftkit's own code: an editable install changes without a new version number
    package = tmp_path / "package"
    shutil.copytree(fingerprints.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprints, "PACKAGE_DIR", package)
    assert plan() == []
    (package / "stages" / "eval.py").write_text((package / "stages" / "eval.py").read_text() + "\n# edited\n")
    fingerprints.code_signature.cache_clear()
    assert plan() == stages
    monkeypatch.undo()
    assert plan() == []
    # the model's files are an input of every stage
    model_dir = Path(recipes.load(recipe).model.id)
    config = model_dir / "config.json"
    original = config.read_text()
    try:
        config.write_text(original.replace("{", '{\n  "ftkit_test": 1,', 1))
        assert plan() == stages
    finally:
        config.write_text(original)
    # a stage whose results were deleted runs again
    shutil.rmtree(run_dir / "rl")
    assert plan() == ["rl", "eval"]
