"""Evaluation: ftkit's `evaluate` metrics offline with exact values, scoring, confidence intervals, the paired test
and flipped examples, and the perturbations of the robustness claim."""

import json
import random

import numpy as np
import pytest

from ftkit import recipe
from ftkit.core import rundir
from ftkit.models import likelihood
from ftkit.report import tables
from ftkit.scoring import grading, metrics, robustness, stats
from ftkit.scoring.tasks import Addition
from ftkit.stages import eval as eval_stage
from tests.conftest import make_model_dir, recipe_file, tiny


def test_metric_modules_load_offline_and_give_exact_values(monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    predictions = ["The cat sat.", "paris", "42"]
    references = ["the cat sat down", "Paris", "41"]
    got = {name: evaluate.load(str(metrics.path(name))).compute(predictions=predictions, references=references)
           for name in metrics.LOCAL}
    assert got["exact_match"] == {"exact_match": pytest.approx(1 / 3), "per_example": [0.0, 1.0, 0.0]}
    assert got["accuracy"] == {"accuracy": 0.0, "per_example": [0.0, 0.0, 0.0]}
    # "the" is dropped: prediction {cat, sat} vs reference {cat, sat, down}: P 1, R 2/3
    assert got["f1"]["per_example"] == pytest.approx([0.8, 1.0, 0.0])
    # LCS 3 words of 3 and 4: P 1, R 3/4 -> F 6/7; case-folded "paris" matches
    assert got["rouge_l"]["per_example"] == pytest.approx([6 / 7, 1.0, 0.0])
    assert got["chrf"]["per_example"][2] == pytest.approx(0.25)  # "42" vs "41": the character unigram "4" only
    assert 0 < got["chrf"]["per_example"][0] < 1
    assert got["bleu"]["per_example"][1] == 0.0  # sacreBLEU is case-sensitive: "paris" is not "Paris"


def test_scores_put_the_headline_metric_first_and_average_samples(tmp_path):
    path = recipe_file(tmp_path, {"name": "m", "eval": {"metrics": ["task", "exact_match", "f1"]}})
    cfg = recipe.load(path)
    # the task's scorer reads the first number; exact match wants the answer alone; F1: 1 of 3 words, recall 1
    per_example, overall = grading.score(cfg, ["68", "I think 67", "66"], ["68", "67", "67"])
    assert per_example == {"task": [1.0, 1.0, 0.0], "exact_match": [1.0, 0.0, 0.0],
                           "f1": [1.0, pytest.approx(0.5), 0.0]}
    assert overall["task"] == pytest.approx(2 / 3)
    # two samples per prompt: each example's score is the mean over its samples
    per_example, _ = grading.score(cfg, [["68", "69"], ["67", "67"]], ["68", "67"])
    assert per_example["task"] == [0.5, 1.0]


def test_answers_that_are_sentences_are_scored_by_rouge_l_first(tmp_path):
    (tmp_path / "d.jsonl").write_text("{}\n")
    path = recipe_file(tmp_path, {"name": "m", "data": {"path": "d.jsonl"}})
    cfg = recipe.load(path)
    sentences = [{"prompt": "What does math.atanh do?", "answer": "Return the inverse hyperbolic tangent of x."},
                 {"prompt": "What does lzma.decompress do?", "answer": "Decompress a block of data."}]
    short = [{"prompt": "Capital of France?", "answer": "Paris"}, {"prompt": "ISO code of Aruba?", "answer": "ABW"}]
    assert grading.metric_names(grading.for_rows(cfg, sentences)) == ["rouge_l", "f1", "exact_match", "lenient"]
    assert grading.metric_names(grading.for_rows(cfg, short)) == ["exact_match", "f1", "rouge_l", "lenient"]
    asked = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"metrics": ["exact_match"]})})
    assert grading.metric_names(grading.for_rows(asked, sentences)) == ["exact_match"]  # the recipe's own
    numbers = cfg.model_copy(update={"data": cfg.data.model_copy(update={"extract": "last_number"})})
    assert grading.metric_names(grading.for_rows(numbers, sentences)) == ["task", "lenient"]


