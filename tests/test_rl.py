"""RL: rewards named in the recipe (built-in and user files) and their failures, DPO and RLOO on a tiny model."""

import json

import pytest
from safetensors.torch import load_file

from ftkit import recipe, sources
from ftkit.core import rundir
from ftkit.core.rows import DataError
from ftkit.models import loader
from ftkit.report import display
from ftkit.scoring import grading, rewards, stats
from ftkit.scoring.tasks import Addition
from ftkit.stages import data, rl, sft
from ftkit.stages import eval as eval_stage
from tests.conftest import ROOT, recipe_file


@pytest.mark.parametrize("reward_file, reward, message", [
    (None, "missing.py:f", r"r\.yaml:\d+: reward '.*missing\.py:f': no file .*missing\.py; put the file next to the "
                           r"recipe or fix the path"),
    ("def other(completions, **kwargs):\n    return [0.0]\n", "mine.py:mine",
     r"mine\.py defines no function 'mine'; its functions: other"),
    ("def mine(completions):\n    return [0.0]\n", "mine.py:mine",
     r"mine\(completions\) cannot take TRL's arguments; a reward takes `completions` and \*\*kwargs"),
    ("import nonexistent_module\n", "mine.py:mine",
     r"importing .*mine\.py failed: ModuleNotFoundError: No module named 'nonexistent_module'"),
    (None, "exact", r"unknown reward 'exact'; built-in rewards: task, exact_match, rouge_l, numeric_match, format, "
                    r"length_penalty, json_valid, think_format, code_tests, or name your own as file\.py:function"),
    (None, "format", r"rl: rewards names format but format_regex is not set"),
])
def test_bad_rewards_fail_at_validation(tmp_path, reward_file, reward, message):
    if reward_file:
        (tmp_path / "mine.py").write_text(reward_file)
    with pytest.raises(recipe.RecipeError, match=message):
        recipe.load(recipe_file(tmp_path, rl={"rewards": {reward: 1.0}}))


def test_bad_format_regex_is_caught(tmp_path):
    with pytest.raises(recipe.RecipeError, match=r"format_regex '\(' is not a regular expression"):
        recipe.load(recipe_file(tmp_path, rl={"rewards": {"format": 1.0}, "format_regex": "("}))


@pytest.mark.parametrize("body, message", [
    ("raise KeyError('answer')", r"reward 'bad' raised KeyError: 'answer'"),
    ("return [1.0]", r"reward 'bad' returned 1 values for 2 completions; return one float per completion"),
    ("return [float('nan')] * len(completions)", r"reward 'bad' returned nan; a reward must be a number"),
    ("return [None] * len(completions)", r"reward 'bad' returned None; a reward must be a number"),
])
def test_rewards_that_misbehave_stop_training_with_their_name(body, message):
    namespace = {}
    exec(f"def bad(completions, **kwargs):\n    {body}\n", namespace)
    with pytest.raises(rewards.RewardError, match=message):
        rewards.checked(namespace["bad"], "bad")(["a", "b"], answer=["1", "2"])


def test_built_in_rewards_are_built_with_their_options(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "What is 23 plus 45?", "completion": "68"}\n')
    cfg = recipe.load(recipe_file(tmp_path, data={"path": "d.jsonl", "extract": "first_number",
                                                   "numeric_tolerance": 1.0}, rl={
        "rewards": {"task": 1.0, "numeric_match": 0.5, "format": 0.2, "length_penalty": 0.1, "json_valid": 0.1},
        "format_regex": r"\d+", "length_target": 2}))
    functions, weights = rewards.build(cfg, tmp_path)
    assert [f.__name__ for f in functions] == ["task", "numeric_match", "format", "length_penalty", "json_valid"]
    assert weights == [1.0, 0.5, 0.2, 0.1, 0.1]
    completions = [[{"role": "assistant", "content": "68"}], [{"role": "assistant", "content": "66.5 or so"}],
                   [{"role": "assistant", "content": "about 67.5"}]]
    values = [f(completions, answer=["68"] * 3) for f in functions]
    # the tolerance is the data's: the task scorer (first number) and numeric_match (last number) allow 1.0
    assert values == [[1.0, 0.0, 1.0], [1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, -1.0], [1.0, 0.0, 0.0]]


