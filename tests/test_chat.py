"""`ftkit chat`: a run's model answers with the run's template, system prompt and eval settings, so a greedy reply
to a test prompt is the eval stage's prediction for it; the terminal session's commands."""

from __future__ import annotations

import json

from ftkit import cli
from ftkit.core import rundir
from ftkit.stages import chat


def test_a_prompt_gets_the_eval_stages_prediction(tiny_run, capsys):
    _, run_dir = tiny_run
    predictions = rundir.eval_records(run_dir, "predictions", "rl")[:3]
    for record in predictions:
        assert cli.main(["chat", str(run_dir), "--model", "rl", "--prompt", record["prompt"]]) == 0
        assert capsys.readouterr().out.rstrip("\n") == record["output"]
    prompts = [p for r in predictions for p in ("--prompt", r["prompt"])]
    assert cli.main(["chat", str(run_dir), *prompts, "--jsonl"]) == 0  # the default model: the last trained
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["model"], x["prompt"], x["reply"]) for x in lines] == [("rl", r["prompt"], r["output"])
                                                                      for r in predictions]


def test_a_model_the_run_does_not_hold_is_refused_naming_those_it_does(tiny_run, capsys):
    _, run_dir = tiny_run
    assert cli.main(["chat", str(run_dir), "--model", "export", "--prompt", "hi"]) == cli.EXIT_INVALID
    assert "holds no export model (it holds: base, sft, rl)" in capsys.readouterr().err


def test_the_terminal_session_keeps_the_conversation_and_takes_commands(tiny_run):
    _, run_dir = tiny_run
    session = chat.open_session(run_dir, "sft")
    assert session.system == rundir.load_split(run_dir, "test")[0].get("system")  # the test prompts' shared one
    said, lines = [], iter(["/system Be brief.", "What is 2 plus 2?", "And 3 plus 3?", "/temp x", "/temp 0.5",
                            "/nonsense", "/reset", "/quit", "never read"])
    chat.interact(session, read=lambda _: next(lines), write=lambda *a, **k: said.append(" ".join(map(str, a))))
    assert next(lines) == "never read", "/quit ends the session"
    assert session.system == "Be brief." and session.temperature == 0.5 and session.history == []
    text = "\n".join(said)
    assert "(/temp takes a number" in text and "(unknown command /nonsense" in text and "(conversation forgotten)" in text
    session.temperature = 0.0
    first = session.reply("What is 2 plus 2?")
    session.reply("And 3 plus 3?")
    assert [m["role"] for m in session.messages("next")] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert session.history[1]["content"] == first
