"""The judge (eval.judge): verdicts read by fixed rules, asked in both orders, summarized with intervals — on tiny
models, one of them trained to always answer "A" (a judge that only follows the position)."""

import pytest
import torch

from ftkit import recipe
from ftkit.core import rundir
from ftkit.models import judge
from ftkit.report.page import render
from ftkit.stages import data
from ftkit.stages import eval as eval_stage
from tests.conftest import build_model, build_tokenizer


def always_a_judge(path):
    """A tiny model trained until it answers every judge prompt with "A" and stops."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=1)
    texts = []
    for i in range(8):
        prompt = judge.PAIRWISE.format(rubric="Be right.", prompt=f"What is {i} plus {i + 3}?", a=str(2 * i + 3),
                                       b=str(2 * i + 4))
        texts.append(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                   add_generation_prompt=True) + "A" + tokenizer.eos_token)
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = torch.full_like(batch["input_ids"], -100)
    for row, mask in enumerate(batch["attention_mask"]):
        last = int(mask.sum()) - 1
        labels[row, last - 1:last + 1] = batch["input_ids"][row, last - 1:last + 1]  # "A" and the end of turn
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def judged_run(tmp_path, tiny_model_dir, **judge_section):
    cfg = recipe.build({"name": "j", "stages": ["data", "eval"], "model": {"id": str(tiny_model_dir)},
                        "data": {"task": "addition", "train_size": 40, "test_size": 8},
                        "eval": {"models": ["base"], "batch_size": 8, "max_new_tokens": 4, "robustness_size": 0,
                                 "judge": {"examples": 6, **judge_section}}})
    run_dir = tmp_path / "run"
    splits, figures = data.build_splits(cfg)
    data.save_splits(splits, run_dir, figures)
    results = {"base": eval_stage.evaluate_model(cfg, run_dir, "base")}
    return cfg, run_dir, eval_stage.judge_models(cfg, run_dir, results)


def test_a_judge_that_follows_the_position_gives_ties_in_both_orders(tmp_path, tiny_model_dir):
    judge_dir = always_a_judge(tmp_path / "judge")
    cfg, run_dir, results = judged_run(tmp_path, tiny_model_dir, model=str(judge_dir))
    verdict = results["base"]["judge"]
    records = rundir.eval_records(run_dir, "judge", "base")
    assert len(records) == 6 and all(r["verdicts"] == ["A", "A"] for r in records), "asked twice, answered A twice"
    assert all(r["other"] == row["answer"] for r, row in zip(records, rundir.load_split(run_dir, "test")))
    assert (verdict["win"], verdict["tie"], verdict["loss"], verdict["order_flipped"]) == (0, 6, 0, 6)
    assert verdict["win_rate"] == 0.5 and verdict["ci95"] == [0.5, 0.5] and verdict["unreadable"] == 0
    assert verdict["judge"] == str(judge_dir) and verdict["against"] == "reference"
    assert "Reply A:" in verdict["prompt"] and "{rubric}" in verdict["prompt"]
    rundir.record(run_dir, "eval", results)
    page = render(run_dir).read_text()
    assert "A judge&#x27;s verdicts" in page or "A judge's verdicts" in page
    assert "The better reply does what the request asks" in page and "A | A" in page


def test_grading_with_the_base_model_as_judge_counts_unreadable_verdicts(tmp_path, tiny_model_dir):
    cfg, run_dir, results = judged_run(tmp_path, tiny_model_dir, model="base", mode="grade")
    verdict = results["base"]["judge"]
    records = rundir.eval_records(run_dir, "judge", "base")
    grades = [judge.parse_grade(r["verdicts"][0]) for r in records]
    assert [r["grade"] for r in records] == grades and len(records) == 6
    assert verdict["unreadable"] == grades.count(None) and verdict["judge"] == str(tiny_model_dir)
    readable = [g for g in grades if g is not None]
    assert verdict["mean_grade"] == (sum(readable) / len(readable) if readable else None)


def test_a_judge_against_a_model_that_is_not_evaluated_is_refused():
    with pytest.raises(ValueError, match=r"judge.against is 'sft', which eval.models \(\['base'\]\) does not"):
        recipe.build({"name": "j", "eval": {"models": ["base"], "judge": {"model": "base", "against": "sft"}}})