def test_the_task_reward_on_answers_that_are_sentences_is_rouge_l(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "What does math.tan do?", "completion": "Return the tangent of x."}\n')
    cfg = recipe.load(recipe_file(tmp_path, data={"path": "d.jsonl"}))
    sentences = [{"prompt": "What does math.tan do?", "answer": "Return the tangent of x."}]
    completions = [[{"role": "assistant", "content": c}] for c in ("Return the tangent of x.", "Tangent of x.", "7")]
    (reward,), _ = rewards.build(cfg, tmp_path, sentences)
    assert reward.__name__ == "rouge_l"
    assert [round(v, 2) for v in reward(completions, answer=[sentences[0]["answer"]] * 3)] == [1.0, 0.75, 0.0]
    (reward,), _ = rewards.build(cfg, tmp_path, [{"prompt": "Capital of France?", "answer": "Paris"}])
    assert reward.__name__ == "task" and reward(completions[:1], answer=["Paris"]) == [0.0]
    numbers = recipe.load(recipe_file(tmp_path, data={"path": "d.jsonl", "extract": "last_number"}))
    assert rewards.build(numbers, tmp_path, sentences)[0][0].__name__ == "task"  # the recipe says where the answer is


def test_numeric_tolerance_moved_to_data_and_applies_to_files_only(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "What is 23 plus 45?", "completion": "68"}\n')
    older = recipe.load(recipe_file(tmp_path, data={"path": "d.jsonl"}, rl={"numeric_tolerance": 0.5}))
    assert older.data.numeric_tolerance == 0.5  # an older recipe's rl.numeric_tolerance is read where it now lives
    assert recipe.load(recipe_file(tmp_path, rl={"numeric_tolerance": 0.0})).data.numeric_tolerance == 0.0
    with pytest.raises(recipe.RecipeError, match=r"numeric_tolerance \(0.5\) applies to files and hub datasets; "
                                                 r"task 'addition' scores its answers itself"):
        recipe.load(recipe_file(tmp_path, data={"task": "addition", "numeric_tolerance": 0.5}))


def test_dpo_needs_preference_pairs(tmp_path):
    """One rule (recipe.data_problem), checked from the recipe where it can be, from the rows where it cannot."""
    with pytest.raises(recipe.RecipeError, match="task 'addition': rl.method dpo trains on preference pairs, and "
                                                 "this data has no rejected answers"):
        recipe.load(recipe_file(tmp_path, rl={"method": "dpo"}))
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n"
                                               for i in range(30)))
    cfg = recipe.load(recipe_file(tmp_path, data={"path": "qa.jsonl", "test_size": 5}, rl={"method": "dpo"}))
    with pytest.raises(DataError, match="qa.jsonl: rl.method dpo trains on preference pairs, and this data has "
                                             "no rejected answers; use data with prompt/chosen/rejected columns"):
        data.build_splits(cfg)
    with pytest.raises(DataError, match="the train split: rl.method dpo trains on preference pairs"):
        rl.preference_dataset([{"prompt": "q", "answer": "a"}])


def test_the_shipped_preference_pairs_are_the_generators():
    shipped = (ROOT / "recipes" / "data" / "addition_preferences.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in shipped] == Addition().preference_pairs(400, seed=1)


def _prepared_run(tmp_path, tiny_model_dir, stages, **sections):
    """A run directory with the data stage done (and SFT, when listed), in-process."""
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in Addition().preference_pairs(60, 1)))
    cfg = recipe.load(recipe_file(
        tmp_path, stages=stages, model={"id": str(tiny_model_dir), "lora_r": 4, "lora_alpha": 8,
                                        "gradient_checkpointing": False},
        data={"path": "prefs.jsonl", "test_size": 8},
        sft={"max_steps": 2, "batch_size": 8, "learning_rate": 1.0e-2, "logging_steps": 1}, **sections))
    run_dir = tmp_path / "run"
    tokenizer = loader.load_tokenizer(str(tiny_model_dir))
    splits, figures = data.build_splits(cfg, tokenizer)
    data.save_splits(splits, run_dir, figures, tokenizer)
    if "sft" in stages:
        sft.train(cfg, run_dir)
    return cfg, run_dir


