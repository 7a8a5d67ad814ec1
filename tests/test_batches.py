"""A real fine-tune's training settings: batch_size is what an update sees and micro_batch_size what goes through
the model at once (the same weights either way), epochs instead of max_steps, the optimizer's settings and
trainer_args checked against the trainer's config."""

import pytest
import torch
from safetensors.torch import load_file

from ftkit import recipe
from ftkit.core import rundir
from ftkit.models import loader
from ftkit.stages import data, rl, sft
from ftkit.training import preflight
from tests.conftest import recipe_file


def _prepared(tmp_path, tiny_model_dir, name, train_size=32, **sections):
    """A recipe on the tiny model in float32 (the tolerance below is float32's) and its run with the data stage
    done, in-process."""
    base = {"stages": ["data", "sft"], "model": {"id": str(tiny_model_dir), "lora_r": 4, "lora_alpha": 8,
                                                 "dtype": "float32", "gradient_checkpointing": False},
            "data": {"train_size": train_size, "test_size": 8}}
    cfg = recipe.load(recipe_file(tmp_path, base, file=f"{name}.yaml", **sections))
    run_dir = tmp_path / name
    tokenizer = loader.load_tokenizer(str(tiny_model_dir))
    splits, figures = data.build_splits(cfg, tokenizer)
    data.save_splits(splits, run_dir, figures, tokenizer)
    return cfg, run_dir


def _weights(run_dir, stage):
    return load_file(rundir.stage_dir(run_dir, stage) / "adapter" / "adapter_model.safetensors")


def _assert_same_weights(first: dict, second: dict, what: str):
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=1e-4, atol=1e-6, msg=f"{what}: {key}")