def test_unknown_metrics_and_sampling_without_temperature_are_refused(tmp_path):
    path = recipe_file(tmp_path, {"name": "m", "eval": {"metrics": ["rouge"]}})
    with pytest.raises(recipe.RecipeError, match=r"r\.yaml:\d+: eval\.metrics = \['rouge'\]: unknown metric 'rouge'; "
                                                 r"did you mean 'rouge_l'\?"):
        recipe.load(path)
    recipe_file(tmp_path, {"name": "m", "eval": {"samples": 4}})
    with pytest.raises(recipe.RecipeError, match=r"samples = 4 needs temperature > 0"):
        recipe.load(path)


def test_bootstrap_ci_and_pass_at_k():
    assert stats.bootstrap_ci([1.0] * 20) == (1.0, 1.0)
    low, high = stats.bootstrap_ci([0.0, 1.0] * 100, seed=0)
    assert 0.42 < low < 0.5 < high < 0.58
    assert stats.pass_at_k(1, 4, 1) == 0.25 and stats.pass_at_k(2, 4, 2) == pytest.approx(5 / 6)


def _predictions(run_dir, name, scores):
    rows = [{"prompt": f"q{i}", "reference": "r", "output": "right" if s else "wrong", "score": s}
            for i, s in enumerate(scores)]
    (run_dir / "eval" / f"predictions_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_paired_test_and_flips_against_the_base(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.jsonl").write_text(json.dumps({"prompt": "q", "answer": "r"}) + "\n")
    _predictions(tmp_path, "base", [0.0] * 10 + [1.0] * 10)
    _predictions(tmp_path, "sft", [1.0] * 9 + [0.0] + [1.0] * 9 + [0.0])  # 9 gained, 1 lost
    cfg = recipe.build({"name": "m"})
    results = eval_stage.paired_test(cfg, tmp_path, {"base": {}, "sft": {}})
    paired = results["sft"]["vs_base"]
    assert paired["fail_to_pass"] == 9 and paired["pass_to_fail"] == 1 and paired["test"] == "mcnemar_exact"
    assert paired["p_value"] == pytest.approx(22 / 1024)  # two-sided exact binomial: P(X <= 1 or X >= 9), n 10
    flips = tables.flips(tmp_path, "sft", limit=50)
    assert len(flips) == 10 and list(flips["flip"]).count("pass→fail") == 1
    assert flips.iloc[0].to_dict() == {"flip": "fail→pass", "prompt": "q0", "reference": "r", "base": "wrong",
                                       "sft": "right"}


def test_perturbations_change_only_the_prompt_and_are_the_same_for_every_model():
    rows = Addition().splits(0, 5, 0)["test"]
    for kind in robustness.PERTURBATIONS:
        once = robustness.perturb(rows, kind, seed=0, task=Addition())
        assert once == robustness.perturb(rows, kind, seed=0, task=Addition())
        assert all(p["answer"] == r["answer"] and p["system"] == r["system"] for p, r in zip(once, rows))
        assert all(p["prompt"] != r["prompt"] for p, r in zip(once, rows)), kind
    reworded = robustness.perturb(rows, "reword", seed=0, task=Addition())
    assert all("What is" not in r["prompt"] for r in reworded), "the task's own rewordings"
    assert robustness.typo("a b c", random.Random(0)) == "a b c", "no word long enough: unchanged"