def test_dpo_trains_the_sft_adapter_against_itself(tmp_path, tiny_model_dir):
    cfg, run_dir = _prepared_run(tmp_path, tiny_model_dir, ["data", "sft", "rl"], rl={
        "method": "dpo", "max_steps": 3, "batch_size": 4, "learning_rate": 1.0e-2, "logging_steps": 1})
    result = rl.train(cfg, run_dir)
    assert result["method"] == "dpo" and result["start_from"] == "sft" and result["steps"] == 3
    assert result["first_margin"] == pytest.approx(0.0, abs=1e-4), "the reference is the SFT model itself"
    before = load_file(run_dir / "sft" / "adapter" / "adapter_model.safetensors")
    after = load_file(run_dir / "rl" / "adapter" / "adapter_model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before)
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "loss"} <= \
        set(rundir.rl_curves(run_dir))
    assert len([ax for ax in display.plot_rl(run_dir).axes if ax.axison]) == 5, "one plot per DPO curve"
    assert display.rl_samples(run_dir).empty
    # held-out pairs are measured by preference: how often each model finds the chosen answer likelier
    rundir.record(run_dir, "rl", result)
    results = {name: eval_stage.evaluate_model(cfg, run_dir, name) for name in ("base", "sft", "rl")}
    results = eval_stage.paired_test(cfg, run_dir, results)
    for name, result in results.items():
        assert result["metric"] == "preference" and result["n"] == 8
        records = rundir.load_predictions(run_dir, name)
        assert result["preference"] == sum(c > r for c, r in (p["log_likelihood"] for p in records)) / 8
        assert [p["score"] for p in records] == stats.prefers_chosen([p["log_likelihood"] for p in records])
    assert results["rl"]["vs_sft"]["test"] == "mcnemar_exact"
    implicit = results["rl"]["implicit_reward"]
    assert implicit["reference"] == "sft" and implicit["beta"] == 0.1
    policy, reference = ([p["log_likelihood"] for p in rundir.load_predictions(run_dir, m)] for m in ("rl", "sft"))
    assert implicit["margin"] == pytest.approx(
        sum(0.1 * ((pc - rc) - (pr - rr)) for (pc, pr), (rc, rr) in zip(policy, reference)) / 8, abs=1e-5)


def test_preference_pairs_are_also_scored_on_what_the_model_says_where_the_recipe_says_how(tmp_path):
    pairs = [{"prompt": "2+2?", "answer": "4", "rejected": "5"}]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
    plain = recipe.load(recipe_file(tmp_path, stages=["data", "rl", "eval"], rl={"method": "dpo"},
                                     data={"path": "p.jsonl"}))
    assert grading.metric_names(grading.for_rows(plain, pairs)) == ["preference"]
    numeric = recipe.load(recipe_file(tmp_path, stages=["data", "rl", "eval"], rl={"method": "dpo"},
                                       data={"path": "p.jsonl", "extract": "first_number"}))
    assert grading.metric_names(grading.for_rows(numeric, pairs)) == ["preference", "task", "lenient"]
    assert grading.metric_names(grading.for_rows(numeric, [{"prompt": "2+2?", "answer": "4"}])) == [
        "task", "lenient"]