@pytest.mark.parametrize("padding_free", [True, False])
def test_sft_micro_batches_train_what_the_whole_batch_trains(tmp_path, tiny_model_dir, padding_free):
    trained, figures = {}, {}
    for micro in (16, 4, 1):
        cfg, run_dir = _prepared(tmp_path, tiny_model_dir, f"m{micro}", sft={
            "max_steps": 2, "batch_size": 16, "micro_batch_size": micro, "learning_rate": 1.0e-2,
            "logging_steps": 1, "save_steps": 0, "padding_free": padding_free})
        figures[micro] = sft.train(cfg, run_dir)
        trained[micro] = _weights(run_dir, "sft")
    for micro in (4, 1):
        settings = figures[micro]["settings"]
        assert (settings["micro_batch_size"], settings["gradient_accumulation_steps"]) == (micro, 16 // micro)
        assert settings["batch_size"] == 16 and figures[micro]["steps"] == 2
        assert figures[micro]["first_loss"] == pytest.approx(figures[16]["first_loss"], rel=1e-4)
        _assert_same_weights(trained[16], trained[micro], f"micro-batch {micro} against 16")
    assert any((v != 0).any() for k, v in trained[16].items() if "lora_B" in k), "training moved the adapter"


def test_grpo_micro_batches_train_what_the_whole_batch_trains(tmp_path, tiny_model_dir):
    """One GRPO step of 8 completions (4 prompts x 2), through the model 8, 4 or 2 at a time: the same completions
    are sampled (generation takes the whole batch either way) and the update is the same."""
    trained = {}
    for micro in (8, 4, 2):
        cfg, run_dir = _prepared(tmp_path, tiny_model_dir, f"g{micro}", stages=["data", "rl"], rl={
            "max_steps": 1, "batch_size": 8, "num_generations": 2, "micro_batch_size": micro,
            "learning_rate": 1.0e-2, "temperature": 1.5, "max_completion_length": 6, "save_steps": 0,
            "rewards": {"length_penalty": 1.0}, "length_target": 8})
        assert rl.train(cfg, run_dir)["settings"]["gradient_accumulation_steps"] == 8 // micro
        trained[micro] = _weights(run_dir, "rl")
    assert any((v != 0).any() for k, v in trained[8].items() if "lora_B" in k), "the step moved the adapter"
    for micro in (4, 2):
        _assert_same_weights(trained[8], trained[micro], f"GRPO micro-batch {micro} against 8")


def test_epochs_set_the_steps_from_the_data(tmp_path, tiny_model_dir):
    cfg, run_dir = _prepared(tmp_path, tiny_model_dir, "epochs", train_size=40, sft={
        "epochs": 2, "batch_size": 16, "micro_batch_size": 8, "learning_rate": 1.0e-2, "logging_steps": 1,
        "save_steps": 0})
    assert cfg.sft.max_steps is None and cfg.sft.steps(40) == 6  # 40 examples: 16 + 16 + 8 a pass, twice
    result = sft.train(cfg, run_dir)
    assert result["steps"] == 6 and result["epochs"] == pytest.approx(2.0)


def test_the_plan_counts_epochs_as_the_trainer_does(tmp_path, tiny_model_dir):
    """max_steps 4 of 16 on 40 examples: a pass is 3 steps (16 + 16 + 8), so 1.333 epochs in the plan, the
    report's plan table and the trainer's own count alike."""
    cfg, run_dir = _prepared(tmp_path, tiny_model_dir, "count", train_size=40, sft={
        "max_steps": 4, "batch_size": 16, "micro_batch_size": 16, "save_steps": 0})
    result = sft.train(cfg, run_dir)
    assert result["plan"]["epochs"] == pytest.approx(4 / 3, abs=1e-3)
    assert result["epochs"] == pytest.approx(result["plan"]["epochs"], abs=1e-3)


def test_steps_and_epochs_exclude_each_other_and_micro_batches_divide_the_batch(tmp_path):
    with pytest.raises(recipe.RecipeError, match=r"r\.yaml:\d+: sft: max_steps \(5\) and epochs \(2\.0\) both say how "
                                                 r"long to train; set one of them"):
        recipe.load(recipe_file(tmp_path, sft={"max_steps": 5, "epochs": 2}))
    with pytest.raises(recipe.RecipeError, match=r"micro_batch_size \(5\) must divide batch_size \(16\)"):
        recipe.load(recipe_file(tmp_path, sft={"micro_batch_size": 5}))
    with pytest.raises(recipe.RecipeError, match=r"sft\.batch_size 16 \(micro-batches of 8\) must be a multiple of "
                                                 r"launch\.num_processes 4 x micro_batch_size"):
        recipe.load(recipe_file(tmp_path, sft={"micro_batch_size": 8}, launch={"num_processes": 4}))
    resolved = recipe.load(recipe_file(tmp_path, rl={"epochs": 0.5}))
    again = recipe.build(__import__("yaml").safe_load(resolved.dump()))
    assert (again.sft.max_steps, again.rl.max_steps, again.rl.epochs) == (60, None, 0.5), "a dump reloads"


def test_trainer_args_are_checked_against_the_trainers_config(tmp_path):
    with pytest.raises(recipe.RecipeError) as error:
        recipe.load(recipe_file(tmp_path, sft={"optimizer": "adamw_troch", "trainer_args": {
            "adam_beta2": 0.95, "adam_betta1": 0.9, "per_device_train_batch_size": 4, "output_dir": "x"}},
            rl={"method": "grpo", "trainer_args": {"num_iteration": 2, "warmup_steps": 2}}))
    problems = error.value.problems
    assert len(problems) == 5
    assert problems[0].endswith("sft.optimizer = 'adamw_troch': transformers has no optimizer by that name; did you "
                                "mean 'adamw_torch'?")
    assert "r.yaml:" in problems[1] and problems[1].endswith(
        "sft.trainer_args.adam_betta1: SFTConfig has no field 'adam_betta1'; did you mean 'adam_beta1'?")
    assert problems[2].endswith("sft.trainer_args.per_device_train_batch_size: ftkit sets "
                                "per_device_train_batch_size from sft.micro_batch_size; set that instead")
    assert problems[3].endswith("sft.trainer_args.output_dir: ftkit sets output_dir itself (ftkit writes into the "
                                "run directory); remove it")
    assert problems[4].endswith("rl.trainer_args.num_iteration: GRPOConfig has no field 'num_iteration'; did you "
                                "mean 'num_iterations'?"), "rl's warmup is its own to set"
    with pytest.raises(recipe.RecipeError, match=r"sft\.trainer_args: SFTConfig refuses \{'hub_strategy': "
                                                 r"'sometimes'\}"):
        recipe.load(recipe_file(tmp_path, sft={"trainer_args": {"hub_strategy": "sometimes"}}, stages=["data",
                                                                                                            "sft"]))


def test_optimizer_settings_and_trainer_args_reach_the_trainer(tmp_path, tiny_model_dir):
    cfg, run_dir = _prepared(tmp_path, tiny_model_dir, "opt", sft={
        "max_steps": 2, "batch_size": 8, "learning_rate": 1.0e-2, "save_steps": 0, "weight_decay": 0.1,
        "max_grad_norm": 0.5, "optimizer": "adamw_torch", "trainer_args": {"adam_beta2": 0.95}})
    from trl import SFTConfig

    from ftkit.training import plan
    from ftkit.training.trainer import training_args

    args = training_args(cfg, cfg.sft, run_dir, "sft", SFTConfig, plan.resolve(cfg, "sft", 40))
    assert (args.weight_decay, args.max_grad_norm, args.adam_beta2) == (0.1, 0.5, 0.95)
    assert str(getattr(args.optim, "value", args.optim)) == "adamw_torch"
    assert sft.train(cfg, run_dir)["settings"]["optimizer"] == "adamw_torch"


def test_an_optimizer_from_a_missing_package_is_refused_before_training(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else
                        real(name, *a))
    cfg = recipe.load(recipe_file(tmp_path, sft={"optimizer": "paged_adamw_8bit"}))
    assert any(p.startswith("sft.optimizer = 'paged_adamw_8bit' needs the bitsandbytes package")
               for p in preflight.preflight(cfg, check_memory=False))


def test_auto_micro_batches_shrink_until_the_estimate_fits(tmp_path, tiny_model_dir, monkeypatch):
    cfg, _ = _prepared(tmp_path, tiny_model_dir, "auto", sft={"batch_size": 16})
    assert preflight.micro_batch(cfg, cfg.sft, lambda n: n * 100) == 16, "on this machine the whole batch fits"
    asked = []

    def estimate(cfg, tokens):  # a machine where at most 400 tokens fit at once
        asked.append(tokens)
        return {"fits": "yes" if tokens <= 400 else "tight"}

    monkeypatch.setattr(preflight, "estimate", estimate)
    assert preflight.micro_batch(cfg, cfg.sft, lambda n: n * 100) == 4
    assert asked == [1600, 800, 400], "the divisors of the batch, largest first"
    fixed = recipe.load(recipe_file(tmp_path, cfg.model_dump(mode="json"), sft={"micro_batch_size": 8}))
    assert preflight.micro_batch(fixed, fixed.sft, lambda n: n * 100) == 8, "a number is taken as it is"


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, tiny_model_dir, monkeypatch):
    """Two epochs of 3 steps on 40 examples, a checkpoint every 2 steps: stopped in step 5, the run resumes from
    step 4 (one batch into the second epoch) and ends with the uninterrupted run's weights."""
    from transformers import TrainerCallback

    from ftkit.training import trainer as training

    settings = {"epochs": 2, "batch_size": 16, "micro_batch_size": 8, "learning_rate": 1.0e-2, "logging_steps": 1,
                "save_steps": 2}
    cfg, whole = _prepared(tmp_path, tiny_model_dir, "whole", train_size=40, sft=settings)
    sft.train(cfg, whole)
    cfg, run_dir = _prepared(tmp_path, tiny_model_dir, "killed", train_size=40, sft=settings)
    rundir.set_status(run_dir, "sft", {"state": "running", "fingerprint": "same settings"})

    class Killed(Exception):
        pass

    class KillInStepFive(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise Killed

    real_fit = training.fit

    def fit_then_killed(trainer, *args):
        trainer.add_callback(KillInStepFive())
        return real_fit(trainer, *args)

    monkeypatch.setattr(sft, "fit", fit_then_killed)
    with pytest.raises(Killed):
        sft.train(cfg, run_dir)
    monkeypatch.setattr(sft, "fit", real_fit)
    result = sft.train(cfg, run_dir)
    assert result["resumed_from_step"] == 4 and result["steps"] == 6 and result["epochs"] == pytest.approx(2.0)
    _assert_same_weights(_weights(whole, "sft"), _weights(run_dir, "sft"), "resumed mid-epoch")


QWEN_05B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
            "max_position_embeddings": 32768, "tie_word_embeddings": True}  # Qwen2.5-0.5B's published sizes


