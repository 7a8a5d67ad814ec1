"""Experiment trackers (report_to): TensorBoard event files in the run directory that hold the training loss; a
tracker that is unknown or not installed is refused at validation, with the install command."""

import importlib.util

import pytest

from ftkit import recipe
from ftkit.core import rundir
from ftkit.models import loader
from ftkit.stages import data, sft
from tests.conftest import recipe_file, tiny_sft


def test_tensorboard_files_hold_the_sft_loss(tmp_path, tiny_model_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = recipe.load(recipe_file(tmp_path, tiny_sft(tiny_model_dir)))
    assert recipe.trackers(cfg.report_to) == ["tensorboard"], "auto: TensorBoard where it is installed"
    run_dir = tmp_path / "run"
    tokenizer = loader.load_tokenizer(str(tiny_model_dir))
    splits, figures = data.build_splits(cfg, tokenizer)
    data.save_splits(splits, run_dir, figures, tokenizer)
    sft.train(cfg, run_dir)
    folder = rundir.tensorboard_dir(run_dir, "sft")
    assert list(folder.glob("events.out.tfevents.*")), f"no event file in {folder}"
    events = EventAccumulator(str(folder))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    steps, losses = rundir.loss_curve(run_dir)
    assert [s for s, _ in logged] == list(steps) == [1, 2, 3]
    assert [v for _, v in logged] == pytest.approx(list(losses), rel=1e-5)


def test_no_tracker_writes_nothing(tmp_path, tiny_model_dir):
    cfg = recipe.load(recipe_file(tmp_path, tiny_sft(tiny_model_dir), report_to="none"))
    run_dir = tmp_path / "run"
    splits, figures = data.build_splits(cfg, loader.load_tokenizer(str(tiny_model_dir)))
    data.save_splits(splits, run_dir, figures)
    sft.train(cfg, run_dir)
    assert not rundir.tensorboard_dir(run_dir, "sft").exists()


def test_unknown_or_missing_trackers_are_refused(monkeypatch):
    with pytest.raises(ValueError, match=r"report_to.*(comet|literal)"):
        recipe.build({"name": "t", "report_to": "comet"})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"wandb is not installed here; pip install wandb"):
        recipe.build({"name": "t", "report_to": ["tensorboard", "wandb"]})
    assert recipe.trackers("auto") == ["tensorboard"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert recipe.trackers("auto") == [], "auto without TensorBoard: no tracker, no error"
