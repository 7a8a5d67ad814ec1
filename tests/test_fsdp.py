"""Sharded training run for real on 2 CPU processes: `launch.shard: fsdp` (FSDP2 over gloo) and `launch.shard: zero3`
(DeepSpeed ZeRO-3, which runs on CPUs as it is). torch's fully_shard runs on CPUs too, but accelerate turns FSDP on
for GPU-like devices only, so the FSDP runs lift that one rule in the launched processes
(tests/cpu_fsdp/sitecustomize.py, on their PYTHONPATH) and ftkit's refusal of FSDP without a GPU. The rest is what
runs on GPUs: ftkit's accelerate config, the weights read (by the first process alone under FSDP) and sent out as
shards, TRL's trainers, checkpoints and resuming, gathering the shards to save, then eval, merging and export reading
the result."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ftkit import cli
from ftkit.core import rundir
from ftkit.core.io import read_json
from ftkit.scoring.tasks import Addition
from ftkit.training import preflight
from tests.conftest import recipe_file, tiny

HARNESS = Path(__file__).parent / "cpu_fsdp"
DISTRIBUTED = {"fsdp": "FSDP", "zero3": "DEEPSPEED"}
# ZeRO-3 where DeepSpeed is installed (pip install -e '.[deepspeed]'); make test does not install it
SHARDS = ["fsdp", "zero3"] if importlib.util.find_spec("deepspeed") else ["fsdp"]


@pytest.fixture
def sharded_on_cpu(monkeypatch):
    """`ftkit run` arguments for a run sharded by `shard` over 2 processes on this machine."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HARNESS), os.environ.get("PYTHONPATH")])))
    check = preflight._launch_problems
    monkeypatch.setattr(preflight, "_launch_problems",  # FSDP on CPUs: the test's own; ZeRO-3 checked as usual
                        lambda cfg, cuda: check(cfg, cuda or cfg.launch.shard == "fsdp"))
    return lambda shard: ["--set", "launch.num_processes=2", "--set", f"launch.shard={shard}"]


def _recipe(tmp_path, model_dir, stages, **model):
    """The tiny model in float32 (the tolerance below is float32's); GRPO with a reward that differs between a
    prompt's completions, so that its steps move the adapter."""
    return recipe_file(tmp_path, tiny(model_dir), stages=stages, file="tiny.yaml",
                       model={"id": str(model_dir), "lora_r": 4, "lora_alpha": 8, "dtype": "float32", **model},
                       sft={"max_steps": 4, "batch_size": 8, "save_steps": 2, "learning_rate": 1.0e-2},
                       rl={"max_steps": 2, "batch_size": 8, "num_generations": 2, "learning_rate": 1.0e-2,
                           "temperature": 1.5, "max_completion_length": 6, "rewards": {"length_penalty": 1.0},
                           "length_target": 8, "save_steps": 0},
                       eval={"robustness_size": 0, "batch_size": 8, "max_new_tokens": 4})


def _same(first: dict, second: dict, what: str):
    assert first.keys() == second.keys(), what
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=1e-4, atol=1e-6, msg=f"{what}: {key}")


def _adapter(run_dir, stage):
    return load_file(rundir.stage_dir(run_dir, stage) / "adapter" / "adapter_model.safetensors")


def _held_a_share(figures: dict, shard: str):
    """Each of the 2 processes held half of the parameters while training; under FSDP the first process alone read
    the weights (the other built the model's shapes on the meta device), under ZeRO-3 both did."""
    assert figures["distributed"] == DISTRIBUTED[shard] and figures["processes"] == 2
    loaded, trained = figures["rank_parameters"]["loaded"], figures["rank_parameters"]["trained"]
    assert loaded[0] > 0 and loaded[1] == (0 if shard == "fsdp" else loaded[0]), figures["rank_parameters"]
    assert all(held <= 0.55 * loaded[0] for held in trained) and sum(trained) >= loaded[0], figures["rank_parameters"]
    assert len(set(figures["rank_weight_digests"])) == 1, "the gathered weights differ between the processes"


