"""Mixing several sources by weight, `max_examples`, and plain text (continued pre-training) through the stages."""

import json

import pytest

from ftkit import cli, recipe
from ftkit.core.io import read_json, write_jsonl
from ftkit.core.rows import DataError, trained_tokens
from ftkit.stages import data
from tests.conftest import build_tokenizer, recipe_file

MIX = {"name": "mix", "stages": ["data", "sft", "eval"], "data": {"test_size": 10, "max_contamination": 1.0}}


def qa(n, tag):
    return [{"question": f"{tag} question number {i}", "answer": f"{tag} {i}"} for i in range(n)]


@pytest.fixture()
def two_sources(tmp_path):
    write_jsonl(tmp_path / "big.jsonl", qa(300, "big"))
    write_jsonl(tmp_path / "small.jsonl", qa(60, "small"))
    return tmp_path


# ---------------------------------------------------------------- mixing


def test_mix_draws_each_source_in_proportion_to_its_weight(two_sources):
    cfg = recipe.load(recipe_file(two_sources, MIX, data=dict(mix={"big.jsonl": 3, "small.jsonl": 1}, max_examples=200)))
    assert all(name.startswith(str(two_sources)) for name in cfg.data.mix), "mix paths are made absolute"
    splits, figures = data.build_splits(cfg, build_tokenizer())
    big, small = (str(two_sources / n) for n in ("big.jsonl", "small.jsonl"))
    assert figures["mix"][big] == {"weight": 3, "available": 300, "wanted": 150, "taken": 150}
    assert figures["mix"][small] == {"weight": 1, "available": 60, "wanted": 50, "taken": 50}
    rows = splits["train"] + splits["test"]
    assert len(rows) == 200 and sum(r["source"] == small for r in rows) == 50
    stats = data.stats(splits)
    assert sum(s["by_source"].get(small, 0) for s in stats.values()) == 50
    assert set(stats["test"]["by_source"]) <= {big, small}
    again, _ = data.build_splits(cfg, build_tokenizer())
    assert again == splits, "the draw is seeded"


def test_mix_without_max_examples_keeps_the_proportions_without_repeating(two_sources):
    cfg = recipe.load(recipe_file(two_sources, MIX, data=dict(mix={"big.jsonl": 1, "small.jsonl": 1})))
    _, figures = data.build_splits(cfg)
    assert [m["taken"] for m in figures["mix"].values()] == [60, 60]
    # a source shorter than its share gives what it has, and the figures say so
    cfg = recipe.load(recipe_file(two_sources, MIX, data=dict(mix={"big.jsonl": 1, "small.jsonl": 1}, max_examples=300)))
    _, figures = data.build_splits(cfg)
    assert [(m["wanted"], m["taken"]) for m in figures["mix"].values()] == [(150, 150), (150, 60)]


def test_duplicates_across_sources_are_dropped_once(two_sources):
    write_jsonl(two_sources / "copy.jsonl", qa(60, "small"))
    cfg = recipe.load(recipe_file(two_sources, MIX, data=dict(mix={"small.jsonl": 1, "copy.jsonl": 1, "big.jsonl": 1})))
    with pytest.raises(DataError, match=r"copy\.jsonl' has no examples left after cleaning; fix it or remove it"):
        data.build_splits(cfg)


def test_max_examples_caps_a_single_source(two_sources):
    splits, _ = data.build_splits(recipe.load(recipe_file(two_sources, MIX, data=dict(path="big.jsonl", max_examples=100))))
    assert len(splits["train"]) + len(splits["test"]) == 100


@pytest.mark.parametrize("section, message", [
    ({"mix": {"big.jsonl": 1, "gone.jsonl": 1}}, r"r\.yaml:\d+: data\.mix\.gone\.jsonl = 'gone\.jsonl': no file matches"),
    ({"mix": {"big.jsonl": 0}}, r"r\.yaml:\d+: data\.mix: weights must be above 0, not \{'big\.jsonl': 0\.0\}"),
    ({"mix": {}}, r"r\.yaml:\d+: data\.mix: name at least one source"),
    ({"mix": {"big.jsonl": 1}, "path": "big.jsonl"}, r"set one source, not path .* and mix"),
    ({"task": "addition", "max_examples": 10}, r"max_examples \(10\) applies to files and hub datasets; for a task set "
                                               r"train_size"),
    ({"path": "big.jsonl", "format": "text"},
     r"data\.format text: plain text \(continued pre-training\) trains with SFT only"),
])
def test_bad_mix_and_text_recipes(two_sources, section, message):
    stages = ("data", "sft", "rl") if section.get("format") == "text" else ("data", "sft", "eval")
    with pytest.raises(recipe.RecipeError, match=message):
        recipe.load(recipe_file(two_sources, MIX, stages=list(stages), data=dict(**section)))