@pytest.mark.pipeline
def test_cut_replies_are_answered_again_with_room_to_finish(tmp_path):
    from ftkit import cli
    from ftkit.core.io import read_json

    model_dir = make_model_dir(tmp_path, "llama", tied=False)  # random text that rarely ends: cut at 4 tokens
    path = recipe_file(tmp_path, {
        "name": "cut", "stages": ["data", "eval"], "model": {"id": str(model_dir)},
        "data": {"train_size": 48, "test_size": 24},
        "eval": {"batch_size": 8, "max_new_tokens": 4, "finish_cut": 20, "robustness_size": 0}})
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0, read_json(run_dir / "status.json")
    results = read_json(run_dir / "metrics.json")["eval"]
    records = rundir.load_predictions(run_dir, "base")
    cut = [r for r in records if r["cut"]]
    finished = results["base"]["finished"]
    assert len(cut) > 20 and (finished["n"], finished["cut"], finished["max_new_tokens"]) == (20, len(cut), 128)
    again = [r for r in records if "finished" in r]
    assert again == cut[:20] and 0 <= finished["still_cut"] <= 20
    # as cut: the headline's own scores of those replies; finished: the same prompts' greedy replies, given more room
    assert finished["metrics"]["task"]["cut"] == pytest.approx(sum(r["scores"]["task"] for r in again) / 20)
    assert all(r["output"] for r in again), "the untied model writes text"
    continued = sum(r["finished"].startswith(r["output"]) and len(r["finished"]) > len(r["output"]) for r in again)
    assert continued >= 18, "greedy decoding with more room goes on from the same reply (batched apart: near ties)"
    note = tables.cut_note(results)
    assert note.startswith(f"Replies cut at eval.max_new_tokens = 4 before they ended: base {len(cut) / 24:.0%}. ")
    assert f"Given room to finish (128 tokens), 20 of base's {len(cut)} cut replies score task 0.0% → " in note
    assert list(tables.finished_table(results).index) == ["base"]
    path.write_text(path.read_text().replace("finish_cut: 20", "finish_cut: 0"))
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0
    assert "finished" not in read_json(run_dir / "metrics.json")["eval"]["base"]
    assert not any("finished" in r for r in rundir.load_predictions(run_dir, "base"))


def test_any_adapter_can_join_the_comparison(tiny_run, tiny_model_dir, tmp_path):
    from ftkit import cli
    from ftkit.core.io import read_json

    _, earlier = tiny_run
    path = recipe_file(tmp_path, {
        "name": "extra", "stages": ["data", "eval"], "model": {"id": str(tiny_model_dir)},
        "data": {"train_size": 48, "test_size": 16},
        "eval": {"extra": {"earlier-sft": str(earlier / "sft" / "adapter")}, "batch_size": 8, "max_new_tokens": 4,
                 "robustness_size": 4, "perturbations": ["case"]}})
    assert recipe.load(path).eval.models == ["base", "earlier-sft"]
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0, read_json(run_dir / "status.json")
    results = read_json(run_dir / "metrics.json")["eval"]
    assert set(results) == {"base", "earlier-sft"} and "vs_base" in results["earlier-sft"]
    # the same adapter on the same test set gives the earlier run's sft predictions
    before = [p["output"] for p in rundir.load_predictions(earlier, "sft")]
    assert [p["output"] for p in rundir.load_predictions(run_dir, "earlier-sft")] == before
    recipe_file(tmp_path, {"name": "extra", "eval": {"extra": {"old": "nowhere"}, "models": ["base", "rl2"]}})
    with pytest.raises(recipe.RecipeError, match="models lists 'rl2'; use base, sft, rl or a label of eval.extra"):
        recipe.load(path)
    recipe_file(tmp_path, {"name": "extra", "eval": {"extra": {"old": "nowhere"}}})
    with pytest.raises(recipe.RecipeError, match=r"eval\.extra\.old = 'nowhere': .* holds no adapter_config\.json or "
                                                 r"config\.json"):
        recipe.load(path)


