"""RL that says why it cannot learn, and answers read one way everywhere: every extraction mode on known replies, the
rewards that use it, the learning-signal diagnostics and their warning, prompt filtering, replies cut at the length
limit, and each tuned model against the one it started from."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ftkit import recipe, sources
from ftkit.core import rundir
from ftkit.models import loader
from ftkit.models.generation import generate
from ftkit.report import display, tables
from ftkit.scoring import answers, rewards
from ftkit.scoring.tasks import ReferenceAnswer
from ftkit.stages import eval as eval_stage
from ftkit.stages import rl
from tests.conftest import recipe_file

REPLIES = [  # reply, reference, mode, regex, strict, lenient
    ("68", "68", "first_number", None, 1.0, 1.0),
    ("12 + 56 = 68", "68", "first_number", None, 0.0, 1.0),
    ("12 + 56 = 68", "68", "last_number", None, 1.0, 1.0),
    ("It costs $1,250.", "1250", "last_number", None, 1.0, 1.0),
    ("3 packs of 4 is 12; 12 - 5 = 7\n#### 7", "Natalia sold 3 * 4 = 12, then 12 - 5 = 7. #### 7", "after_hash",
     None, 1.0, 1.0),
    ("so the answer is 7", "#### 7", "after_hash", None, 0.0, 1.0),
    ("We get \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}", "boxed", None, 1.0, 1.0),
    ("\\boxed{12} wait, \\boxed{14}", "14", "boxed", None, 1.0, 1.0),
    ("Answer: C", "C", "regex", r"Answer:\s*([A-D])", 1.0, 1.0),
    ("I would say C", "C", "regex", r"Answer:\s*([A-D])", 0.0, 1.0),
    (" Paris. ", "paris", "exact", None, 1.0, 1.0),
    ("The capital is Paris", "Paris", "exact", None, 0.0, 1.0),
    ("7.0", "7", "last_number", None, 1.0, 1.0),
    ("5700", "57", "first_number", None, 0.0, 0.0),
]
from ftkit.scoring import grading


@pytest.mark.parametrize("reply, reference, mode, pattern, strict, lenient", REPLIES)
def test_every_extraction_mode_on_known_replies(reply, reference, mode, pattern, strict, lenient):
    assert answers.strict(reply, reference, mode, pattern) == strict
    assert answers.lenient(reply, reference, mode, pattern) == lenient
    task = ReferenceAnswer(mode, pattern)
    assert (task.score(reply, reference), task.lenient(reply, reference)) == (strict, lenient)


def test_lenient_does_not_credit_what_the_reply_only_repeats_from_the_question():
    problem = "Ben has 15 shells. Ben splits them into 3 equal piles and keeps one pile. Then Ben gives away 4. " \
              "Then Ben has 3 times as many shells. How many shells does Ben have now?"
    solution = "15 / 3 = 5\n5 - 4 = 1\n1 * 3 = 3\n#### 3"
    replies = ["15 / 3 = 5\n5 - 4 = 1\n#### 1",  # one step short: its 3 is the question's
               "15 / 3 = 5\n5 - 4 = 1\n1 * 3 = 3",  # the right result, without the ####
               solution]
    cfg = recipe.build({"name": "w", "data": {"task": "word_problems"}})
    per_example, overall = grading.score(cfg, replies, [solution] * 3, [{"prompt": problem}] * 3)
    assert (per_example["task"], per_example["lenient"]) == ([0.0, 0.0, 1.0], [0.0, 1.0, 1.0])
    assert overall["lenient"] == pytest.approx(2 / 3)
    # a multiple-choice reply names the right option and no other: not the article "a", not the options listed
    question = sources.multiple_choice("Which planet is nearest the sun?", ["Venus", "Mercury", "Mars"], 1, "x")
    replies = ["B", "B. Mercury", "It is mercury", "I think it is a planet", "A. Venus\nB. Mercury\nC. Mars", "A"]
    cfg = recipe.build({"name": "m", "data": {"path": "mc.jsonl"}})
    per_example, _ = grading.score(cfg, replies, ["B"] * 6, [question] * 6)
    assert (per_example["exact_match"], per_example["lenient"]) == ([1.0, 0, 0, 0, 0, 0], [1.0, 1.0, 1.0, 0, 0, 0])
    # an answer quoted from a passage (extract: exact) still counts where the passage has it
    passage = "The bridge, 1,200 metres long, opened in 1932. How long is the bridge?"
    assert ReferenceAnswer("exact").lenient("It is 1200 metres.", "1200", passage) == 1.0
    # where the answer is a number to work out (last_number), repeating the question's is not finding it
    assert ReferenceAnswer("last_number").lenient("1200 metres, opened 1932", "1200", passage) == 0.0


def test_the_recipe_names_the_extraction_once_for_scores_and_rewards(tmp_path):
    (tmp_path / "gsm.jsonl").write_text("".join(json.dumps({"question": f"q{i}", "answer": f"work #### {i}"}) + "\n"
                                                for i in range(30)))
    path = recipe_file(tmp_path, {"name": "g", "data": {"path": "gsm.jsonl", "test_size": 5, "extract": "after_hash"},
                                    "rl": {"rewards": {"task": 1.0, "numeric_match": 1.0, "think_format": 0.5}}})
    cfg = recipe.load(path)
    assert grading.metric_names(cfg) == ["task", "lenient"]
    functions, _ = rewards.build(cfg, tmp_path)
    completions = [[{"role": "assistant", "content": text}] for text in
                   ("<think>4 * 3 = 12</think> #### 12", "12, or maybe 13", "#### 13")]
    values = {f.__name__: f(completions, answer=["#### 12"] * 3) for f in functions}
    assert values == {"task": [1.0, 0.0, 0.0], "numeric_match": [1.0, 0.0, 0.0], "think_format": [1.0, 0.0, 0.0]}
    recipe_file(tmp_path, {"name": "g", "data": {"path": "gsm.jsonl", "extract": "regex"}})
    with pytest.raises(recipe.RecipeError, match="extract is regex but extract_regex is not set"):
        recipe.load(path)
    with pytest.raises(recipe.RecipeError, match="task 'addition' reads its answers itself"):
        recipe.build({"name": "t", "data": {"task": "addition", "extract": "last_number"}})


def test_rl_settings_are_validated_together():
    cfg = recipe.build({"name": "r", "rl": {"prompts_per_step": 4, "num_generations": 4, "loss_type": "dr_grpo",
                                            "scale_rewards": "none"}})
    assert cfg.rl.batch_size == 16 and cfg.rl.loss_type == "dr_grpo"
    problems = [({"prompts_per_step": 4, "batch_size": 8}, r"batch_size \(8\) and prompts_per_step \(4\) x "
                                                           r"num_generations \(8\) = 32 disagree"),
                ({"method": "rloo", "loss_type": "dapo"}, "loss_type applies to rl.method grpo, not rloo"),
                ({"loss_type": "ppo"}, "Input should be 'dapo', 'dr_grpo'"),
                ({"method": "dpo", "filter_prompts": True}, "filter_prompts applies to grpo and rloo")]
    for section, message in problems:
        with pytest.raises(recipe.RecipeError, match=message):
            recipe.build({"name": "r", "data": {"path": "p.jsonl"} if section.get("method") == "dpo" else {},
                          "rl": section})


def test_the_warning_fires_when_steps_carry_no_signal():
    quiet = rl.signal([{"step": s, "reward": 1.0, "frac_reward_zero_std": z, "completions/clipped_ratio": 0.0}
                       for s, z in ((1, 1.0), (2, 0.5), (3, 0.75), (4, 0.0))])
    assert quiet == {"logged_steps": 4, "zero_spread_share": 0.5625, "steps_mostly_without_signal": 3,
                     "steps_without_signal": 1, "clipped_share": 0.0}
    text = display.signal_warning({"signal": quiet}, {"max_completion_length": 6})
    assert text.startswith("56% of the prompts in an average step gave all their completions the same reward")
    assert "rl.filter_prompts: true" in text and "1 of 4 steps had no reward spread at all" in text
    # under half of the prompts, but a quarter of the steps without any signal: still a warning
    some = rl.signal([{"step": s, "frac_reward_zero_std": z} for s, z in ((1, 1.0), (2, 0.0), (3, 0.5), (4, 0.0))])
    assert some["zero_spread_share"] == 0.375 and display.signal_warning({"signal": some}, {}) is not None
    clipped = {"signal": {"logged_steps": 2, "zero_spread_share": 0.1, "steps_mostly_without_signal": 0,
                          "steps_without_signal": 0, "clipped_share": 0.4}}
    assert "40% of the completions were cut at rl.max_completion_length = 6" in display.signal_warning(
        clipped, {"max_completion_length": 6})
    assert display.signal_warning({"signal": {**quiet, "zero_spread_share": 0.2, "steps_without_signal": 0}}, {}) is None
    assert display.signal_warning({"method": "dpo"}, {}) is None


def test_a_tiny_run_reports_its_signal_and_rl_against_sft(tiny_run):
    """The tiny random model never solves a question: every GRPO group has one reward, the warning must say so."""
    code, run_dir = tiny_run
    assert code == 0
    metrics = rundir.metrics(run_dir)
    signal = metrics["rl"]["signal"]
    assert signal["logged_steps"] == 2 and signal["zero_spread_share"] == 1.0
    assert signal["generation_seconds_per_step"] > 0 and signal["update_seconds_per_step"] > 0
    assert metrics["rl"]["prompts_per_step"] == 2
    assert set(display.rl_signal(run_dir).columns) >= {"reward", "no-spread share", "cut share"}
    vs_sft = metrics["eval"]["rl"]["vs_sft"]
    assert vs_sft["test"] == "mcnemar_exact" and 0 <= vs_sft["p_value"] <= 1
    page = (run_dir / "report.html").read_text()
    assert "RL: learning signal" in page and "RL had little to learn from." in page
    assert "Each tuned model against the one it started from" in page
    for name, m in metrics["eval"].items():
        assert 0 <= m["cut_at_limit"] <= 1 and "lenient" in m["metrics"]
        records = rundir.load_predictions(run_dir, name)
        assert all(isinstance(r["cut"], bool) for r in records)
        assert m["cut_at_limit"] == pytest.approx(sum(r["cut"] for r in records) / len(records), abs=1e-4)
    notebook = rundir.executed_notebook(run_dir, "rl").read_text()
    assert "no-spread share" in notebook and "rl.filter_prompts: true" in notebook
    # GRPO trained, so eval also sampled 4 replies per prompt at rl.temperature for the RL model and the one it
    # started from (not the base), on the first eval.sampled_size (12) of the 16 test prompts
    assert "sampled" not in metrics["eval"]["base"] and "sampled_change" not in metrics["eval"]["rl"]["vs_base"]
    for name in ("sft", "rl"):
        sampled = metrics["eval"][name]["sampled"]
        assert sampled["k"] == 4 and sampled["temperature"] == 1.0 and 0 <= sampled["value"] <= 1
        assert sampled["n"] == 12 and metrics["eval"][name]["n"] == 16
        records = [r for r in rundir.load_predictions(run_dir, name) if "sampled_score" in r]
        assert len(records) == 12 and sampled["value"] == pytest.approx(sum(r["sampled_score"] for r in records) / 12)
        wrong = [r for r in records if r["score"] < 0.5]  # the greedy mistakes, and those a sample got right
        assert sampled["greedy_wrong"] == len(wrong)
        assert sampled["wrong_with_a_right_sample"] == sum(r["sampled_score"] > 0 for r in wrong)
    assert set(vs_sft["sampled_change"]) == {"value", "ci95", "p_value"}
    assert "sampled (T=1, 4 per prompt, first 12 prompts)" in page and "sampled change" in page
    assert f"Of the {metrics['eval']['sft']['sampled']['greedy_wrong']} test prompts sft answered wrong greedily" in page


def test_rl_against_sft_on_known_predictions(tmp_path):
    cfg = recipe.build({"name": "p"})
    run_dir = tmp_path / "run"
    rows = [{"system": "s", "prompt": f"q{i}", "answer": "1"} for i in range(6)]
    (run_dir / "data").mkdir(parents=True)
    rundir.split_path(run_dir, "test").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rundir.record(run_dir, "rl", {"start_from": "sft"})
    scores = {"base": [0, 0, 0, 0, 0, 0], "sft": [0, 1, 1, 1, 0, 0], "rl": [1, 1, 1, 1, 1, 0]}
    (run_dir / "eval").mkdir()
    for name, values in scores.items():
        rundir.eval_file(run_dir, "predictions", name).write_text("".join(
            json.dumps({"prompt": f"q{i}", "reference": "1", "output": str(v), "score": v}) + "\n"
            for i, v in enumerate(values)))
    results = eval_stage.paired_test(cfg, run_dir, {name: {} for name in scores})
    assert results["rl"]["vs_sft"] == {"test": "mcnemar_exact", "p_value": 0.5, "fail_to_pass": 2, "pass_to_fail": 0}
    assert results["rl"]["vs_base"]["fail_to_pass"] == 5 and "vs_sft" not in results["sft"]
    flips = rundir.eval_records(run_dir, "flips", "rl_vs_sft")
    assert [(f["prompt"], f["sft"], f["rl"]) for f in flips] == [("q0", "0", "1"), ("q4", "0", "1")]


def test_sampled_accuracy_against_the_start_model_and_the_sharpening_note(tmp_path):
    """RL that leaves the greedy answers as they were but makes the sampled ones right more often is told so."""
    cfg = recipe.build({"name": "p"})
    assert eval_stage.sampled_count(cfg) == 4  # the default recipe trains with GRPO
    assert eval_stage.sampled_count(recipe.build({"name": "p", "stages": ["data", "sft", "eval"]})) == 0
    assert eval_stage.sampled_count(recipe.build({"name": "p", "eval": {"sampled": 0}})) == 0
    run_dir = tmp_path / "run"
    rows = [{"system": "s", "prompt": f"q{i}", "answer": "1"} for i in range(8)]
    (run_dir / "data").mkdir(parents=True)
    rundir.split_path(run_dir, "test").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rundir.record(run_dir, "rl", {"start_from": "sft"})
    greedy = [1, 1, 1, 1, 1, 1, 0, 0]  # the same for sft and rl
    sampled = {"sft": [0.5, 0.5, 0.75, 0.25, 0.5, 0.75, 0.0, 0.25], "rl": [1.0, 0.75, 1.0, 0.75, 1.0, 1.0, 0.25, 0.25]}
    (run_dir / "eval").mkdir()
    for name, values in sampled.items():
        rundir.eval_file(run_dir, "predictions", name).write_text("".join(
            json.dumps({"prompt": f"q{i}", "reference": "1", "output": str(g), "score": g, "sampled_score": v}) + "\n"
            for i, (g, v) in enumerate(zip(greedy, values))))
    results = eval_stage.paired_test(cfg, run_dir, {m: {"metric": "accuracy", "accuracy": 0.75} for m in sampled})
    change = results["rl"]["vs_sft"]["sampled_change"]
    assert change["value"] == pytest.approx(0.3125) and change["ci95"][0] > 0 and change["p_value"] < 0.05
    note = tables.sharpening_note(results)
    assert note.startswith("rl against sft: greedy answers changed within chance (0 gained, 0 lost, p 1)")
    assert "sampled accuracy rose by 31.2 points" in note
    assert tables.versus_start(results)["sampled change [95% CI], p"].iloc[0].startswith("+0.312 [")
    results["rl"]["vs_sft"]["sampled_change"]["ci95"] = [-0.01, 0.5]  # within chance: no note
    assert tables.sharpening_note(results) is None


def test_filtering_keeps_prompts_whose_rewards_differ(tiny_run, tmp_path):
    _, run_dir = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "lengths.py").write_text("def length(completions, **kwargs):\n"
                                     "    return [float(len(c[-1]['content'])) for c in completions]\n")
    for rewarded, kept_some in (({"task": 1.0}, False), ({f"{copy}/lengths.py:length": 1.0}, True)):
        cfg = recipe.load(copy / "recipe.yaml", ["rl.filter_prompts=true", "rl.max_steps=1", "rl.save_steps=0",
                                                 f"rl.rewards={json.dumps(rewarded)}"])
        figures = rl.train(cfg, copy)["prompt_filter"]
        assert figures["pool"] == 3 * 1 * 2 // 2 and figures["samples_per_prompt"] == 2
        assert figures["kept"] + sum(figures["no_spread"].values()) == figures["pool"]
        if kept_some:  # random tokens of random lengths: their rewards differ
            assert figures["kept"] > 0 and "fell_back_to_pool" not in figures
        else:  # a random model never answers right: every group scores 0, so it trains on the whole pool
            assert figures["no_spread"] == {"0": 3} and figures["fell_back_to_pool"] is True
    # hard: a pool of 6x the prompts training draws, keeping those in the lower half of their reward range
    cfg = recipe.load(copy / "recipe.yaml", ["rl.filter_prompts=hard", "rl.max_steps=1", "rl.save_steps=0",
                                             "rl.batch_size=4", "rl.num_generations=4",
                                             f"rl.rewards={json.dumps({f'{copy}/lengths.py:length': 1.0})}"])
    figures = rl.train(cfg, copy)["prompt_filter"]
    assert figures["mode"] == "hard" and figures["pool"] == 6 and figures["samples_per_prompt"] == 4
    assert figures["kept"] + sum(figures["no_spread"].values()) == 6


def test_generation_says_which_replies_were_cut(tiny_model_dir):
    """One greedy token per reply: it ended exactly when that token ends a sequence, else it was cut."""
    from ftkit.recipe import ModelConfig

    model, tokenizer = loader.load(ModelConfig(id=str(tiny_model_dir), dtype="float32"))
    prompts = [[{"role": "user", "content": f"What is {i} plus 1?"}] for i in range(6)]
    with torch.no_grad():
        first = [int(model(**tokenizer(tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True),
                                       return_tensors="pt", add_special_tokens=False)).logits[0, -1].argmax())
                 for p in prompts]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, first[0]]  # prompt 0's reply ends at once
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id, first[0]}
    outputs, cut = generate(model, tokenizer, prompts, 1, 1, return_cut=True)
    assert cut == [token not in ends for token in first] and cut[0] is False
    assert len(outputs) == 6


def test_compare_puts_sampled_accuracy_beside_the_headline():
    from ftkit.report import compare

    run = {"metrics": {"eval": {"sft": {"metric": "accuracy", "accuracy": 0.8, "ci95": [0.7, 0.9],
                                        "sampled": {"value": 0.7, "ci95": [0.65, 0.75], "k": 4, "temperature": 1.0}},
                                "base": {"metric": "accuracy", "accuracy": 0.0, "ci95": [0.0, 0.0]}}}}
    columns, rows = compare.metrics_rows([run])
    assert columns == ["sft accuracy", "sft sampled", "base accuracy"], "no run trained: no loss or reward column"
    assert rows[0] == [0.8, 0.7, 0.0]
    trained = {"metrics": {**run["metrics"], "sft": {"final_loss": 0.25}}}
    columns, rows = compare.metrics_rows([run, trained])
    assert columns[-1] == "sft final_loss" and [r[-1] for r in rows] == [None, 0.25]
    assert compare._intervals(run, columns)["sft sampled"] == " [0.650, 0.750]"
    numeric = {"metrics": {"eval": {name: {**m, "numeric_error": {"median": 1.0, "mean": mean, "ci95": [0.5, 2 * mean],
                                                                 "with_a_number": 1.0, "n": 200}}
                                    for (name, m), mean in zip(run["metrics"]["eval"].items(), (2.5, 60.0))}}}
    columns, rows = compare.metrics_rows([numeric])
    assert columns == ["sft accuracy", "sft sampled", "sft numeric error (mean)", "base accuracy",
                       "base numeric error (mean)"] and rows[0] == [0.8, 0.7, 2.5, 0.0, 60.0]
    assert compare._intervals(numeric, columns)["sft numeric error (mean)"] == " [0.500, 5.000]"
    assert any(word in "sft numeric error (mean)" for word in compare.LOWER_IS_BETTER), "bold is the lowest error"
    classified = {"metrics": {"eval": {"sft": {**run["metrics"]["eval"]["sft"], "classes": {"macro_f1": 0.61}}}}}
    columns, rows = compare.metrics_rows([classified])
    assert columns[-1] == "sft macro-F1" and rows[0][-1] == 0.61