@pytest.mark.pipeline
def test_sharded_lora_training_matches_unsharded_training(tmp_path, tiny_model_dir, sharded_on_cpu):
    """SFT sharded over 2 processes (FSDP2, ZeRO-3), with gradient accumulation, ends with one process's adapter; GRPO (each process samples its
    share of the completions) with 2 data-parallel processes' adapter; eval and export read the sharded runs'
    adapters."""
    recipe = _recipe(tmp_path, tiny_model_dir, ["data", "sft", "rl", "eval", "export"])
    one, ddp = tmp_path / "one", tmp_path / "ddp"
    assert cli.main(["run", str(recipe), "--run-dir", str(one), "--set", "stages=[data,sft]"]) == 0
    assert cli.main(["run", str(recipe), "--run-dir", str(ddp), "--set", "launch.num_processes=2"]) == 0
    data_parallel = read_json(ddp / "metrics.json")
    assert data_parallel["sft"]["distributed"] == data_parallel["rl"]["distributed"] == "MULTI_CPU"
    for shard in SHARDS:
        label = {"fsdp": "FSDP2", "zero3": "DeepSpeed"}[shard]
        run = tmp_path / shard
        assert cli.main(["run", str(recipe), "--run-dir", str(run), *sharded_on_cpu(shard),
                         "--set", "sft.micro_batch_size=2"]) == 0  # and 2 micro-batches of 2 a process
        figures = read_json(run / "metrics.json")
        assert figures["sft"]["settings"]["gradient_accumulation_steps"] == 2
        for stage in ("sft", "rl"):
            _held_a_share(figures[stage], shard)
        _same(_adapter(one, "sft"), _adapter(run, "sft"), f"SFT sharded ({shard}) against one process")
        _same(_adapter(ddp, "rl"), _adapter(run, "rl"), f"GRPO sharded ({shard}) against data parallel")
        moved = {k: (_adapter(run, "rl")[k] - v).abs().max().item() for k, v in _adapter(run, "sft").items()}
        assert max(moved.values()) > 1e-4, "GRPO's steps left the adapter where SFT put it"
        assert figures["eval"]["rl"]["n"] == data_parallel["eval"]["rl"]["n"] == 16
        _same(load_file(ddp / "export" / "merged" / "model.safetensors"),
              load_file(run / "export" / "merged" / "model.safetensors"), f"the merged export ({shard})")
        assert f"2 ({label}; one held at most 50% of the parameters)" in (run / "report.html").read_text()


@pytest.mark.pipeline
@pytest.mark.parametrize("shard", SHARDS)
def test_a_sharded_full_fine_tune_resumes_after_a_failure_to_the_same_weights(tmp_path, tiny_model_dir, shard,
                                                                              sharded_on_cpu, monkeypatch):
    """All the weights trained (no adapter), sharded: the run dies in step 3, `ftkit resume` goes on from the
    checkpoint of step 2 (saved by every process from its shards) and ends with one process's weights; the saved
    model is whole (gathered, the tied lm_head once), and eval and export load it."""
    recipe = _recipe(tmp_path, tiny_model_dir, ["data", "sft", "eval", "export"], adapter="none")
    one, run = tmp_path / "one", tmp_path / shard
    assert cli.main(["run", str(recipe), "--run-dir", str(one), "--set", "stages=[data,sft]"]) == 0
    monkeypatch.setenv("FTKIT_TEST_FAIL_AT_STEP", "3")
    assert cli.main(["run", str(recipe), "--run-dir", str(run), *sharded_on_cpu(shard)]) != 0
    assert (rundir.checkpoints_dir(run, "sft") / "checkpoint-2" / rundir.CHECKPOINT_MARKER).is_file()
    monkeypatch.delenv("FTKIT_TEST_FAIL_AT_STEP")
    assert cli.main(["resume", str(run)]) == 0

    figures = read_json(run / "metrics.json")
    _held_a_share(figures["sft"], shard)
    assert figures["sft"]["resumed_from_step"] == 2 and figures["sft"]["steps"] == 4
    whole = load_file(rundir.stage_dir(one, "sft") / "model" / "model.safetensors")
    _same(whole, load_file(rundir.stage_dir(run, "sft") / "model" / "model.safetensors"), "resumed sharded run")
    assert figures["eval"]["sft"]["n"] == 16
    _same(whole, load_file(run / "export" / "merged" / "model.safetensors"), "the exported model")


@pytest.mark.pipeline
def test_sharded_dpo_matches_one_process(tmp_path, tiny_model_dir, sharded_on_cpu):
    """DPO from the SFT adapter: TRL copies it into a reference adapter when the trainer is built, so under FSDP every
    process reads the weights (`loader.load(shapes_only=False)`); sharded over 2 processes, DPO ends with one
    process's adapter (within 1e-5: DPO's reductions run in another order, as they do with data parallel)."""
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in Addition().preference_pairs(60, 1)))
    recipe = recipe_file(tmp_path, name="dpo", seed=0, stages=["data", "sft", "rl"],
                         model={"id": str(tiny_model_dir), "lora_r": 4, "lora_alpha": 8, "dtype": "float32"},
                         data={"path": "prefs.jsonl", "test_size": 8},
                         sft={"max_steps": 2, "batch_size": 8, "learning_rate": 1.0e-2, "logging_steps": 1},
                         rl={"method": "dpo", "max_steps": 3, "batch_size": 4, "learning_rate": 1.0e-2,
                             "logging_steps": 1})
    assert cli.main(["run", str(recipe), "--run-dir", str(tmp_path / "one")]) == 0
    whole = _adapter(tmp_path / "one", "rl")
    assert max((whole[k] - v).abs().max().item() for k, v in _adapter(tmp_path / "one", "sft").items()) > 1e-4
    for shard in SHARDS:
        assert cli.main(["run", str(recipe), "--run-dir", str(tmp_path / shard), *sharded_on_cpu(shard)]) == 0
        figures = read_json(tmp_path / shard / "metrics.json")["rl"]
        assert figures["distributed"] == DISTRIBUTED[shard] and figures["first_margin"] == pytest.approx(0, abs=1e-6)
        for key, value in _adapter(tmp_path / shard, "rl").items():
            torch.testing.assert_close(value, whole[key], rtol=0, atol=1e-5, msg=f"DPO sharded ({shard}): {key}")