def test_kto_learns_from_answers_labelled_desirable_or_not(tmp_path, tiny_model_dir):
    (tmp_path / "feedback.jsonl").write_text("".join(json.dumps(r) + "\n" for r in Addition().feedback(60, 2)))
    cfg = recipe.load(recipe_file(
        tmp_path, stages=["data", "sft", "rl"], model={"id": str(tiny_model_dir), "lora_r": 4, "lora_alpha": 8},
        data={"path": "feedback.jsonl", "test_size": 8},
        sft={"max_steps": 2, "batch_size": 8, "learning_rate": 1.0e-2, "logging_steps": 1},
        rl={"method": "kto", "max_steps": 3, "batch_size": 8, "learning_rate": 1.0e-2, "logging_steps": 1}))
    assert cfg.rl.kl_beta == 0.1
    run_dir = tmp_path / "run"
    tokenizer = loader.load_tokenizer(str(tiny_model_dir))
    splits, figures = data.build_splits(cfg, tokenizer)
    data.save_splits(splits, run_dir, figures, tokenizer)
    assert {type(r["label"]) for r in splits["train"]} == {bool}
    sft.train(cfg, run_dir)
    result = rl.train(cfg, run_dir)
    train = rundir.load_split(run_dir, "train")
    assert result["method"] == "kto" and result["start_from"] == "sft" and result["steps"] == 3
    assert result["desirable"] == sum(r["label"] for r in train) and result["undesirable"] == len(train) - \
        result["desirable"] > 0
    before = load_file(run_dir / "sft" / "adapter" / "adapter_model.safetensors")
    after = load_file(run_dir / "rl" / "adapter" / "adapter_model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before), "KTO changed the weights"
    assert {"rewards/chosen", "rewards/rejected", "kl", "loss"} <= set(rundir.rl_curves(run_dir))


def test_kto_and_dpo_refuse_data_without_their_labels(tmp_path):
    (tmp_path / "qa.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    cfg = recipe.load(recipe_file(tmp_path, data={"path": "qa.jsonl", "test_size": 5}, rl={"method": "kto"}))
    with pytest.raises(DataError, match="rl.method kto trains on feedback"):
        rl.feedback_dataset(data.clean(sources.load_files(str(tmp_path / "qa.jsonl"), "auto", {})[0], {}))
    assert cfg.rl.method == "kto"
    with pytest.raises(recipe.RecipeError, match="rl.method dpo trains on preference pairs.*rl.method kto"):
        recipe.load(recipe_file(tmp_path, data={"path": "qa.jsonl", "format": "feedback"}, rl={"method": "dpo"}))
    with pytest.raises(recipe.RecipeError, match="use rl.method kto to learn from the labels"):
        recipe.load(recipe_file(tmp_path, data={"path": "qa.jsonl", "format": "feedback"}))


def test_feedback_labels_are_read_or_refused(tmp_path):
    (tmp_path / "f.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "c", "label": label}) + "\n"
                                              for i, label in enumerate([True, "thumbs_down", 1, "good", "maybe"])))
    with pytest.raises(DataError, match=r"f\.jsonl:5: label 'maybe' is neither desirable nor undesirable"):
        sources.load_files(str(tmp_path / "f.jsonl"), "auto", {})
    (tmp_path / "f.jsonl").write_text("".join((tmp_path / "f.jsonl").read_text().splitlines(True)[:4]))
    rows, _ = sources.load_files(str(tmp_path / "f.jsonl"), "auto", {})
    assert [r["label"] for _, r in rows] == [True, False, True, True]


def test_the_shipped_feedback_is_the_generators():
    shipped = (ROOT / "recipes" / "data" / "addition_feedback.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in shipped] == Addition().feedback(600, seed=2)


def test_rloo_from_the_base_model_with_built_in_rewards(tmp_path, tiny_model_dir):
    cfg, run_dir = _prepared_run(tmp_path, tiny_model_dir, ["data", "rl"], rl={
        "method": "rloo", "max_steps": 2, "batch_size": 4, "num_generations": 2, "learning_rate": 1.0e-2,
        "temperature": 1.5, "max_completion_length": 6, "logging_steps": 1,
        "rewards": {"length_penalty": 1.0, "exact_match": 1.0}, "length_target": 12})
    result = rl.train(cfg, run_dir)
    assert result["method"] == "rloo" and result["start_from"] == "base" and result["steps"] == 2
    trained = load_file(run_dir / "rl" / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k), "lora_B starts at zero"
    assert {"length_penalty", "exact_match", "total"} <= set(display.rl_samples(run_dir).columns)


def _prompts_recipe(tmp_path, tiny_model_dir, **sections):
    words = ["river", "stone", "cloud", "bread", "lamp", "piano", "cliff", "tiger", "maple", "ocean", "spoon", "glass"]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(
        {"prompt": f"Write a sentence with the word {w} in it, number {i}.", "word": w}) + "\n"
        for i in range(3) for w in words))
    (tmp_path / "rw.py").write_text("def mentions(completions, word, **kwargs):\n"
                                    "    return [float(w in c[-1]['content']) for c, w in zip(completions, word)]\n")
    return recipe_file(tmp_path, **{
        "stages": ["data", "rl", "eval"], "model": {"id": str(tiny_model_dir), "lora_r": 4, "lora_alpha": 8},
        "data": {"path": "prompts.jsonl", "keep_columns": ["word"], "test_size": 6, "max_contamination": 1.0},
        "rl": {"rewards": {"rw.py:mentions": 1.0, "length_penalty": 0.5}, "length_target": 8, "max_steps": 2,
               "batch_size": 4, "num_generations": 2, "learning_rate": 1.0e-2, "max_completion_length": 6},
        "eval": {"max_new_tokens": 6, "robustness_size": 2, "perturbations": ["case"], "sampled": 2}, **sections})