def test_mixing_plain_text_with_prompt_answer_data_is_refused(two_sources):
    write_jsonl(two_sources / "notes.jsonl", [{"text": f"note {i} about the weather"} for i in range(50)])
    cfg = recipe.load(recipe_file(two_sources, MIX, data=dict(mix={"big.jsonl": 1, "notes.jsonl": 1})))
    with pytest.raises(DataError, match="mix plain text with prompt/answer examples"):
        data.build_splits(cfg)


# ---------------------------------------------------------------- plain text


def test_plain_text_rows_are_trained_whole_and_end_with_eos(tmp_path):
    write_jsonl(tmp_path / "notes.jsonl", [{"text": f"Note {i}: the tide rises at {i % 12} o'clock."}
                                           for i in range(40)] + [{"text": "   "}])
    tokenizer = build_tokenizer()
    splits, figures = data.build_splits(recipe.load(recipe_file(tmp_path, MIX, data=dict(path="notes.jsonl"))), tokenizer)
    assert figures["format"] == "text" and figures["drops"] == {"empty_field": 1}
    row = splits["train"][0]
    assert set(row) == {"text", "tokens"}
    ((trained, flag),) = trained_tokens(row, tokenizer)  # one run, all trained
    assert flag and trained[-1] == tokenizer.eos_token and len(trained) == row["tokens"]
    assert figures["answers_end_with_end_of_turn"] is True
    with pytest.raises(DataError, match="plain text .* trains with SFT only"):
        data.build_splits(recipe.load(recipe_file(tmp_path, MIX, stages=list(("data", "sft", "rl")), data=dict(path="notes.jsonl"))), tokenizer)


@pytest.mark.pipeline
def test_plain_text_runs_sft_and_eval_by_perplexity(tiny_model_dir, tmp_path):
    words = "the tide rises and falls twice a day as the moon pulls on the sea".split()
    write_jsonl(tmp_path / "notes.jsonl", [{"text": " ".join(words[i % 5:] + words[:i % 5]) + f" {i}"}
                                           for i in range(60)])
    path = recipe_file(tmp_path, {
        "name": "text", "stages": ["data", "sft", "eval"],
        "model": {"id": str(tiny_model_dir), "lora_r": 4, "lora_alpha": 8},
        "data": {"path": "notes.jsonl", "test_size": 8, "max_contamination": 1.0},
        "sft": {"max_steps": 6, "batch_size": 8, "learning_rate": 3.0e-2, "logging_steps": 2},
        "eval": {"batch_size": 8, "max_new_tokens": 4, "n_examples_shown": 3}}, file="text.yaml")
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0, read_json(run_dir / "status.json")
    metrics = read_json(run_dir / "metrics.json")
    base, sft = metrics["eval"]["base"], metrics["eval"]["sft"]
    assert base["metric"] == sft["metric"] == "perplexity" and base["n"] == 8
    assert base["ci95"][0] <= base["perplexity"] <= base["ci95"][1]
    assert sft["perplexity"] < base["perplexity"], "training on the texts lowers their perplexity"
    predictions = [json.loads(line) for line in (run_dir / "eval" / "predictions_sft.jsonl").read_text().splitlines()]
    assert len(predictions) == 8 and all(p["perplexity"] > 1 for p in predictions)
    assert predictions[0]["prompt"] and "output" in predictions[0]
    html = (run_dir / "report.html").read_text()
    assert "<th>perplexity</th>" in html and "ppl " in html


def test_a_generalization_file_becomes_its_own_split(two_sources):
    write_jsonl(two_sources / "shifted.jsonl", qa(30, "other"))
    cfg = recipe.load(recipe_file(two_sources, MIX, data=dict(path="small.jsonl", generalization_path="shifted.jsonl",
                                   generalization_size=20)))
    splits, _ = data.build_splits(cfg)
    assert len(splits["generalization"]) == 20 and splits["generalization"][0]["prompt"] == "other question number 0"
    with pytest.raises(recipe.RecipeError, match=r"data\.generalization_path = 'gone\.jsonl': no file matches"):
        recipe.load(recipe_file(two_sources, MIX, data=dict(path="small.jsonl", generalization_path="gone.jsonl")))
