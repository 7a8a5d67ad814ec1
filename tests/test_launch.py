"""Training in two processes through `accelerate launch` (gloo on CPU): ranks in sync, and a result that loads and
evaluates like a single-process run."""

from __future__ import annotations

import pytest
import torch

from ftkit import cli
from ftkit import recipe as recipes
from ftkit.core.io import read_json
from ftkit.models import loader
from ftkit.training import launch, preflight
from tests.conftest import recipe_file, tiny


@pytest.mark.pipeline
def test_two_processes_end_in_sync_and_match_one_process(tmp_path, tiny_model_dir):
    sft = {"max_steps": 4, "batch_size": 8, "save_steps": 2}
    recipe = recipe_file(tmp_path, tiny(tiny_model_dir), stages=["data", "sft", "eval"], sft=sft, eval={"robustness_size": 0}, file="tiny.yaml")
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(["run", str(recipe), "--run-dir", str(one)]) == 0
    assert cli.main(["run", str(recipe), "--run-dir", str(two), "--set", "launch.num_processes=2"]) == 0

    single, double = read_json(one / "metrics.json"), read_json(two / "metrics.json")
    assert double["sft"]["processes"] == 2 and single["sft"]["processes"] == 1
    assert (double["sft"]["distributed"], single["sft"]["distributed"]) == ("MULTI_CPU", "NO")
    digests = double["sft"]["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1], f"ranks ended with different weights: {digests}"
    log = (two / "sft" / "launch.log").read_text()
    assert "accelerate.commands.launch --num_processes 2" in log and "-m ftkit.stages.sft " in log
    assert not (one / "sft" / "launch.log").exists()  # one process: trained in the kernel
    # batch 8 split 4 + 4 over two processes: the same examples per step, so (nearly) the same training
    assert double["sft"]["final_loss"] == pytest.approx(single["sft"]["final_loss"], abs=2e-3)
    # the result is an ordinary adapter: it loads like a single-process one and went through eval
    cfg = recipes.load(recipe)
    model, _ = loader.load(cfg.model, tuned=two / "sft" / "adapter")
    reference, _ = loader.load(cfg.model, tuned=one / "sft" / "adapter")
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.allclose(a, b, atol=2e-3), name
    assert double["eval"]["sft"]["n"] == single["eval"]["sft"]["n"]


def test_launch_command_and_validation(tmp_path, tiny_model_dir):
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\n")
    recipe = recipe_file(tmp_path, tiny(tiny_model_dir), sft={"batch_size": 32}, rl={"batch_size": 32},
                         launch={"num_processes": 16, "num_machines": 2, "machine_rank": 1,
                                 "main_process_ip": "10.0.0.1", "config_file": "fsdp.yaml"}, file="tiny.yaml")
    cfg = recipes.load(recipe)
    cmd = launch.command(cfg, "sft", tmp_path / "run")
    joined = " ".join(cmd)
    assert "--num_processes 16 --num_machines 2 --machine_rank 1" in joined
    assert "--main_process_ip 10.0.0.1 --main_process_port 29500" in joined
    assert f"--config_file {tmp_path / 'fsdp.yaml'}" in joined and "--multi_gpu" not in cmd
    assert cmd[-3:] == ["-m", "ftkit.stages.sft", str((tmp_path / "run").resolve())], "the stage module runs itself"
    for bad, message in [({"num_processes": 3}, "multiple of launch.num_processes 3"),
                         ({"num_machines": 2, "num_processes": 2}, "needs main_process_ip"),
                         ({"machine_rank": 1}, "must be below num_machines"),
                         ({"config_file": "missing.yaml"}, "launch.config_file")]:
        with pytest.raises(recipes.RecipeError, match=message):
            recipes.load(recipe_file(tmp_path, tiny(tiny_model_dir), launch=bad, file="tiny.yaml"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_a_sharding_config_is_refused_where_accelerate_would_ignore_it(tmp_path, tiny_model_dir, capsys):
    """Measured with accelerate 1.16: an FSDP config launched on CPUs runs every process as MULTI_CPU data parallel
    with the whole model (accelerate turns FSDP on for GPU-like devices only), so ftkit refuses it before the run."""
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n")
    path = recipe_file(tmp_path, tiny(tiny_model_dir), launch={"num_processes": 2, "config_file": "fsdp.yaml"})
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "asks for FSDP, which accelerate runs on GPUs only" in err and "leave launch.config_file out" in err
    (tmp_path / "ddp.yaml").write_text("distributed_type: MULTI_CPU\n")
    assert cli.main(["validate", str(path), "--set", "launch.config_file=ddp.yaml"]) == 0


LLAMA_2_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
              "max_position_embeddings": 4096}  # Llama-2-7b's published sizes


def test_sharding_divides_what_each_process_holds_and_changes_the_verdict(tmp_path, monkeypatch, capsys):
    import json

    from ftkit.training import preflight

    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(LLAMA_2_7B))
    path = recipe_file(tmp_path, stages=["data", "sft"], data={"task": "addition"},
                       model={"id": "llama", "dtype": "bfloat16", "adapter": "none"},
                       sft={"batch_size": 8, "max_length": 512})
    monkeypatch.setenv(preflight.PLAN_MEMORY, "24")  # a 24 GB card
    whole = preflight.estimate(recipes.load(path))
    assert whole["fits"] == "no"  # full fine-tuning of 7B: weights, gradients and AdamW state far over 24 GB
    problem = preflight.preflight(recipes.load(path))[-1]
    held = whole["weights_gb"] + whole["gradients_optimizer_gb"]
    needed = -(-held // (0.8 * 24))
    assert f"launch.shard: fsdp with launch.num_processes: {needed:.0f}," in problem, problem
    sharded = preflight.estimate(recipes.load(path, ["launch.shard=fsdp", f"launch.num_processes={needed:.0f}"]))
    assert sharded["weights_gb"] == pytest.approx(whole["weights_gb"] / needed, abs=0.01)
    assert sharded["gradients_optimizer_gb"] == pytest.approx(whole["gradients_optimizer_gb"] / needed, abs=0.01)
    assert sharded["fits"] != "no" and whole["fits"] == "no"  # the verdict changes with sharding


def test_shard_writes_the_accelerate_config_and_fsdp_is_refused_without_a_gpu(tmp_path, tiny_model_dir, capsys,
                                                                            monkeypatch):
    import yaml

    path = recipe_file(tmp_path, tiny(tiny_model_dir), launch={"num_processes": 2, "shard": "fsdp"})
    cfg = recipes.load(path)
    assert launch.needed(cfg) and launch.needed(recipes.load(path, ["launch.num_processes=1"]))
    cmd = launch.command(cfg, "sft", tmp_path / "run")
    written = tmp_path / "run" / "sft" / "accelerate.yaml"
    assert cmd[cmd.index("--config_file") + 1] == str(written) and "--multi_gpu" not in cmd
    settings = yaml.safe_load(written.read_text())
    assert settings["distributed_type"] == "FSDP" and settings["num_processes"] == 2
    assert settings["fsdp_config"]["fsdp_version"] == 2
    assert settings["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # saved files as without sharding
    if not torch.cuda.is_available():
        assert cli.main(["validate", str(path)]) == 2
        assert "launch.shard = 'fsdp' shards the model over CUDA GPUs" in capsys.readouterr().err
    zero3 = recipes.load(path, ["launch.shard=zero3"])
    launch.command(zero3, "rl", tmp_path / "run")
    settings = yaml.safe_load((tmp_path / "run" / "rl" / "accelerate.yaml").read_text())
    assert settings["distributed_type"] == "DEEPSPEED" and settings["deepspeed_config"]["zero_stage"] == 3
    assert settings["deepspeed_config"]["zero3_save_16bit_model"]  # the partitions gathered for saving
    installed = preflight.importlib.util.find_spec("deepspeed") is not None  # DeepSpeed runs on CPUs too
    assert cli.main(["validate", str(path), "--set", "launch.shard=zero3"]) == (0 if installed else 2)
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None)
    assert any("pip install deepspeed" in p for p in preflight._launch_problems(zero3, cuda=True))
    monkeypatch.undo()
    filtered = recipes.load(path, ["rl.filter_prompts=true"])
    assert any("set rl.filter_prompts: false" in p for p in preflight._launch_problems(filtered, cuda=True))
    assert not preflight._launch_problems(cfg, cuda=True)
    with pytest.raises(recipes.RecipeError, match="both say how to launch"):
        recipes.load(path, ["launch.config_file=x.yaml"])
