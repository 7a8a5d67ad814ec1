"""Recipe loading and validation: shipped recipes load; bad recipes fail with messages that say the fix."""

from pathlib import Path

import pytest
import torch

from ftkit import cli, recipe
from tests.conftest import ROOT

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path, capsys):
    cfg = recipe.load(path)
    assert cfg.name and cfg.stages
    assert path.read_text().startswith("# ") and f"ftkit run recipes/{path.name}" in path.read_text(), \
        "each recipe opens with a comment that says how to run it"
    code = cli.main(["validate", str(path)])
    if cfg.model.adapter == "qlora" and not torch.cuda.is_available():  # the machine check, not the recipe
        assert code == 2 and "model.adapter = 'qlora' needs a CUDA GPU" in capsys.readouterr().err
    else:
        assert code == 0


def test_quickstart_defaults_are_the_documented_experiment():
    cfg = recipe.load(ROOT / "recipes" / "quickstart.yaml")
    assert cfg.stages == ["data", "sft", "rl", "eval"]
    assert cfg.data.test_size >= 200
    assert cfg.eval.models == ["base", "sft", "rl"]
    assert cfg.sft.learning_rate == pytest.approx(1e-3)


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_misspelled_key_suggests_the_right_one_with_file_and_line(tmp_path, capsys):
    path = write(tmp_path, "name: x\nsft:\n  max_steps: 3\n  learnin_rate: 1.0e-4\n")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: sft.learnin_rate = 0.0001: unknown key; did you mean 'learning_rate'?" in err
    assert "Traceback" not in err


def test_all_problems_are_reported_together(tmp_path):
    path = write(tmp_path, "name: x\nseed: abc\nmodel:\n  dtype: fp8\nrl:\n  batch_size: 12\n  num_generations: 8\n"
                           "bogus: 1\n")
    with pytest.raises(recipe.RecipeError) as info:
        recipe.load(path)
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) == 4, text
    assert f"{path}:2: seed = 'abc'" in text
    assert f"{path}:4: model.dtype = 'fp8': Input should be 'auto', 'float32', 'bfloat16' or 'float16'" in text
    assert "batch_size (12) must be a multiple of num_generations (8)" in text
    assert "bogus = 1: unknown key; allowed keys here:" in text


def test_yaml_pitfalls_are_caught(tmp_path):
    dup = write(tmp_path, "name: x\nseed: 1\nseed: 2\n")
    with pytest.raises(recipe.RecipeError, match=r"duplicate key 'seed' \(first at line 2\)"):
        recipe.load(dup)
    broken = write(tmp_path, "name: x\nsft: [unclosed\n")
    with pytest.raises(recipe.RecipeError, match="not valid YAML"):
        recipe.load(broken)
    # PyYAML reads 1e-4 as a string; the schema still takes it as a number
    ok = write(tmp_path, "name: x\nsft:\n  learning_rate: 1e-4\n")
    assert recipe.load(ok).sft.learning_rate == pytest.approx(1e-4)


def test_missing_name_and_missing_file(tmp_path):
    with pytest.raises(recipe.RecipeError, match="name: required key is missing"):
        recipe.load(write(tmp_path, "seed: 1\n"))
    with pytest.raises(recipe.RecipeError, match="cannot read the recipe"):
        recipe.load(tmp_path / "nope.yaml")



@pytest.mark.parametrize("model_id", ["./no_such_model_dir", "../nowhere/model", "/no/such/model", "~/no_such_model",
                                      "runs/no_such_model"])
def test_a_local_model_path_that_names_no_folder_is_refused_at_validation(tmp_path, capsys, model_id):
    (tmp_path / "runs").mkdir()
    path = write(tmp_path, f"name: x\nmodel:\n  id: {model_id}\n")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: model.id = {model_id!r}: no such folder" in err and "fix the path" in err, err


def test_a_local_model_folder_is_found_from_the_recipe_and_a_hub_id_is_left_alone(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    mine = recipe.load(write(tmp_path, "name: x\nmodel:\n  id: models/mine\n"))
    assert mine.model.id == str((tmp_path / "models" / "mine").resolve())
    hub = recipe.load(write(tmp_path, "name: x\nmodel:\n  id: Qwen/Qwen2.5-0.5B-Instruct\n"))
    assert hub.model.id == "Qwen/Qwen2.5-0.5B-Instruct"

def test_overrides_go_through_the_same_validation():
    path = ROOT / "recipes" / "quickstart.yaml"
    cfg = recipe.load(path, ["sft.learning_rate=1e-4", "rl.max_steps=3", "stages=[data,eval]"])
    assert cfg.sft.learning_rate == pytest.approx(1e-4) and cfg.rl.max_steps == 3
    assert cfg.eval.models == ["base", "sft", "rl"]  # explicit in the recipe
    with pytest.raises(recipe.RecipeError) as info:
        recipe.load(path, ["sft.max_step=3", "sft.batch_size=-1"])
    text = "\n".join(info.value.problems)
    assert "--set: sft.max_step = 3: unknown key; did you mean 'max_steps'?" in text
    assert "--set: sft.batch_size = -1: Input should be greater than 0" in text
    with pytest.raises(recipe.RecipeError, match="expected KEY=VALUE"):
        recipe.load(path, ["sft.max_steps"])


def test_eval_models_default_to_the_trained_ones(tmp_path):
    cfg = recipe.load(write(tmp_path, "name: x\nstages: [eval, data, sft]\n"))
    assert cfg.stages == ["data", "sft", "eval"]
    assert cfg.eval.models == ["base", "sft"]


def test_invalid_run_creates_no_run_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "name: x\nsft:\n  learnin_rate: 1\n")
    assert cli.main(["run", str(path)]) == 2
    assert not (tmp_path / "reports").exists()
    assert cli.main(["run", str(ROOT / "recipes" / "quickstart.yaml"), "--stages", "data,train"]) == 2
    assert "train is not among the recipe's stages" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()
