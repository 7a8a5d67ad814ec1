"""Skip what is done: a stage's fingerprint covers the recipe settings it reads, its notebook's source, the ftkit and
library versions, ftkit's own source (an editable install changes without a new version), the content of its input
files, and the fingerprints of the stages it builds on. `ftkit run
--run-dir DIR` and `ftkit resume DIR` skip a stage whose fingerprint matches the one recorded when it last completed;
so changing only `eval:` re-runs only eval, and changing `sft:` re-runs SFT and everything after it. The runner
records the fingerprint of the stage it runs in status.json; training marks its checkpoints with it
(`ftkit.training.trainer`), so that only a run with the same settings resumes from them.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
from pathlib import Path

from ftkit.core import machine, rundir
from ftkit.models import offline

HASHED_MAX_BYTES = 64 * 2**20  # files up to this size are hashed; larger ones (model weights) by size and mtime
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # ftkit's own code: its modules and the report's templates


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _settings(cfg, stage: str) -> dict:
    """The recipe settings a stage reads (so that e.g. an eval-only change leaves data, SFT and RL alone)."""
    full = cfg.model_dump(mode="json")
    model_files = {k: full["model"][k] for k in ("id", "revision", "trust_remote_code")}
    rl_method = cfg.rl.method if "rl" in cfg.stages else None
    return {
        # the data stage tokenizes with the model's tokenizer, filters by sft.max_length, checks rows for rl.method
        "data": {"seed": cfg.seed, "data": full["data"], "model": model_files, "max_length": cfg.sft.max_length,
                 "rl_method": rl_method},
        "sft": {"seed": cfg.seed, "model": full["model"], "sft": full["sft"], "launch": full["launch"]},
        "rl": {"seed": cfg.seed, "model": full["model"], "rl": full["rl"], "max_length": cfg.sft.max_length,
               "launch": full["launch"]},
        "eval": {"seed": cfg.seed, "model": full["model"], "eval": full["eval"], "max_length": cfg.sft.max_length},
        "export": {"model": full["model"], "export": full["export"]},
    }[stage]


def file_signature(path: Path) -> str:
    """A file's content hash (or size and mtime for very large files); a folder's, over every file in it."""
    path = Path(path)
    if path.is_dir():
        return _digest({str(p.relative_to(path)): file_signature(p) for p in sorted(path.rglob("*")) if p.is_file()})
    if not path.exists():
        return "missing"
    stat = path.stat()
    if stat.st_size > HASHED_MAX_BYTES:
        return f"size {stat.st_size} mtime {stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _model_signature(model_cfg) -> str:
    """A local model's files, the hub cache's snapshot (its folder names the commit), or the id and revision:
    never a download."""
    local = Path(model_cfg.id).expanduser()
    if not local.is_dir():
        try:
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(model_cfg.id, revision=model_cfg.revision, local_files_only=True,
                                           allow_patterns=["*.json", "*.safetensors"]))
        except Exception:
            copy = offline.offline_copy_dir(model_cfg.id)
            if model_cfg.id not in offline.OFFLINE or not copy.is_dir():
                return f"{model_cfg.id}@{model_cfg.revision}"
            local = copy
    return _digest({str(local): file_signature(local)})


def _input_files(cfg, stage: str) -> list[Path]:
    if stage == "data":
        patterns = [cfg.data.path, cfg.data.test_path, cfg.data.generalization_path, *(cfg.data.mix or {})]
        return [Path(f) for p in patterns if p and not p.startswith("hub:")
                for f in sorted(glob.glob(p, recursive=True)) if Path(f).is_file()]
    if stage == "rl":
        return [Path(name.rpartition(":")[0]) for name in cfg.rl.rewards if ":" in name]
    if stage == "eval":
        return [Path(p) for p in cfg.eval.extra.values()]
    return []


@functools.lru_cache(maxsize=4)
def code_signature(package: Path) -> str:
    """The digest of ftkit's Python sources and templates (so that a result made by older code is not reused)."""
    files = sorted(p for p in package.rglob("*") if p.is_file() and p.suffix in {".py", ".j2", ".json"}
                   and "__pycache__" not in p.parts)
    return _digest({str(p.relative_to(package)): file_signature(p) for p in files})


def notebook_source(stage: str) -> str:
    """The digest of a stage notebook's cell sources (outputs and metadata left out: running it changes nothing)."""
    notebook = json.loads((rundir.notebooks_dir() / rundir.NOTEBOOKS[stage]).read_text())
    return _digest([(c["cell_type"], "".join(c["source"])) for c in notebook["cells"]])


def fingerprint(cfg, run_dir: str | Path, stage: str) -> dict:
    """The stage's fingerprint and its parts (for saying what changed): config, notebook, versions, inputs and the
    recorded fingerprints of the stages it builds on."""
    status = rundir.status(run_dir)
    parts = {
        "config": _digest(_settings(cfg, stage)),
        "notebook": notebook_source(stage),
        "versions": _digest(machine.package_versions(machine.RESULT_PACKAGES)),
        "code": code_signature(PACKAGE_DIR),
        "inputs": _digest([_model_signature(cfg.model), *(file_signature(p) for p in _input_files(cfg, stage))]),
        "upstream": _digest({s: status.get(s, {}).get("fingerprint") for s in rundir.BUILDS_ON[stage]
                             if s in cfg.stages}),
    }
    return {"fingerprint": _digest(parts), "parts": parts}


def changed(previous: dict | None, current: dict) -> list[str]:
    """The parts of a fingerprint that differ from a stage's recorded entry (all of them when none is recorded)."""
    before = (previous or {}).get("fingerprint_parts") or {}
    return [name for name, value in current["parts"].items() if before.get(name) != value]


def is_done(run_dir: str | Path, stage: str, current: dict) -> bool:
    """True when the stage completed with this very fingerprint and its results are still in the run directory."""
    entry = rundir.status(run_dir).get(stage) or {}
    outputs = rundir.stage_dir(run_dir, stage)
    return (entry.get("state") == "done" and entry.get("fingerprint") == current["fingerprint"]
            and stage in rundir.metrics(run_dir) and outputs.is_dir() and any(outputs.iterdir()))