@pytest.mark.pipeline
def test_prompts_without_answers_train_with_grpo_and_are_evaluated_by_their_rewards(tmp_path, tiny_model_dir):
    """Prompts alone (RL where no demonstration exists): a reward reads a kept column; eval scores held-out replies by
    the same rewards, paired against the base."""
    from ftkit import cli
    from ftkit.core.io import read_json

    path, run_dir = _prompts_recipe(tmp_path, tiny_model_dir), tmp_path / "run"
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0, read_json(run_dir / "status.json")
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["data"]["format"] == "prompts" and metrics["data"]["answers_end_with_end_of_turn"] is None
    train = rundir.load_split(run_dir, "train")
    assert all("answer" not in r and r["extra"]["word"] in r["prompt"] for r in train)
    assert metrics["rl"]["steps"] == 2
    for name in ("base", "rl"):
        result, records = metrics["eval"][name], rundir.load_predictions(run_dir, name)
        assert result["metric"] == "reward" and "answer_loss" not in result
        assert {"reward", "reward/rw.py:mentions", "reward/length_penalty"} <= set(result["metrics"])
        by_prompt = {r["prompt"]: r["extra"]["word"] for r in rundir.load_split(run_dir, "test")}
        for record in records:  # the weighted sum of the rewards on the greedy reply, as training computed it
            mentions = float(by_prompt[record["prompt"]] in record["output"])
            penalty = rewards.length_penalty([record["output"]], target=8)[0]
            assert record["score"] == pytest.approx(mentions + 0.5 * penalty)
            assert record["reference"] == ""
        assert result["reward"] == pytest.approx(sum(r["score"] for r in records) / len(records))
        assert result["sampled"]["k"] == 2 and result["robustness"]["case"]["n"] == 2  # rewards: perturbed always
    assert metrics["eval"]["rl"]["vs_base"]["test"] == "wilcoxon"
    page = (run_dir / "report.html").read_text()
    assert "reward/rw.py:mentions" in page and "robustness: case (change)" in page


def test_prompts_without_answers_refuse_sft_dpo_and_rewards_that_need_an_answer(tmp_path, tiny_model_dir):
    with pytest.raises(recipe.RecipeError, match="data.format prompts: prompts without answers give SFT nothing to "
                                                 "imitate: remove sft from stages"):
        recipe.load(_prompts_recipe(tmp_path, tiny_model_dir, stages=["data", "sft", "rl"],
                                    data={"path": "prompts.jsonl", "format": "prompts"}))
    cfg = recipe.load(_prompts_recipe(tmp_path, tiny_model_dir, stages=["data", "sft", "eval"]))
    with pytest.raises(DataError, match="prompts.jsonl: prompts without answers give SFT nothing to imitate"):
        data.build_splits(cfg)
    cfg = recipe.load(_prompts_recipe(tmp_path, tiny_model_dir, rl={"rewards": {"task": 1.0, "length_penalty": 1.0}}))
    with pytest.raises(DataError, match="rl.rewards names task, which compares a reply with a reference answer, and "
                                        "these prompts have none"):
        data.build_splits(cfg)
    cfg = recipe.load(_prompts_recipe(tmp_path, tiny_model_dir, eval={"metrics": ["reward", "rouge_l"]}))
    with pytest.raises(DataError, match="eval.metrics names rouge_l, which compares replies with reference answers"):
        data.build_splits(cfg)  # before RL trains
    splits, figures = data.build_splits(recipe.load(_prompts_recipe(tmp_path, tiny_model_dir)))
    data.save_splits(splits, tmp_path / "run", figures)
    with pytest.raises(ValueError, match="eval.metrics names rouge_l, which compares replies with reference answers"):
        eval_stage.evaluate_model(cfg, tmp_path / "run", "base")  # a run directory made before the recipe changed
    judged = recipe.load(_prompts_recipe(tmp_path, tiny_model_dir, eval={"judge": {"model": "base"}}))
    with pytest.raises(ValueError, match="eval.judge.against is reference, and these test prompts have no reference"):
        eval_stage.judge_models(judged, tmp_path / "run", {"base": {}})
    with pytest.raises(recipe.RecipeError, match="rl.method dpo learns from answers given with the prompts"):
        recipe.load(_prompts_recipe(tmp_path, tiny_model_dir, rl={"method": "dpo"},
                                    data={"path": "prompts.jsonl", "format": "prompts"}))
    with pytest.raises(recipe.RecipeError, match="keep_columns names 'answer', which a reward already receives"):
        recipe.load(_prompts_recipe(tmp_path, tiny_model_dir, data={"path": "prompts.jsonl", "keep_columns": ["answer"]}))
    cfg = recipe.load(_prompts_recipe(tmp_path, tiny_model_dir, data={"path": "prompts.jsonl", "keep_columns": ["wrd"],
                                                                      "max_contamination": 1.0}))
    with pytest.raises(DataError, match=r"prompts.jsonl:1: data.keep_columns names 'wrd', which this row lacks; the "
                                        r"columns are \['prompt', 'word'\]"):
        data.build_splits(cfg)


