"""No secret in any artifact, atomic files (a kill or a full disk never leaves half a file), safe loading, names that
stay inside the run directory, and the same metrics from the same recipe and seed."""

from __future__ import annotations

import errno
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from ftkit import cli
from ftkit import recipe as recipes
from ftkit.core import io, machine, rundir
from ftkit.core.io import read_json
from ftkit.recipe.reading import _Loader
from tests.conftest import recipe_file, tiny

ROOT = Path(__file__).resolve().parent.parent
CANARIES = {"HF_TOKEN": "hf_CANARYcanary0123456789", "WANDB_API_KEY": "wandb-CANARY-0123456789abcdef",
            "MY_SERVICE_KEY": "svc-CANARY-key-42424242", "GITHUB_ACCESS_TOKEN": "ghp_CANARYtoken99999999"}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.pipeline
def test_no_secret_from_the_environment_reaches_any_artifact(tmp_path, monkeypatch, capsys, tiny_model_dir):
    """Canary secrets in the environment; a user's reward function even prints two of them. Every file of the run
    directory (notebooks, recipe, report, logs, models, JSON) and the CLI's output are scanned byte by byte."""
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "leaky.py").write_text(textwrap.dedent('''
        import os

        def leaky(completions, **kwargs):
            print("debugging with", os.environ["HF_TOKEN"], os.environ["MY_SERVICE_KEY"])
            return [0.0] * len(completions)
    '''))
    recipe = recipe_file(tmp_path, tiny(tiny_model_dir), stages=["data", "rl", "eval"], rl={"rewards": {"task": 1.0, "leaky.py:leaky": 0.5}}, file="tiny.yaml")
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0
    printed = capsys.readouterr()
    files = _files(run_dir)
    assert {"recipe.yaml", "env.json", "status.json", "metrics.json", "report.html", "notebooks/03_rl.ipynb"} <= set(files)
    assert any(path.startswith("rl/tb/events.out.tfevents") for path in files), "TensorBoard's files are scanned too"
    for name, value in CANARIES.items():
        leaks = [path for path, content in files.items() if value.encode() in content]
        assert not leaks, f"{name} found in {leaks}"
        assert value not in printed.out + printed.err
    rl_notebook = files["notebooks/03_rl.ipynb"].decode()
    assert "debugging with *** ***" in rl_notebook  # the printed secrets were there, and were removed


def test_secret_values_and_redaction():
    env = {"HF_TOKEN": "hf_abcdefgh12", "WANDB_API_KEY": "0123456789", "aws_secret_access_key": "xyzxyzxyz1",
           "PATH": "/usr/bin:/bin", "SHORT_TOKEN": "abc", "HOME": "/root"}
    assert io.secret_values(env) == ["hf_abcdefgh12", "0123456789", "xyzxyzxyz1"]
    assert io.redact("a hf_abcdefgh12 b xyzxyzxyz1", io.secret_values(env)) == "a *** b ***"


def test_loading_is_safe():
    """Weights: safetensors, and any torch.load with weights_only=True; YAML through a SafeLoader; remote code
    off unless the recipe says so."""
    sources = {p: p.read_text() for p in (ROOT / "ftkit").rglob("*.py")}
    for path, text in sources.items():
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert "pickle" not in text, path
        for call in re.findall(r"yaml\.load\([^)]*\)", text):
            assert "Loader=_Loader" in call, f"{path}: {call}"
    assert issubclass(_Loader, yaml.SafeLoader)
    assert recipes.Recipe(name="x").model.trust_remote_code is False
    assert "safe_serialization=False" not in "".join(sources.values())


