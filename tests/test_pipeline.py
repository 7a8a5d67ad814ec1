"""All four notebooks executed by papermill on a tiny model; failures recorded honestly; the report."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from ftkit import cli
from ftkit.core import rundir
from ftkit.core.io import read_json
from ftkit.report import display, tables
from ftkit.report.page import render
from ftkit.scoring import answers
from tests.conftest import recipe_file, tiny

PAYLOAD = '<script>alert(1)</script><img src=x onerror=alert(2)></textarea><a href="javascript:alert(3)">x</a>'


def test_every_stage_runs_and_records(tiny_run):
    code, run_dir = tiny_run
    status = read_json(run_dir / "status.json")
    assert code == 0, status
    assert [s for s, v in status.items() if v["state"] == "done"] == ["data", "sft", "rl", "eval"]
    for stage in ("data", "sft", "rl", "eval"):
        assert status[stage]["duration_s"] > 0 and status[stage]["error"] is None
        executed = json.loads((run_dir / status[stage]["notebook"]).read_text())
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
    env = read_json(run_dir / "env.json")
    assert env["seed"] == 0 and env["packages"]["torch"] and env["packages"]["trl"]
    assert "name: tiny" in (run_dir / "recipe.yaml").read_text()


def test_metrics_are_present_and_in_range(tiny_run):
    _, run_dir = tiny_run
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["data"]["splits"]["train"]["examples"] == 48 and metrics["data"]["splits"]["test"]["examples"] == 16
    assert metrics["data"]["splits"]["train"]["tokens_max"] > 0
    assert "classes" not in metrics["data"], "sums are not classes: no confusion matrix for addition"
    assert metrics["sft"]["steps"] == 3 and metrics["sft"]["final_loss"] > 0
    assert metrics["rl"]["steps"] == 2 and metrics["rl"]["start_from"] == "sft"
    assert set(metrics["eval"]) == {"base", "sft", "rl"}
    progress = read_json(run_dir / "progress.json")  # the last model's prompts, the skipped perturbations counted
    assert progress["unit"] == "prompts (rl)" and progress["done"] == progress["total"], progress
    for name, m in metrics["eval"].items():
        assert 0.0 <= m["ci95"][0] <= m["accuracy"] <= m["ci95"][1] <= 1.0 and m["n"] == 16
        assert m["answer_loss"] > 0 and m["answer_perplexity"] > 1
        assert m["generalization"]["n"] == 100 and 0.0 <= m["generalization"]["value"] <= 1.0
        robust = m["robustness"]
        if robust["clean"]["value"] == 0:  # nothing right unperturbed: nothing a perturbation could cost
            assert set(robust) == {"clean"} and m["robustness_skipped"].startswith("not perturbed")
        else:
            assert set(robust) == {"clean", "typo", "case", "whitespace", "reword"} and robust["typo"]["n"] == 16
        rows = (run_dir / "eval" / f"predictions_{name}.jsonl").read_text().splitlines()
        sampled = {"sampled_score"} if name != "base" else set()  # GRPO trained: eval.sampled is 4, for RL and SFT
        assert len(rows) == 16 and set(json.loads(rows[0])) == {"prompt", "reference", "output", "score", "scores", "cut",
                                                                "finished", *sampled}
        # the tiny model's replies never end in 4 tokens, so each is answered again with room
        perturbed = run_dir / "eval" / f"robustness_{name}.jsonl"
        assert len(perturbed.read_text().splitlines()) == 4 * 16 if "typo" in robust else not perturbed.exists()
        # addition's answers are numbers: how far off the greedy replies' first numbers are, from the predictions;
        # a wrong number copied from the question is an echo, not an estimate
        def off(records):
            found, echoes = [], 0
            for r in records:
                error = answers.distance(r["output"], r["reference"], "first_number")
                copied = bool(error) and answers.as_number(answers.extract(r["output"], "first_number")) in {
                    answers.as_number(n) for n in answers.numbers(r["prompt"])}
                echoes += copied
                found += [error] if error is not None and not copied else []
            return found, echoes

        found, echoes = off(map(json.loads, rows))
        assert m["numeric_error"]["n"] == len(found) and m["numeric_error"]["with_a_number"] == len(found) / 16
        assert m["numeric_error"].get("echoes", 0) == echoes
        if found:
            assert m["numeric_error"]["median"] == pytest.approx(float(np.median(found)))
            assert m["numeric_error"]["ci95"][0] <= m["numeric_error"]["mean"] <= m["numeric_error"]["ci95"][1]
        found, _ = off(map(json.loads, (run_dir / "eval" / f"generalization_{name}.jsonl").read_text().splitlines()))
        assert m["generalization"]["numeric_error"]["n"] == len(found), "the shifted set's numbers too"
        if found:
            assert m["generalization"]["numeric_error"]["mean"] == pytest.approx(float(np.mean(found)))
    for tuned in ("sft", "rl"):
        paired = metrics["eval"][tuned]["vs_base"]
        assert paired["test"] == "mcnemar_exact" and 0.0 <= paired["p_value"] <= 1.0
        flipped = (run_dir / "eval" / f"flips_{tuned}.jsonl").read_text().splitlines()
        assert len(flipped) == paired["fail_to_pass"] + paired["pass_to_fail"]


def test_training_changed_the_weights(tiny_run):
    _, run_dir = tiny_run
    sft = load_file(run_dir / "sft" / "adapter" / "adapter_model.safetensors")
    lora_b = [k for k in sft if "lora_B" in k]
    assert lora_b, list(sft)[:5]
    # LoRA B starts at zero: any non-zero value was learned by SFT
    assert any(sft[k].abs().sum() > 0 for k in lora_b)
    history = read_json(run_dir / "rl" / "log_history.json")
    assert [h["step"] for h in history if "reward" in h] == [1, 2]


def test_grpo_with_a_user_reward_file_moves_the_weights(tiny_run, tmp_path):
    """The random tiny model never answers right, so the task reward is flat (zero advantage, zero update); a user's
    reward that varies with the completion, named in the recipe as file.py:function, shows that GRPO trains the SFT
    adapter, and that the samples table records each reward."""
    import shutil

    from ftkit import recipe
    from ftkit.stages import rl

    _, run_dir = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "my_rewards.py").write_text(
        "def length(completions, answer, **kwargs):\n"
        "    return [float(len(c[-1]['content'])) for c in completions]\n")
    cfg = recipe.load(copy / "recipe.yaml", ["rl.temperature=1.5", "rl.rewards={my_rewards.py:length: 1.0, task: 0.5}"])
    result = rl.train(cfg, copy)
    assert result["start_from"] == "sft" and result["steps"] == 2
    assert result["rewards"] == {"my_rewards.py:length": 1.0, "task": 0.5}
    before = load_file(copy / "sft" / "adapter" / "adapter_model.safetensors")
    after = load_file(copy / "rl" / "adapter" / "adapter_model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before if "lora" in k)
    samples = display.rl_samples(copy)
    assert set(samples["step"]) == {0, 1} and {"my_rewards.py:length", "task", "total"} <= set(samples.columns)
    first = samples.iloc[0]
    assert first["my_rewards.py:length"] == len(first["completion"])
    assert first["total"] == pytest.approx(first["my_rewards.py:length"] + 0.5 * first["task"])
    assert {"reward", "rewards/my_rewards.py:length/mean", "rewards/task/mean"} <= set(rundir.rl_curves(copy))


def test_each_stage_says_where_its_time_went(tiny_run):
    """The phases of each stage add up to its time (within 5%): the kernel's start, the imports, what ftkit timed
    inside the stage, the notebook's own code and writing the notebook. The report shows them as bars. The stages
    after the first get a kernel started ahead, whose imports ran while the stage before it worked."""
    _, run_dir = tiny_run
    status, phases = rundir.status(run_dir), rundir.phases(run_dir)
    for stage in ("data", "sft", "rl", "eval"):
        total = sum(phases[stage].values())
        assert abs(total - status[stage]["duration_s"]) <= 0.05 * status[stage]["duration_s"], (stage, phases[stage])
        assert {"kernel start", "notebook code", "writing the notebook"} <= set(phases[stage])
    assert status["data"]["kernel"] == "started with the stage" and "imports" in phases["data"]
    for stage in ("sft", "rl", "eval"):
        assert status[stage]["kernel"] == "started ahead" and "imports" not in phases[stage], (stage, phases[stage])
    assert {"loading", "preparing data", "saving"} <= set(phases["data"])
    assert {"loading", "update", "saving"} <= set(phases["sft"])
    assert {"loading", "generation", "rewards", "update", "saving"} <= set(phases["rl"])
    perturbed = any("typo" in m["robustness"] for m in rundir.metrics(run_dir)["eval"].values())
    assert {"loading", "generation", "sampled replies", "shifted set", "scoring"} <= set(phases["eval"])
    assert ("perturbation sets" in phases["eval"]) == perturbed  # none where no model got a test prompt right
    # the RL figures per step come from the same clocks
    per_step = rundir.metrics(run_dir)["rl"]["seconds_per_step"]
    assert per_step["generation"] > 0 and per_step["update"] > 0
    page = (run_dir / "report.html").read_text()
    assert '<div id="phases"><img' in page and "<th>most time</th>" in page


def test_report_holds_the_metrics_table_and_plots(tiny_run):
    _, run_dir = tiny_run
    page = (run_dir / "report.html").read_text()
    assert '<div id="metrics">' in page and "<td>sft</td>" in page and "<td>rl</td>" in page
    assert "1 · Task performance" in page and "2 · Generalization and 3 · Robustness" in page
    evaluated = rundir.metrics(run_dir)["eval"]
    for name, m in evaluated.items():  # the tiny models get no sum right: nothing a perturbation could cost them
        assert ("robustness: typo (change)" in page) if "typo" in m["robustness"] else (
            f"<p>{name}: not perturbed: no reply to the unperturbed prompts was right" in page)
    assert page.count("data:image/png;base64,") >= 2  # SFT loss and RL reward, embedded
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert 'id="stage-eval"' in page
    # a feature the recipe does not use is one line in the notebook (and so the report), not an empty table
    for unused in ("data.mix", "data.augment", "eval.judge"):
        assert f"not used by this recipe: {unused}" in page
    assert "not a classification" in page


def test_report_escapes_model_output_and_dataset_text(tiny_run, tmp_path):
    import shutil

    _, run_dir = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    path = copy / "eval" / "predictions_sft.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0].update(prompt=PAYLOAD, output=PAYLOAD)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = render(copy).read_text()
    assert "<script>alert(1)" not in page and "<img src=x" not in page and 'href="javascript:' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # the eval notebook's side-by-side table (a DataFrame rendered as HTML) escapes it too
    table = tables.side_by_side(copy, ["base", "sft"], limit=3)._repr_html_()
    assert "<script>alert(1)" not in table and "&lt;script&gt;alert(1)&lt;/script&gt;" in table


def test_report_command_rerenders(tiny_run, capsys):
    _, run_dir = tiny_run
    (run_dir / "report.html").unlink()
    assert cli.main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file()
    assert cli.main(["report", str(run_dir / "nope")]) == 2


@pytest.mark.pipeline
def test_failing_stage_is_recorded_and_stops_the_run(tiny_model_dir, tmp_path, capsys):
    import shutil

    # tokenizer and config but no weights: the data stage (which needs only the tokenizer) passes, SFT fails
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, broken, ignore=shutil.ignore_patterns("*.safetensors"))
    recipe = recipe_file(tmp_path, tiny(tiny_model_dir), model={"id": str(broken)}, stages=["data", "sft", "eval"], file="tiny.yaml")
    run_dir = tmp_path / "failed"
    assert cli.main(["run", str(recipe), "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "stage sft failed: OSError" in err and "02_sft.ipynb" in err
    status = read_json(run_dir / "status.json")
    assert status["data"]["state"] == "done"
    assert status["sft"]["state"] == "failed" and "no-weights" in status["sft"]["error"]
    assert status["eval"]["state"] == "not run"
    page = (run_dir / "report.html").read_text()
    assert "Stage sft failed" in page


@pytest.mark.pipeline
def test_missing_model_fails_in_the_data_stage_before_training(tmp_path, capsys, tiny_model_dir):
    # a hub id that no cache or offline copy has (a missing local folder is refused earlier, by validation)
    recipe = recipe_file(tmp_path, tiny(tiny_model_dir), model={"id": "nobody-here/no-such-model"}, file="tiny.yaml")
    run_dir = tmp_path / "failed"
    assert cli.main(["run", str(recipe), "--run-dir", str(run_dir)]) == 1
    assert "stage data failed: ModelNotFound" in capsys.readouterr().err
    status = read_json(run_dir / "status.json")
    assert status["data"]["state"] == "failed" and "no-such-model" in status["data"]["error"]
    assert [status[s]["state"] for s in ("sft", "rl", "eval")] == ["not run"] * 3
    assert not (run_dir / "sft").exists()


@pytest.mark.pipeline
def test_cell_timeout_is_a_failure_not_a_success(tmp_path, tiny_model_dir):
    recipe = recipe_file(tmp_path, tiny(tiny_model_dir), stages=["data", "sft"], sft={"max_steps": 200}, file="tiny.yaml")
    run_dir = tmp_path / "timeout"
    assert cli.main(["run", str(recipe), "--stages", "data", "--run-dir", str(run_dir)]) == 0
    # importing torch and training 200 steps takes far longer than 3 s in one cell
    code = cli.main(["run", str(recipe), "--stages", "sft", "--set", "cell_timeout=3", "--run-dir", str(run_dir)])
    assert code == 1
    status = read_json(run_dir / "status.json")
    assert status["data"]["state"] == "done"
    assert status["sft"]["state"] == "failed" and "timed out" in status["sft"]["error"].lower()
    assert "sft" not in read_json(run_dir / "metrics.json", {})


@pytest.mark.pipeline
def test_chat_files_flow_through_every_stage(tiny_model_dir, tmp_path):
    """Multi-turn chat data from a file: validation split, SFT with an eval loss, GRPO and exact-match eval."""

    rows = [{"messages": [{"role": "system", "content": "Reply with the color."},
                          {"role": "user", "content": f"Item {i} is it red or blue?"},
                          {"role": "assistant", "content": "red" if i % 2 else "blue"},
                          {"role": "user", "content": "Say it again."},
                          {"role": "assistant", "content": "red" if i % 2 else "blue"}]} for i in range(40)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = recipe_file(tmp_path, {
        "name": "chat", "model": {"id": str(tiny_model_dir), "lora_r": 4, "lora_alpha": 8},
        # templated examples share 8-grams; this test is about the flow, not contamination
        "data": {"path": "chat.jsonl", "test_size": 6, "validation_size": 4, "max_contamination": 1.0},
        "sft": {"max_steps": 4, "batch_size": 8, "learning_rate": 1.0e-2, "logging_steps": 2},
        "rl": {"max_steps": 1, "batch_size": 4, "num_generations": 2, "max_completion_length": 3},
        "eval": {"batch_size": 8, "max_new_tokens": 3}}, file="chat.yaml")
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(recipe), "--run-dir", str(run_dir)]) == 0, read_json(run_dir / "status.json")
    metrics = read_json(run_dir / "metrics.json")
    assert {k: v["examples"] for k, v in metrics["data"]["splits"].items()} == {"test": 6, "validation": 4, "train": 30}
    assert metrics["sft"]["final_eval_loss"] > 0
    assert set(metrics["eval"]) == {"base", "sft", "rl"} and metrics["eval"]["sft"]["n"] == 6
    first = json.loads((run_dir / "data" / "train.jsonl").read_text().splitlines()[0])
    assert first["prompt"] == "Say it again." and len(first["history"]) == 2


def test_progress_of_a_running_stage_is_reported_by_tenths(tmp_path, monkeypatch):
    import time

    from ftkit.core.rundir import write_progress
    from ftkit.run.runner import ProgressWatcher

    events = []
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notebooks").mkdir()
    with ProgressWatcher(Path("run"), "sft", lambda kind, stage, figures: events.append((kind, stage, figures)),
                         poll_s=0.02):
        monkeypatch.chdir(tmp_path / "notebooks")  # as papermill does while a notebook runs
        for step in range(1, 41):
            write_progress(tmp_path / "run", "sft", step, 40, "steps")
            write_progress(tmp_path, "rl", step, 40, "steps")  # another stage's file is not this stage's progress
            time.sleep(0.01)
        time.sleep(0.1)
    shown = [figures["done"] for kind, stage, figures in events if kind == "progress" and stage == "sft"]
    assert 1 <= len(shown) <= 11 and shown == sorted(shown), shown
    assert all(f["total"] == 40 and f["unit"] == "steps" for _, _, f in events)
