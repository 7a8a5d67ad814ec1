"""Where a stage's time goes: phases count their own time only, the runner completes them from the notebook's cells,
and `ftkit run` names the largest."""

import time

import pytest

from ftkit import cli
from ftkit.core import rundir, timing


def test_a_phase_inside_another_counts_to_the_inner_one_only():
    timing.reset()
    start = time.perf_counter()
    with timing.phase("update"):
        time.sleep(0.05)
        with timing.phase("generation"):
            time.sleep(0.1)
        with timing.phase("generation"):
            time.sleep(0.05)
    wall = time.perf_counter() - start
    seconds = timing.seconds()
    assert seconds["generation"] == pytest.approx(0.15, abs=0.03)
    assert seconds["update"] == pytest.approx(0.05, abs=0.03)
    assert sum(seconds.values()) == pytest.approx(wall, abs=0.005)
    timing.reset()
    assert timing.seconds() == {}


def test_timed_wraps_a_method_and_keeps_its_name():
    timing.reset()

    def reward(completions, **_):
        return [1.0 for _ in completions]

    wrapped = timing.timed("rewards", reward)
    assert wrapped(["a", "b"]) == [1.0, 1.0] and wrapped.__name__ == "reward"
    assert "rewards" in timing.seconds()


def test_an_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="unknown phase 'thinking'"):
        with timing.phase("thinking"):
            pass


def test_the_runner_completes_a_stage_from_its_cells():
    phases = timing.completed({"loading": 2.0, "update": 10.0}, [(100.5, 101.0), (101.0, 114.0), (114.0, 114.5)],
                              start=100.0, end=115.0)
    assert phases == {"kernel start": 0.5, "loading": 2.0, "update": 10.0, "notebook code": 2.0,
                      "writing the notebook": 0.5}
    assert sum(phases.values()) == 15.0


def test_run_prints_the_three_largest_phases(tmp_path, capsys):
    rundir.record_phases(tmp_path, "sft", {"loading": 4.0, "update": 60.0, "saving": 1.0})
    rundir.record_phases(tmp_path, "eval", {"generation": 30.0, "sampled replies": 5.0})
    cli._print_time(tmp_path, ["sft", "eval"])
    assert capsys.readouterr().out.strip() == ("most time: sft update 60 s (60%), eval generation 30 s (30%), "
                                               "eval sampled replies 5 s (5%)")
    rundir.forget_metrics(tmp_path, "sft")
    assert list(rundir.phases(tmp_path)) == ["eval"]