def test_validate_prints_the_plan_and_the_estimate_follows_the_processes(tmp_path, capsys, monkeypatch):
    import json

    from ftkit import cli
    from ftkit.training import plan

    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text(json.dumps(QWEN_05B))
    path = recipe_file(tmp_path, stages=["data", "sft"], model={"id": "qwen", "dtype": "bfloat16"},
                       data={"task": "addition"}, sft={"batch_size": 32, "max_length": 2048, "max_steps": 10})
    monkeypatch.setenv(preflight.PLAN_MEMORY, "80")  # planned for an 80 GB card, here without one
    assert cli.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    one = plan.resolve(recipe.load(path), "sft")
    assert plan.describe(one) in out and "a 80 GB card" in out
    assert one["micro_batch_size"] < 32 and one["micro_batch_size"] * one["gradient_accumulation_steps"] == 32
    # the step's share halves on 2 processes, and with it what one process holds: the verdict changes
    two_processes = recipe.load(path, ["launch.num_processes=2"])
    verdicts = [preflight.estimate(cfg) for cfg in (recipe.load(path), two_processes)]
    assert [v["fits"] for v in verdicts] == ["tight", "yes"], verdicts
    assert verdicts[1]["estimated_gb"] < verdicts[0]["estimated_gb"]
    two = plan.resolve(two_processes, "sft")
    assert two["micro_batch_size"] * two["gradient_accumulation_steps"] * 2 == 32
    assert cli.main(["validate", str(path), "--set", "launch.num_processes=2"]) == 0
    assert "x 2 processes" in capsys.readouterr().out
    # a smaller card: a smaller micro-batch, more accumulation, the same batch
    monkeypatch.setenv(preflight.PLAN_MEMORY, "24")
    small = plan.resolve(recipe.load(path), "sft")
    assert small["micro_batch_size"] < one["micro_batch_size"] and small["batch_size"] == 32