@pytest.mark.pipeline
def test_a_classification_gets_its_classes_a_confusion_matrix_and_the_commonest_baseline(tmp_path, tiny_model_dir):
    import pandas as pd
    from sklearn.metrics import f1_score

    from ftkit import cli
    from ftkit.core.io import read_json
    from ftkit.scoring.classes import class_of

    # an export that lost its class names: labels 0, 1, 2, named by data.label_names (one name needs escaping)
    names = ["negative", "positive", "mixed <b>"]
    labels = [i % 3 if i % 5 else 1 for i in range(90)]
    pd.DataFrame({"review": [f"Review number {i} of the film." for i in range(90)], "label": labels}).to_csv(
        tmp_path / "reviews.csv", index=False)
    path = recipe_file(tmp_path, tiny(tiny_model_dir), stages=["data", "eval"], data={"task": None, "path": "reviews.csv", "test_size": 30,
                                                      "columns": {"prompt": "review", "answer": "label"},
                                                      "label_names": names},
                       eval={"models": ["base"], "robustness_size": 0}, file="tiny.yaml")
    run_dir = tmp_path / "out"
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0
    metrics = read_json(run_dir / "metrics.json")
    found = metrics["data"]["classes"]
    assert found["names"] == sorted(names) and found["commonest"]["class"] == "positive"
    assert any("the prompts do not name them" in w for w in metrics["data"]["warnings"]), "no system prompt names them"
    for split in ("train", "test"):
        rows = rundir.load_split(run_dir, split)
        assert sum(found["counts"][split].values()) == len(rows) and {r["answer"] for r in rows} <= set(names)
    test = rundir.load_split(run_dir, "test")
    assert found["commonest"]["test_share"] == pytest.approx(sum(r["answer"] == "positive" for r in test) / 30)
    figures = metrics["eval"]["base"]["classes"]
    matrix = figures["confusion"]
    assert [sum(row) for row in matrix] == [found["counts"]["test"][n] for n in found["names"]]
    # the same figures from the predictions: a reply is the class it gives (here exactly), else none of them
    predictions = rundir.eval_records(run_dir, "predictions", "base")
    given = [class_of(p["output"], found["names"]) or "none" for p in predictions]
    wanted = [p["reference"] for p in predictions]
    assert figures["no_class"] == pytest.approx(given.count("none") / 30)
    assert sum(row[-1] for row in matrix) == given.count("none")
    assert figures["macro_f1"] == pytest.approx(f1_score(wanted, given, labels=found["names"], average="macro",
                                                         zero_division=0), abs=1e-4)
    # the likeliest class as the whole reply, recomputed from the base model: what it knows whatever it writes
    from ftkit.models import loader

    model, tokenizer = loader.load(recipe.load(path).model)
    likelihoods = likelihood.class_log_likelihoods(model, tokenizer, test, found["names"], 8, 256)
    assert likelihoods.shape == (30, 3)
    picked = [found["names"][i] for i in likelihoods.argmax(axis=1)]
    assert figures["likeliest"]["value"] == pytest.approx(sum(p == r["answer"] for p, r in zip(picked, test)) / 30,
                                                          abs=1e-4)
    page = (run_dir / "report.html").read_text()
    assert figures["likeliest"]["picked"] == {n: picked.count(n) for n in found["names"]}
    assert "likeliest class right" in page and "likeliest class picked" in page
    # calibrated: the prior over the names (the mean probability over the test prompts) divided out, by hand
    probs = np.exp(likelihoods - likelihoods.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    chosen = [found["names"][i] for i in (probs / probs.mean(axis=0)).argmax(axis=1)]
    assert figures["likeliest"]["calibrated"]["picked"] == {n: chosen.count(n) for n in found["names"]}
    assert figures["likeliest"]["calibrated"]["value"] == pytest.approx(
        sum(p == r["answer"] for p, r in zip(chosen, test)) / 30, abs=1e-4)
    assert "calibrated [95% CI]" in page
    assert "<h4>Classes</h4>" in page and "Always answering train&#x27;s commonest class" in page
    assert "mixed &lt;b&gt;" in page and "mixed <b>" not in page
    assert "reference: positive" in page

    # eval.likeliest_class: false skips the scoring passes; the rest of the classes' figures stay
    skip = recipe_file(tmp_path, tiny(tiny_model_dir), stages=["data", "eval"], data={"task": None, "path": "reviews.csv", "test_size": 30,
                                                      "columns": {"prompt": "review", "answer": "label"},
                                                      "label_names": names},
                       eval={"models": ["base"], "robustness_size": 0, "likeliest_class": False}, file="tiny.yaml")
    assert cli.main(["run", str(skip), "--run-dir", str(tmp_path / "skip")]) == 0
    skipped = read_json(tmp_path / "skip" / "metrics.json")["eval"]["base"]["classes"]
    assert "likeliest" not in skipped and skipped["confusion"] == matrix


@pytest.mark.pipeline
def test_a_recipe_that_only_evaluates_scores_every_example_in_order(tmp_path, tiny_model_dir):
    from ftkit import cli
    from ftkit.core.io import read_json

    # a multiple-choice benchmark scored whole: data.test_size: all, no training stage
    questions = [{"question": f"Which option is number {i}?", "choices": ["one", "two", "three", "four"],
                  "answer": i % 4} for i in range(24)]
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    path = recipe_file(tmp_path, tiny(tiny_model_dir), stages=["data", "eval"], data={"task": None, "path": "bench.jsonl", "test_size": "all",
                                                      "train_size": None},
                       eval={"models": ["base"], "robustness_size": 0, "likeliest_class": False}, file="tiny.yaml")
    run_dir = tmp_path / "out"
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0
    assert rundir.load_split(run_dir, "train", empty_ok=True) == []
    test = rundir.load_split(run_dir, "test")
    assert [r["question"] for r in test] == [q["question"] for q in questions]  # every one, in the file's order
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["data"]["evaluate_only"] and "warnings" not in metrics["data"]
    assert metrics["data"]["classes"]["names"] == ["A", "B", "C", "D"]  # the classes read from test
    assert metrics["data"]["classes"]["commonest"] == {"class": "A", "test_share": 0.25, "of": "test"}
    assert len(rundir.eval_records(run_dir, "predictions", "base")) == 24
    assert sum(map(sum, metrics["eval"]["base"]["classes"]["confusion"])) == 24
    page = (run_dir / "report.html").read_text()
    assert "Evaluation only (data.test_size: all)" in page and "Always answering test&#x27;s commonest class" in page
    assert "<tr><td>test</td><td>24</td>" in page and "<td>train</td>" not in page  # no empty train rows
    # a recipe that would train on what test_size: all leaves is refused at the line to change, before any stage
    path.write_text(path.read_text().replace("- data\n- eval", "- data\n- sft\n- eval"))
    with pytest.raises(recipe.RecipeError, match=r"tiny.yaml:\d+: data.test_size: all holds every example out for "
                                                 r"test, and stages \['data', 'sft', 'eval'\] train \(sft\)"):
        recipe.load(path)
    assert cli.main(["run", str(path), "--run-dir", str(tmp_path / "refused")]) != 0
    assert not (tmp_path / "refused").exists()


@pytest.mark.pipeline
def test_auto_lengths_fit_the_longest_answer_and_are_recorded_as_run(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from ftkit import cli
    from ftkit.core.io import read_json
    from ftkit.core.rows import reply_budget

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    longest = max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in ("4", "no", "a longer answer"))
    rows = [{"prompt": "?", "answer": "4"}, {"prompt": "?", "answer": "no", "accepted": ["no", "a longer answer"]}]
    assert reply_budget(rows, tokenizer) == {"longest_answer": longest, "tokens": max(8, -(-longest * 5 // 4) + 4)}
    assert reply_budget([{"prompt": "Write a haiku"}], tokenizer) == {"longest_answer": None, "tokens": 64}
    # worked word problems: eval and GRPO take `auto` from the answers; the data stage says what it will be
    path = recipe_file(tmp_path, tiny(tiny_model_dir), stages=["data", "rl", "eval"], data={"task": "word_problems", "train_size": 24, "test_size": 8},
                       rl={"max_steps": 1, "max_completion_length": "auto"},
                       eval={"models": ["base", "rl"], "max_new_tokens": "auto", "robustness_size": 0, "sampled": 0}, file="tiny.yaml")
    run_dir = tmp_path / "out"
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0
    found = read_json(run_dir / "metrics.json")
    splits = {name: rundir.load_split(run_dir, name) for name in ("train", "test")}
    both = reply_budget(splits["train"] + splits["test"], tokenizer)
    assert found["data"]["reply_tokens"] == both and both["longest_answer"] > 8, "a worked answer is long"
    assert found["eval"]["base"]["max_new_tokens"] == found["eval"]["rl"]["max_new_tokens"] == both["tokens"]
    assert found["rl"]["max_completion_length"] == reply_budget(splits["train"], tokenizer)["tokens"]


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt_neo"])
def test_several_replies_per_prompt_encode_the_prompt_once_and_match_generating_each(tmp_path, arch, monkeypatch):
    """Sampled replies (eval.sampled, samples > 1) encode each prompt once and repeat its cache, and a batch's shared
    prefix (here a system prompt) is encoded once for all its prompts: greedily, every copy is the reply that one
    generation of that prompt gives (prompts of different lengths padded after the shared prefix, a sliding window
    and GPT-Neo's local attention included)."""
    import torch

    from ftkit.models import generation, loader
    from ftkit.recipe import ModelConfig

    model, tokenizer = loader.load(ModelConfig(id=str(make_model_dir(tmp_path, arch, tied=False)), dtype="float32"))
    system = {"role": "system", "content": "You answer questions about numbers and letters, briefly and exactly."}
    conversations = [[system, {"role": "user", "content": text}] for text in
                     ("2 + 2?", "What is the sum of 17 and 25, please?", "hello", "a b c d e f g h i j k l m n o p q")]
    used, shared = [], []
    original, prefix_cache = generation._prefilled_once, generation.prefix_cache
    monkeypatch.setattr(generation, "_prefilled_once", lambda *a: used.append(original(*a)) or used[-1])
    monkeypatch.setattr(generation, "prefix_cache", lambda m, p, n: shared.append(len(p)) or prefix_cache(m, p, n))
    once = generation.generate(model, tokenizer, conversations, 4, 24, samples=3)
    assert used and all(inputs is not None for inputs in used), "the prompts were encoded once"
    if generation.attention_window(model) is None:
        assert shared and min(shared) >= generation.MIN_SHARED, "the system prompt was encoded once for the batch"
    else:  # these tiny models' windows (16 tokens) are shorter than the prompts: padding in the middle would count
        assert not shared
    alone = [generation.generate(model, tokenizer, [c], 1, 24)[0] for c in conversations]
    assert once == [[reply] * 3 for reply in alone]
    # greedy, one reply a prompt: the shared prefix's cache, repeated, gives each prompt's own reply
    assert generation.generate(model, tokenizer, conversations, 4, 24) == alone
    assert any(reply.strip() for reply in alone), "random untied weights: replies with text in them"
    torch.manual_seed(0)
    sampled = generation.generate(model, tokenizer, conversations, 4, 8, temperature=1.0, samples=3)
    assert [len(replies) for replies in sampled] == [3] * 4 and len({r for rs in sampled for r in rs}) > 4


def test_replies_that_ended_leave_the_batch_and_the_others_reply_as_in_one_call(tmp_path, monkeypatch):
    """Generation goes CHUNK tokens a call, and rows whose reply ended (an end token, a stop string) leave the batch
    and its cache between calls: greedy replies and cut flags equal those of one call, with and without a stop
    string and a shared system prompt."""
    from ftkit.models import generation, loader
    from ftkit.recipe import ModelConfig

    model, tokenizer = loader.load(ModelConfig(id=str(make_model_dir(tmp_path, "llama", tied=False)), dtype="float32"))
    system = {"role": "system", "content": "You answer questions about numbers and letters, briefly and exactly."}
    conversations = [[system, {"role": "user", "content": text}] for text in
                     ("2 + 2?", "What is the sum of 17 and 25, please?", "hello", "a b c d e f g h i j k l m n o p q",
                      "x", "the end")]
    kept = []
    select = type(generation.prefix_cache(model, [1, 2, 3], 1)["cache"]).batch_select_indices
    monkeypatch.setattr(type(generation.prefix_cache(model, [1, 2, 3], 1)["cache"]), "batch_select_indices",
                        lambda cache, indices: kept.append(len(indices)) or select(cache, indices))
    for stop in ((), ("m",)):  # "m" ends some of these replies (random weights, seeded), not all
        monkeypatch.setattr(generation, "CHUNK", 10 ** 6)
        whole = generation.generate(model, tokenizer, conversations, 6, 20, stop=stop, return_cut=True)
        monkeypatch.setattr(generation, "CHUNK", 3)
        kept.clear()
        assert generation.generate(model, tokenizer, conversations, 6, 20, stop=stop, return_cut=True) == whole
        if stop:
            assert any(n < len(conversations) for n in kept), "rows that met the stop string left the batch"


def test_answer_losses_project_only_the_scored_positions_with_the_same_losses(tmp_path):
    """token_losses keeps only the positions from the batch's shortest prompt on (logits_to_keep), and encodes a
    prefix that the batch's rows share once: the same summed loss and token count as the whole logits give, text by
    text."""
    import torch

    from ftkit.models import loader
    from ftkit.recipe import ModelConfig

    model, tokenizer = loader.load(ModelConfig(id=str(make_model_dir(tmp_path, "llama")), dtype="float32"))
    texts = ["a b c d e f", "hello there, how are you today", "x", "one two three four five six seven eight"]
    skip = [3, 5, 0, 7]
    # and rows that begin alike (a system prompt): that prefix is encoded once for the batch
    system = "You answer questions about numbers and letters, briefly and exactly. "
    texts += [system + "2 + 2? 4", system + "the sum of 17 and 25? 42", system + "hello? hi there"]
    skip += [len(tokenizer(t[:-2], add_special_tokens=False)["input_ids"]) for t in texts[4:]]
    shared = []
    prefix_cache = likelihood.prefix_cache
    likelihood.prefix_cache = lambda m, p, n: shared.append(len(p)) or prefix_cache(m, p, n)
    try:
        got = likelihood.token_losses(model, tokenizer, texts, 4, 128, skip)  # the last three in a batch
    finally:
        likelihood.prefix_cache = prefix_cache
    assert shared and max(shared) >= likelihood.MIN_SHARED
    for text, k, (loss, count) in zip(texts, skip, got):
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")[max(k - 1, 0):]
        assert count == len(nll)
        assert loss == pytest.approx(nll.sum().item(), rel=1e-4, abs=1e-4)


def test_eval_batch_size_auto_follows_the_free_memory(tmp_path, monkeypatch):
    """eval.batch_size auto (the default): prompts a call by what a quarter of the free memory holds, at most 128, at
    least 1; sampled replies count their rows; greedy replies are those of a fixed batch size."""
    import psutil

    from ftkit.models import generation, loader
    from ftkit.recipe import ModelConfig

    assert recipe.build({"name": "t"}).eval.batch_size == "auto"
    model, tokenizer = loader.load(ModelConfig(id=str(make_model_dir(tmp_path, "llama", tied=False)), dtype="float32"))
    assert generation.auto_batch_size(model, 100) == generation.AUTO_BATCH_CAP
    row = 2 * 2 * 2 * 8 * 4 * 100 + 3 * 4 * model.config.vocab_size  # cache of 2 layers x 2 kv heads x 8 dims, logits

    class Memory:
        available = 4 * row * 10

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    assert generation.auto_batch_size(model, 100) == 10
    assert generation.auto_batch_size(model, 100, rows_per_prompt=4) == 2
    Memory.available = 1
    assert generation.auto_batch_size(model, 100) == 1
    Memory.available = 4 * row * 3
    conversations = [[{"role": "user", "content": f"{i} + {i}?"}] for i in range(7)]
    auto = generation.generate(model, tokenizer, conversations, "auto", 5)
    assert auto == generation.generate(model, tokenizer, conversations, 3, 5)
