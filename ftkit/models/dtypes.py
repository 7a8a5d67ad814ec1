"""`model.dtype: auto`: bfloat16 or float32, whichever is faster on this machine, for training and for generation
apart.

Known without measuring: a GPU computes in bfloat16 where it supports it; a CPU with AMX does too (a LoRA step of the
135M model 1.6x faster than float32); a CPU with neither AMX nor AVX-512-BF16 emulates bfloat16 (104 s a step against
7 s in float32 on 2 AVX2 cores). In between, a CPU with AVX-512-BF16 but no AMX, measurements go both ways: on one
Xeon, SFT in bfloat16 ran at 0.88x the tokens/s of float32 and generation at 0.4x. There a micro-benchmark decides:
a small Llama-shaped model built from a config (no download) takes a few training steps and generates a few tokens
in each dtype, once per machine; the result is cached in `$FTKIT_CACHE/dtype-speed.json` under the CPU, its threads
and the torch version, and is written into each run's env.json (`measured`) and shown in the report.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import statistics
import time

import torch

from ftkit.core import machine
from ftkit.core.io import read_json, write_atomic

log = logging.getLogger(__name__)

USES = ("training", "generation")
MARGIN = 1.10  # bfloat16 is taken where it is at least this much faster: a tie goes to float32's exact arithmetic
CACHE_NAME = "dtype-speed.json"


def _cache_path():
    from ftkit.models.offline import cache_dir

    return cache_dir() / CACHE_NAME


def machine_key() -> str:
    """What the measurement depends on: the CPU's model and flags, the threads torch uses, torch's version."""
    info = machine.cpu()
    threads = torch.get_num_threads()
    return f"{info['model']} | {' '.join(info['flags'])} | {threads} threads | torch {torch.__version__}"


def known() -> tuple[str, str] | None:
    """(dtype, reason) where it is known without measuring, else None."""
    if torch.cuda.is_available():
        return (("bfloat16", "the GPU computes in bfloat16") if torch.cuda.is_bf16_supported()
                else ("float32", "the GPU has no bfloat16 arithmetic"))
    flags = machine.cpu()["flags"]
    if "amx_bf16" in flags:
        return "bfloat16", "the CPU has AMX (bfloat16 matrix units)"
    if "avx512_bf16" not in flags:
        return "float32", "the CPU has no bfloat16 arithmetic: bfloat16 would be emulated"
    return None


def _bench_model(dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=8192, max_position_embeddings=256)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(dtype)


def median_seconds(fn, repeats: int = 3) -> float:
    """The median wall time of `repeats` calls of `fn`, after one more call that is not timed."""
    fn()  # warm-up: the first call allocates and picks kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark() -> dict:
    """Seconds for a training step (forward and backward, 8 sequences of 64 tokens) and for a generation (8 prompts
    of 32 tokens, 16 new tokens greedily) in float32 and in bfloat16 on this machine's CPU; a few seconds in all."""
    ids = torch.randint(0, 8192, (8, 64), generator=torch.Generator().manual_seed(0))
    result = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model = _bench_model(dtype)

        def step():
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()

        def generate():
            with torch.no_grad():
                model.generate(ids[:, :32], max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)

        model.train()
        result.setdefault("training", {})[name] = round(median_seconds(step), 4)
        model.eval()
        result.setdefault("generation", {})[name] = round(median_seconds(generate), 4)
    return result


@contextlib.contextmanager
def _locked(path):
    """One process measures at a time (the ranks of a multi-process launch would otherwise slow each other down)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def measured() -> dict:
    """This machine's benchmark (`benchmark`), from the cache or measured now and cached."""
    path, key = _cache_path(), machine_key()
    cached = read_json(path, {}).get(key)
    if cached:
        return cached
    with _locked(path):
        everything = read_json(path, {})
        if key not in everything:
            log.info("dtype auto: measuring float32 against bfloat16 on this CPU (once per machine, a few seconds)")
            everything[key] = benchmark()
            try:
                write_atomic(path, json.dumps(everything, indent=2))
            except OSError as exc:  # a read-only cache: measured again next time, nothing lost
                log.warning("dtype auto: could not cache the measurement in %s: %s", path, exc)
    return everything[key]


def choose(use: str) -> tuple[str, str]:
    """(dtype, reason) for `dtype: auto` when the model is used for `use` (training or generation).

    >>> choose("training")[0] in ("float32", "bfloat16")
    True
    """
    if use not in USES:
        raise ValueError(f"use must be one of {USES}, not {use!r}")
    decided = known()
    if decided:
        return decided
    seconds = measured()[use]
    ratio = seconds["float32"] / seconds["bfloat16"]
    dtype = "bfloat16" if ratio >= MARGIN else "float32"
    return dtype, (f"measured on this CPU, AVX-512-BF16 without AMX: bfloat16 {ratio:.2f}x the speed of float32 for "
                   f"{use}, taken from {MARGIN:.2f}x")


def describe() -> dict:
    """For env.json and the report: per use, the dtype `auto` gives here and why, and the measurement where one was
    made."""
    out = {use: dict(zip(("dtype", "reason"), choose(use))) for use in USES}
    if known() is None:
        out["measured_seconds"] = measured()
    return out