def test_the_shipped_writing_prompts_are_the_generators_and_its_reward_is_documented():
    import doctest
    import importlib.util

    spec = importlib.util.spec_from_file_location("writing", ROOT / "recipes" / "rewards" / "writing.py")
    writing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writing)
    shipped = (ROOT / "recipes" / "data" / "writing_prompts.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in shipped] == writing.prompts(320, seed=5)
    result = doctest.testmod(writing)
    assert result.failed == 0 and result.attempted > 0


def test_preference_answers_may_be_conversations():
    row = sources.normalize({"prompt": "Hi?", "chosen": [{"role": "user", "content": "Hi?"},
                                                      {"role": "assistant", "content": "Hello."}],
                          "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go."}]},
                         "preference", "ultrafeedback row 0")
    assert row == {"prompt": "Hi?", "answer": "Hello.", "rejected": "Go."}


def test_grpo_scores_only_the_completion_on_a_cpu_with_the_same_log_probabilities(tiny_model_dir, monkeypatch):
    """TRL's fused head scores every position off Triton devices; ftkit makes it score the labelled ones (the
    completion) on a CPU too: the same log-probabilities and gradients, fewer rows through the head."""
    import torch
    from peft import get_peft_model
    from trl.trainer import utils as trl_utils

    from ftkit.recipe import ModelConfig
    from ftkit.training import trainer

    cfg = ModelConfig(id=str(tiny_model_dir), dtype="float32", lora_r=4, lora_alpha=8)
    model, _ = loader.load(cfg, trainable=True)
    trl_utils.add_fused_lm_head(model)
    model = get_peft_model(model, loader.lora_config(cfg))
    ids = torch.randint(5, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :9] = -100  # a 9-token prompt, a 3-token completion
    rows = []
    original_apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *rest: rows.append(hidden.shape[0]) or original_apply(hidden, *rest))

    def scored():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.log_probs.detach(), grads

    # TRL's own choice, whether or not an earlier training in this process changed it; restored after the test
    monkeypatch.setattr(trl_utils, "_use_triton", getattr(trl_utils._use_triton, "ftkit_original",
                                                          trl_utils._use_triton))
    every, every_grads = scored()
    assert trainer.score_completions_only()
    assert trainer.score_completions_only(), "a second call leaves the change as it is"
    compact, compact_grads = scored()
    assert rows == [3 * 11, 3 * 3], "every shifted position first, then only the completion's"
    torch.testing.assert_close(compact, every)
    assert (compact[:, :8] == 0).all()
    assert every_grads.keys() == compact_grads.keys() and every_grads
    for name in every_grads:
        torch.testing.assert_close(compact_grads[name], every_grads[name])


def test_the_head_gets_a_contiguous_input_in_generation(tiny_model_dir):
    """transformers hands the LM head the last position's slice of the hidden states in a generation's first step; on a
    CPU a frozen head takes a slow path for a strided input, so the loader makes it contiguous (same replies)."""
    import torch

    from ftkit.recipe import ModelConfig

    model, tokenizer = loader.load(ModelConfig(id=str(tiny_model_dir), dtype="float32"))
    for param in model.parameters():
        param.requires_grad_(False)  # as under LoRA
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: seen.append(args[0].is_contiguous()))
    ids = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert seen and all(seen), seen
    model.get_output_embeddings()._forward_pre_hooks.clear()
    seen.clear()
    again = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert not seen[0], "without the hook, the first step's input is a strided slice (what the hook is for)"
    assert torch.equal(out, again)