def test_a_recipe_cannot_run_code_or_escape_the_run_directory(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(recipes.RecipeError):
        recipes.load(evil)
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()
    for name in ("../../etc", "/tmp/x", "a/b", "..", ".hidden"):
        recipe_file(tmp_path, {"name": name})
        with pytest.raises(recipes.RecipeError, match="name"):
            recipes.load(tmp_path / "r.yaml")
    recipe_file(tmp_path, {"name": "ok", "eval": {"extra": {"../../x": str(tmp_path)}}})
    with pytest.raises(recipes.RecipeError, match="extra label"):
        recipes.load(tmp_path / "r.yaml")


@pytest.mark.pipeline
def test_sweep_run_directories_stay_under_the_reports_folder(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("FTKIT_REPORTS", str(tmp_path / "reports"))
    recipe = recipe_file(tmp_path, tiny(tiny_model_dir), stages=["data"], data={"task": "addition", "train_size": 20, "test_size": 8}, file="tiny.yaml")
    assert cli.main(["run", str(recipe), "--sweep", "name=../../../escaped,x/../../y"]) == cli.EXIT_INVALID
    assert cli.main(["run", str(recipe), "--sweep", "data.test_size=8,9"]) == 0
    made = [p for p in (tmp_path / "reports").rglob("status.json")]
    assert len(made) == 2 and all(p.resolve().is_relative_to((tmp_path / "reports" / "tiny").resolve()) for p in made)
    assert not (tmp_path / "escaped").exists()


# ---------------------------------------------------------------- atomic files and a full disk


class _FullDisk:
    """A file object whose writes stop halfway with ENOSPC, as on a full disk."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, text):
        self.handle.write(text[: len(text) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_a_full_disk_keeps_the_old_file_and_says_so(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    io.write_atomic(target, json.dumps({"old": 1}))
    real_fdopen = os.fdopen
    monkeypatch.setattr(io.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(io.DiskFull, match=r"no space left to write .*metrics.json \(.* MB free") as caught:
        io.write_atomic(target, json.dumps({"new": "x" * 10_000}))
    assert caught.value.errno == errno.ENOSPC and "ftkit resume" in str(caught.value)
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_a_failed_folder_save_keeps_the_previous_folder(tmp_path):
    dest = tmp_path / "sft" / "adapter"
    with io.atomic_dir(dest) as staging:
        (staging / "weights").write_text("v1")
    with pytest.raises(io.DiskFull):
        with io.atomic_dir(dest) as staging:
            (staging / "weights").write_text("v2 half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (dest / "weights").read_text() == "v1" and sorted(p.name for p in dest.parent.iterdir()) == ["adapter"]
    # a kill between the two renames leaves the old folder aside; the next reader puts it back
    os.replace(dest, dest.with_name(".adapter.old"))
    assert rundir.tuned_dir(tmp_path, "sft") == dest and (dest / "weights").read_text() == "v1"


def test_sigkill_during_writes_leaves_the_old_or_the_new_file(tmp_path):
    """A writer process rewrites a 2 MB JSON file in a loop and is SIGKILLed at 20 random moments: the file is
    always one of the two complete versions."""
    target = tmp_path / "status.json"
    writer = textwrap.dedent(f'''
        import json, sys
        from ftkit.core.io import write_atomic
        versions = [json.dumps({{"v": v, "pad": str(v) * 2_000_000}}) for v in (1, 2)]
        write_atomic({str(target)!r}, versions[0])
        print("ready", flush=True)
        i = 0
        while True:
            i += 1
            write_atomic({str(target)!r}, versions[i % 2])
    ''')
    import random

    rng = random.Random(8)
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert json.loads(target.read_text())["v"] in (1, 2)


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True).returncode
    return ok == 0


@pytest.mark.pipeline
def test_a_real_full_disk_fails_the_run_clearly_and_keeps_earlier_runs(tmp_path, capsys, tiny_model_dir):
    """A 4 MB tmpfs holds an earlier run directory and is then filled up; a new run on it fails with a message
    that names the disk problem, and the earlier run's files are byte for byte unchanged."""
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN (the simulated full-disk tests still run)")
    try:
        earlier = disk / "tiny" / "earlier"
        recipe = recipe_file(tmp_path, tiny(tiny_model_dir), stages=["data"], file="tiny.yaml")
        assert cli.main(["run", str(recipe), "--run-dir", str(earlier)]) == 0
        before = _files(earlier)
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - 24 * 1024))
        capsys.readouterr()
        code = cli.main(["run", str(recipe), "--run-dir", str(disk / "tiny" / "new")])
        printed = capsys.readouterr()
        assert code == cli.EXIT_FAILED
        assert re.search(r"no space left|disk is full", printed.err, re.IGNORECASE), printed.err
        assert _files(earlier) == before
        status = read_json(disk / "tiny" / "new" / "status.json", {})  # if written at all, a whole file
        assert status.get("data", {}).get("state") in (None, "running", "failed")
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ---------------------------------------------------------------- determinism

# what differs between two runs of one recipe: timings, and the memory free at the time (a plan's estimate)
TIMINGS = re.compile(r"seconds|_s$|runtime|per_second|^start$|^end$|time|^available_gb$")


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not TIMINGS.search(k)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_same_recipe_and_seed_give_the_same_metrics(tiny_run, tmp_path):
    code, first = tiny_run
    assert code == 0
    assert cli.main(["run", str(first.parent / "tiny.yaml"), "--run-dir", str(tmp_path / "second")]) == 0
    a, b = read_json(first / "metrics.json"), read_json(tmp_path / "second" / "metrics.json")
    assert set(a) == {"data", "sft", "rl", "eval", rundir.PHASES}
    a.pop(rundir.PHASES), b.pop(rundir.PHASES)  # seconds only
    assert _without_timings(a) == _without_timings(b)
    assert (first / "eval" / "predictions_rl.jsonl").read_text() == \
        (tmp_path / "second" / "eval" / "predictions_rl.jsonl").read_text()
    env, page = read_json(first / "env.json"), (first / "report.html").read_text()
    assert env["seed"] == 0 and env["packages"]["torch"] and env["cpu_count"]
    assert env["cpu"]["model"] and env["cpu"]["bf16"] == machine.cpu_computes_bf16()
    assert set(env["cpu"]["flags"]) <= set(machine.SHOWN_FLAGS)
    for recorded in ('"seed": 0', f'"torch": "{env["packages"]["torch"]}"', '"cpu_count"', '"platform"',
                     '"avx512_bf16"' if "avx512_bf16" in env["cpu"]["flags"] else '"bf16": false'):
        assert html.escape(recorded) in page
    assert "Machine:</b> CPU " + html.escape(machine.describe_cpu(env["cpu"])) in page
    auto = env["dtype_auto"]  # the tiny recipe's dtype is auto: what it gave here, for both uses, and why
    assert {auto["training"]["dtype"], auto["generation"]["dtype"]} <= {"float32", "bfloat16"}
    assert "dtype auto:</b> training in " + auto["training"]["dtype"] in page
