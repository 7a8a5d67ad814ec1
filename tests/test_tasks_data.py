"""The addition task (examples, scorer, reward) and the data stage's checks."""

import json

import pytest

from ftkit.core import rundir
from ftkit.core.rows import DataError
from ftkit.recipe import Recipe
from ftkit.report import page
from ftkit.scoring import rewards
from ftkit.scoring.tasks import get
from ftkit.sources import leakage
from ftkit.stages import data


def test_splits_are_disjoint_deterministic_and_correct():
    task = get("addition")
    first, again = task.splits(1000, 200, seed=3), task.splits(1000, 200, seed=3)
    assert first == again
    assert len(first["train"]) == 1000 and len(first["test"]) == 200
    assert not {r["prompt"] for r in first["train"]} & {r["prompt"] for r in first["test"]}
    for row in first["test"]:
        a, b = (int(w) for w in row["prompt"].replace("?", "").split() if w.isdigit())
        assert int(row["answer"]) == a + b
    # the test set does not depend on how much training data is drawn
    assert task.splits(50, 200, seed=3)["test"] == first["test"]
    assert task.splits(50, 200, seed=4)["test"] != first["test"]
    with pytest.raises(ValueError, match="lower data.train_size"):
        task.splits(9000, 200, seed=0)


def test_score_and_reward_agree():
    task = get("addition")
    assert task.score("68", "68") == 1.0
    assert task.score("68.", "68") == 1.0
    assert task.score("The answer is 68", "68") == 1.0
    assert task.score("23 + 45 = 68", "68") == 0.0  # echoing the question is not an answer
    assert task.score("", "68") == 0.0
    completions = [[{"role": "assistant", "content": c}] for c in ("68", "67", "x")]
    assert task.reward(completions, answer=["68"] * 3) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get("nope")


def test_checked_reward_names_the_function():
    def short(completions, **_):
        return [1.0]

    def nan(completions, **_):
        return [float("nan")] * len(completions)

    with pytest.raises(ValueError, match="reward 'short' returned 1 values for 2 completions"):
        rewards.checked(short, "short")(["a", "b"])
    with pytest.raises(ValueError, match="reward 'nan' returned nan"):
        rewards.checked(nan, "nan")(["a"])


def test_data_checks_name_split_row_and_field():
    good = get("addition").splits(10, 5, 0)
    data.check(good)
    broken = {"train": [dict(good["train"][0]), {"prompt": "  ", "answer": "3"}], "test": []}
    with pytest.raises(DataError) as info:
        data.check(broken)
    text = str(info.value)
    assert "split 'test' is empty" in text
    assert "train row 1: field 'prompt' is '  '" in text
    assert leakage.contamination(good["train"], good["test"])["ngram_overlaps"] == 0
    assert leakage.contamination(good["train"], good["train"][:2])["exact_matches"] == 2


def test_splits_round_trip_through_the_run_directory(tmp_path):
    cfg = Recipe(name="t", data={"train_size": 20, "test_size": 7})
    splits, figures = data.build_splits(cfg)
    assert figures["source"] == "task addition" and figures["contamination"]["fraction"] == 0.0
    data.save_splits(splits, tmp_path, figures)
    assert rundir.load_split(tmp_path, "test") == splits["test"]
    stats = json.loads((tmp_path / "data" / "stats.json").read_text())
    assert stats["splits"]["train"]["examples"] == 20 and stats["splits"]["test"]["examples"] == 7
    with pytest.raises(FileNotFoundError, match="run the data stage first"):
        rundir.load_split(tmp_path / "elsewhere", "train")


def test_word_problems_are_disjoint_worked_and_right():
    import operator
    import re

    from ftkit.scoring.tasks import WordProblems

    ops = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}

    task = WordProblems()
    first, again = task.splits(300, 100, seed=2), task.splits(300, 100, seed=2)
    assert first == again and len(first["train"]) == 300 and len(first["test"]) == 100
    assert not {r["prompt"] for r in first["train"]} & {r["prompt"] for r in first["test"]}
    for row in first["train"] + first["test"] + task.shifted(20, 2):
        *lines, final = row["answer"].split("\n")
        value = int(re.match(r"\w+ has (\d+) ", row["prompt"]).group(1))
        for line in lines:  # every worked step is right and starts from the previous result
            a, op, b, _, result = line.split()
            assert int(a) == value and ops[op](int(a), int(b)) == int(result) >= 0
            assert op != "/" or int(a) % int(b) == 0, "equal piles leave nothing over"
            value = int(result)
        assert final == f"#### {value}" and task.score(row["answer"], row["answer"]) == 1.0
    assert {len(r["answer"].split("\n")) - 1 for r in task.shifted(20, 2)} == {4}
    assert task.score(f"#### {value}", row["answer"]) == 1.0 and task.score(str(value), row["answer"]) == 0.0
    assert task.lenient(f"so the answer is {value}", row["answer"]) == 1.0


