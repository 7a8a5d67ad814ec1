"""Small file helpers: atomic writes and the shared JSON files of a run directory."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, text: str) -> Path:
    """Write text to a temporary file next to `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path, default=None):
    path = Path(path)
    if not path.is_file():
        return default
    return json.loads(path.read_text())


def update_json(path: str | Path, key: str, value) -> dict:
    """Set one top-level key of a JSON object file (e.g. one stage's entry in metrics.json)."""
    data = read_json(path, {})
    data[key] = value
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False))
    return data


def write_progress(run_dir: str | Path, stage: str, done: int, total: int, unit: str) -> None:
    """Where the running stage is (e.g. 12 of 40 steps), for `ftkit run` to show while the notebook executes."""
    write_atomic(Path(run_dir) / "progress.json", json.dumps({"stage": stage, "done": done, "total": total,
                                                              "unit": unit}))