def test_the_stage_trains_by_its_plan_and_writes_it(tmp_path, tiny_model_dir):
    import json

    cfg, run_dir = _prepared(tmp_path, tiny_model_dir, "plan", sft={"epochs": 1, "batch_size": 16,
                                                                     "micro_batch_size": 8, "save_steps": 0})
    result = sft.train(cfg, run_dir)
    written = json.loads((run_dir / "sft" / "plan.json").read_text())
    assert written == result["plan"] and written["steps"] == result["steps"] == 2  # 32 examples, 16 a step
    assert (written["micro_batch_size"], written["gradient_accumulation_steps"]) == (8, 2)
    assert result["settings"]["micro_batch_size"] == 8 and result["settings"]["gradient_accumulation_steps"] == 2
    assert written["why"]["micro_batch_size"] == "set in the recipe" and written["epochs"] == 1


def test_out_of_memory_halves_an_auto_micro_batch_and_trains_the_same(tmp_path, tiny_model_dir, monkeypatch):
    """A GPU's out-of-memory error, raised here by the model for passes of more than 4 examples: an auto micro-batch
    backs off 16 -> 8 -> 4 and the run ends with the weights of the whole batch at once."""
    sections = {"max_steps": 2, "batch_size": 16, "learning_rate": 1.0e-2, "logging_steps": 1, "save_steps": 0}
    cfg, run_dir = _prepared(tmp_path, tiny_model_dir, "whole", sft={**sections, "micro_batch_size": 16})
    sft.train(cfg, run_dir)
    whole = _weights(run_dir, "sft")

    load = loader.load

    def cramped(*args, **kwargs):
        model, tokenizer = load(*args, **kwargs)
        forward = model.model.forward  # the decoder's: TRL puts its own forward on the model with the LM head

        def limited(input_ids=None, **rest):
            if input_ids is not None and input_ids.shape[0] > 4:
                raise torch.OutOfMemoryError("CUDA out of memory (a pass of more than 4 examples, in this test)")
            return forward(input_ids=input_ids, **rest)

        model.model.forward = limited
        return model, tokenizer

    monkeypatch.setattr(loader, "load", cramped)
    cfg, run_dir = _prepared(tmp_path, tiny_model_dir, "cramped", sft=sections)
    result = sft.train(cfg, run_dir)
    assert result["out_of_memory_backoff"] == [16, 8, 4]
    assert (result["settings"]["micro_batch_size"], result["settings"]["gradient_accumulation_steps"]) == (4, 4)
    assert "then 4 after 2 out-of-memory errors" in result["plan"]["why"]["micro_batch_size"]
    _assert_same_weights(whole, _weights(run_dir, "sft"), "after backing off to 4")
    with pytest.raises(torch.OutOfMemoryError):  # a micro-batch the recipe sets is the recipe's: not changed
        cfg, run_dir = _prepared(tmp_path, tiny_model_dir, "fixed", sft={**sections, "micro_batch_size": 8})
        sft.train(cfg, run_dir)
