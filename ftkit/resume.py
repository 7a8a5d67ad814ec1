"""Skip what is done, resume what was cut short.

Stage fingerprints: a stage's fingerprint covers the recipe settings it reads, its notebook's source, the ftkit and
library versions, the content of its input files, and the fingerprints of the stages it builds on. `ftkit run
--run-dir DIR` and `ftkit resume DIR` skip a stage whose fingerprint matches the one recorded when it last completed;
so changing only `eval:` re-runs only eval, and changing `sft:` re-runs SFT and everything after it.

Checkpoints: SFT and RL save a checkpoint every `save_steps` steps (TRL/transformers' own format: adapter or model,
optimizer, scheduler, RNG states, trainer state with the data position). Once a checkpoint is fully written, a
marker file naming the step and the stage's fingerprint is added; a training stage started again resumes from the
newest checkpoint with a marker that matches its fingerprint. A checkpoint without one (killed mid-save) or made
with other settings is deleted, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from importlib import metadata
from pathlib import Path

from ftkit.io import read_json, write_atomic

log = logging.getLogger(__name__)

MARKER = "ftkit-complete.json"
HASHED_MAX_BYTES = 64 * 2**20  # files up to this size are hashed; larger ones (model weights) by size and mtime
VERSIONS = ("ftkit", "torch", "transformers", "trl", "peft", "datasets", "accelerate")
BUILDS_ON = {"data": (), "sft": ("data",), "rl": ("data", "sft"), "eval": ("data", "sft", "rl"),
             "export": ("sft", "rl", "eval")}


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
    from ftkit import models

    local = Path(model_cfg.id).expanduser()
    if not local.is_dir():
        try:
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(model_cfg.id, revision=model_cfg.revision, local_files_only=True,
                                           allow_patterns=["*.json", "*.safetensors"]))
        except Exception:
            offline = models.offline_copy_dir()
            if model_cfg.id != models.DEFAULT_MODEL or not offline.is_dir():
                return f"{model_cfg.id}@{model_cfg.revision}"
            local = offline
    return _digest({str(local): file_signature(local)})


def _input_files(cfg, stage: str) -> list[Path]:
    from ftkit import data

    if stage == "data":
        patterns = [cfg.data.path, cfg.data.test_path, cfg.data.generalization_path, *(cfg.data.mix or {})]
        return [f for p in patterns if p and not p.startswith("hub:") for f in data.expand(p)]
    if stage == "rl":
        return [Path(name.rpartition(":")[0]) for name in cfg.rl.rewards if ":" in name]
    if stage == "eval":
        return [Path(p) for p in cfg.eval.extra.values()]
    return []


def package_versions(names) -> dict[str, str | None]:
    """Installed version of each package (None where it is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def notebook_source(stage: str) -> str:
    """The digest of a stage notebook's cell sources (outputs and metadata left out: running it changes nothing)."""
    from ftkit import runner

    notebook = json.loads((runner.notebooks_dir() / runner.NOTEBOOKS[stage]).read_text())
    return _digest([(c["cell_type"], "".join(c["source"])) for c in notebook["cells"]])


def fingerprint(cfg, run_dir: str | Path, stage: str) -> dict:
    """The stage's fingerprint and its parts (for saying what changed): config, notebook, versions, inputs and the
    recorded fingerprints of the stages it builds on."""
    status = read_json(Path(run_dir) / "status.json", {})
    parts = {
        "config": _digest(_settings(cfg, stage)),
        "notebook": notebook_source(stage),
        "versions": _digest(package_versions(VERSIONS)),
        "inputs": _digest([_model_signature(cfg.model), *(file_signature(p) for p in _input_files(cfg, stage))]),
        "upstream": _digest({s: status.get(s, {}).get("fingerprint") for s in BUILDS_ON[stage] if s in cfg.stages}),
    }
    return {"fingerprint": _digest(parts), "parts": parts}


def changed(previous: dict | None, current: dict) -> list[str]:
    """The parts of a fingerprint that differ from a stage's recorded entry (all of them when none is recorded)."""
    before = (previous or {}).get("fingerprint_parts") or {}
    return [name for name, value in current["parts"].items() if before.get(name) != value]


def is_done(run_dir: str | Path, stage: str, current: dict) -> bool:
    """True when the stage completed with this very fingerprint and its results are still in the run directory."""
    run_dir = Path(run_dir)
    entry = read_json(run_dir / "status.json", {}).get(stage) or {}
    outputs = run_dir / stage
    return (entry.get("state") == "done" and entry.get("fingerprint") == current["fingerprint"]
            and stage in read_json(run_dir / "metrics.json", {}) and outputs.is_dir() and any(outputs.iterdir()))


# ---------------------------------------------------------------- checkpoints inside a training stage

_STEP = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_callback(stage_fingerprint: str):
    """A Trainer callback that marks a checkpoint complete once transformers has written all of it."""
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                write_atomic(folder / MARKER, json.dumps({"step": state.global_step,
                                                          "fingerprint": stage_fingerprint}))

    return MarkComplete()


def resume_point(checkpoints: str | Path, stage_fingerprint: str) -> Path | None:
    """The newest complete checkpoint made with this fingerprint; incomplete ones and ones made with other settings
    are deleted (logged), so that they can be neither loaded nor rotated in place of a good one."""
    checkpoints = Path(checkpoints)
    found = sorted((int(m.group(1)), p) for p in checkpoints.glob("checkpoint-*")
                   if p.is_dir() and (m := _STEP.match(p.name)))
    best = None
    for step, folder in found:
        marker = read_json(folder / MARKER) if (folder / MARKER).is_file() else None
        if marker is None:
            log.warning("checkpoint %s is incomplete (no %s: the run stopped while saving it); deleted, not loaded",
                        folder, MARKER)
            shutil.rmtree(folder, ignore_errors=True)  # every process of a launch checks; one deletes
        elif marker.get("fingerprint") != stage_fingerprint:
            log.warning("checkpoint %s was made with other settings; deleted, not loaded", folder)
            shutil.rmtree(folder, ignore_errors=True)  # every process of a launch checks; one deletes
        else:
            best = folder
    return best