def test_augmentation_adds_perturbed_train_copies_and_never_touches_held_out_data():
    plain = Recipe.model_validate({"name": "t", "data": {"task": "addition", "train_size": 100, "test_size": 20,
                                                         "generalization_size": 10}})
    augmented = Recipe.model_validate({"name": "t", "data": {"task": "addition", "train_size": 100, "test_size": 20,
                                                             "generalization_size": 10,
                                                             "augment": {"typo": 0.3, "case": 0.2}}})
    before, _ = data.build_splits(plain)
    after, figures = data.build_splits(augmented)
    assert figures["augmented"] == {"typo": 30, "case": 20}
    assert after["test"] == before["test"] and after["generalization"] == before["generalization"]
    assert after["train"][:100] == before["train"]
    copies = after["train"][100:]
    assert len(copies) == 50 and [r["augmented"] for r in copies] == ["typo"] * 30 + ["case"] * 20
    originals = {r["answer"] for r in before["train"]}
    assert all(r["answer"] in originals for r in copies)            # the answer stays, the prompt changes
    assert all(r["prompt"] not in {o["prompt"] for o in before["train"]} for r in copies[30:])
    assert not any("augmented" in r for name in ("test", "generalization") for r in after[name])


def test_augment_shares_are_checked():
    with pytest.raises(ValueError, match=r"shares are fractions of the training examples"):
        Recipe.model_validate({"name": "t", "data": {"augment": {"typo": 1.5}}})
    with pytest.raises(ValueError, match=r"augment"):
        Recipe.model_validate({"name": "t", "data": {"augment": {"spelling": 0.5}}})


def test_teacher_errors_make_demonstrations_wrong_while_rewards_and_test_stay_right(tmp_path):
    from ftkit.core.rows import reward_columns

    clean = Recipe.model_validate({"name": "t", "data": {"task": "addition", "train_size": 200, "test_size": 40}})
    careless = Recipe.model_validate({"name": "t", "data": {"task": "addition", "train_size": 200, "test_size": 40,
                                                            "teacher_errors": 0.5}})
    before, _ = data.build_splits(clean)
    after, figures = data.build_splits(careless)
    assert after["test"] == before["test"] and "verified" not in str(after["test"])   # test holds right answers only
    wrong = [r for r in after["train"] if "verified" in r]
    found = figures["teacher_errors"]
    assert found["wrong"] == len(wrong) and found["train"] == 200 and 0.3 < found["wrong"] / found["eligible"] < 0.7
    for row, original in zip(after["train"], before["train"]):
        a, b = map(int, row["prompt"][8:-1].split(" plus "))
        assert row["prompt"] == original["prompt"] and row.get("verified", row["answer"]) == str(a + b)
        if "verified" in row:  # a dropped carry, on a sum that carries
            assert (a % 10) + (b % 10) >= 10 and row["answer"] == str(a + b - 10)
    # the reward checks the true sum: the teacher's answer scores 0, the right one 1
    columns = reward_columns(wrong[:2])
    reward, _ = rewards.build(careless, tmp_path)
    replies = [[{"role": "assistant", "content": r["answer"]}] for r in wrong[:2]]
    right = [[{"role": "assistant", "content": r["verified"]}] for r in wrong[:2]]
    answer = [c["answer"] for c in columns]
    assert reward[0](replies, answer=answer) == [0.0, 0.0] and reward[0](right, answer=answer) == [1.0, 1.0]
    stats = data.save_splits(after, tmp_path, figures)
    assert rundir.load_split(tmp_path, "train") == after["train"]
    assert f"{found['wrong']} of the 200 training answers are wrong on purpose" in page._data(stats)
    with pytest.raises(ValueError, match=r"teacher_errors \(0.2\) makes a built-in task's demonstrations wrong on "
                                         r"purpose \(addition, word_problems\), not data from files or the hub's"):
        Recipe.model_validate({"name": "t", "data": {"path": "x.jsonl", "teacher_errors": 0.2}})
    with pytest.raises(ValueError, match=r"not task 'code''s"):
        Recipe.model_validate({"name": "t", "data": {"task": "code", "teacher_errors": 0.2}})
    slipped, counts = get("word_problems").careless(get("word_problems").splits(100, 10, 0)["train"], 0.5, 0)
    assert counts["wrong"] == sum("verified" in r for r in slipped) and 30 < counts["wrong"] < 70
    for row in slipped:  # one step short: a worked line fewer, and the answer is the last line left's result
        if "verified" in row:
            lines, right = row["answer"].split("\n"), row["verified"].split("\n")
            assert lines[:-1] == right[:-2] and lines[-1] == "#### " + right[-3].rsplit(" = ")[1]
