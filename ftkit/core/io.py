"""Small file and process helpers: atomic writes, the shared JSON files of a run directory, keeping secrets out of
files, and subprocesses whose failures keep their reason.

Every file a run directory holds is written under a temporary name and renamed into place, so a kill at any moment
leaves the old version or the new one, never half of either; a full disk raises `DiskFull`, which names the file and
the free space, and the earlier version stays where it was.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

SECRET_NAMES = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFull(OSError):
    """Writing a run's file failed for lack of space; the message says where and how much is free."""


def _free_mb(path: Path) -> float:
    for parent in (path, *path.parents):
        if parent.exists():
            return shutil.disk_usage(parent).free / 2**20
    return float("nan")


def disk_full(exc: OSError, path: str | Path) -> DiskFull:
    path = Path(path)
    return DiskFull(exc.errno, f"no space left to write {path} ({_free_mb(path.parent):.1f} MB free on its disk): "
                               "free some space or use a --run-dir on another disk, then `ftkit resume <run dir>`; "
                               "files written before are unchanged")


def write_atomic(path: str | Path, text: str) -> Path:
    """Write text to a temporary file next to `path`, flush it to disk, then rename it over `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, DiskFull) and exc.errno in NO_SPACE:
            raise disk_full(exc, path) from exc
        raise
    return path


@contextmanager
def atomic_dir(dest: str | Path):
    """Yield an empty staging folder next to `dest`; when the block ends without error, the staging folder replaces
    `dest` (the old one is renamed aside first and removed last, and `recover_dir` restores it if a kill comes in
    between). On an error the staging folder is removed and `dest` is untouched."""
    dest = Path(dest)
    staging, aside = dest.with_name(f".{dest.name}.partial"), dest.with_name(f".{dest.name}.old")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        yield staging
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, DiskFull) and exc.errno in NO_SPACE:
            raise disk_full(exc, dest) from exc
        raise
    recover_dir(dest)
    shutil.rmtree(aside, ignore_errors=True)
    if dest.exists():
        os.replace(dest, aside)
    os.replace(staging, dest)
    shutil.rmtree(aside, ignore_errors=True)


def recover_dir(dest: str | Path) -> Path:
    """Put back a folder that `atomic_dir` had renamed aside when a kill stopped it before the new one was in place."""
    dest = Path(dest)
    aside = dest.with_name(f".{dest.name}.old")
    if aside.exists() and not dest.exists():
        os.replace(aside, dest)
    return dest


def read_json(path: str | Path, default=None):
    path = Path(path)
    if not path.is_file():
        return default
    return json.loads(path.read_text())


def read_jsonl(path: str | Path, default=None) -> list:
    """The objects of a JSON Lines file, one per non-empty line (`default` when there is no file; an error without
    one)."""
    path = Path(path)
    if default is not None and not path.is_file():
        return default
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: str | Path, records) -> Path:
    """Write records as JSON Lines, atomically."""
    return write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def update_json(path: str | Path, key: str, value) -> dict:
    """Set one top-level key of a JSON object file (e.g. one stage's entry in metrics.json)."""
    data = read_json(path, {})
    data[key] = value
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False))
    return data


def secret_values(environ=None) -> list[str]:
    """Values of environment variables named like a secret (HF_TOKEN, WANDB_API_KEY, anything with KEY, TOKEN,
    SECRET or PASSWORD in its name) that are long enough to be one; longest first."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if SECRET_NAMES.search(k) and len(v) >= 8}
    return sorted(values, key=lambda v: (-len(v), v))


def redact(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every secret value replaced by `***`.

    >>> redact("url https://x?token=hf_abcdefgh123", ["hf_abcdefgh123"])
    'url https://x?token=***'
    """
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, "***")
    return text


class CommandFailed(RuntimeError):
    """A subprocess exited non-zero; the message holds its exit code and the end of what it wrote to stderr."""


def run_command(args: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run `args`; on a non-zero exit raise `CommandFailed` naming `what`, the exit code and the last lines of its
    error output (secrets removed), instead of a bare exit status.

    >>> run_command(["python3", "-c", "import sys; sys.exit('no wheel for this platform')"], "download")
    Traceback (most recent call last):
    ...
    ftkit.core.io.CommandFailed: download failed (exit code 1): no wheel for this platform
    """
    done = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout or "").strip().splitlines()[-5:]) or "no output"
        raise CommandFailed(f"{what} failed (exit code {done.returncode}): {redact(tail)}")
    return done
