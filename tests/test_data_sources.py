"""The data stage on local files: every format, cleaning with counted drops, splits, and bad input."""

import json
import re

import pandas as pd
import pytest

from ftkit import cli, recipe, sources
from ftkit.core import rundir
from ftkit.core.io import read_json, write_jsonl
from ftkit.core.rows import DataError, ends_with_end_of_turn, messages, trained_tokens
from ftkit.report import display
from ftkit.sources import leakage
from ftkit.stages import data
from tests.conftest import recipe_file

FILES = {"name": "files", "data": {"test_size": 2}}  # a recipe on local files, the data section merged in
from ftkit.scoring import grading


def qa_rows(n, start=0):
    return [{"question": f"What is the capital of country number {i}?", "answer": f"City {i}"}
            for i in range(start, start + n)]


# ---------------------------------------------------------------- formats and sources


def test_every_format_normalizes_to_prompt_answer_rows(tmp_path):
    write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Say hi", "completion": "hi"}])
    pd.DataFrame(qa_rows(1)).to_csv(tmp_path / "qa.csv", index=False)
    (tmp_path / "alpaca.json").write_text(json.dumps(
        [{"instruction": "Translate", "input": "chat", "output": "cat"}, {"instruction": "Count", "output": "3"}]))
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Name?"},
        {"role": "assistant", "content": "ftkit"}]}])
    pd.DataFrame([{"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}]) \
        .to_parquet(tmp_path / "share.parquet")
    got = {}
    for name in ("pc.jsonl", "qa.csv", "alpaca.json", "chat.jsonl", "share.parquet"):
        rows, drops = sources.load_files(str(tmp_path / name), "auto", {})
        got[name] = [r for _, r in rows]
        assert not drops
    assert got["pc.jsonl"] == [{"prompt": "Say hi", "answer": "hi"}]
    assert got["qa.csv"][0]["answer"] == "City 0"
    assert got["alpaca.json"] == [{"prompt": "Translate\n\nchat", "answer": "cat"}, {"prompt": "Count", "answer": "3"}]
    assert got["chat.jsonl"] == [{"prompt": "Name?", "answer": "ftkit", "system": "Be brief.",
                                  "history": [{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": "Hello"}]}]
    assert messages(got["chat.jsonl"][0])[0] == {"role": "system", "content": "Be brief."}
    assert len(messages(got["chat.jsonl"][0])) == 4
    assert got["share.parquet"] == [{"prompt": "2+2?", "answer": "4"}]


def test_column_mapping_and_explicit_format(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"q": "Why?", "a": "Because."}])
    rows, _ = sources.load_files(str(tmp_path / "x.jsonl"), "auto", {"question": "q", "answer": "a"})
    assert [r for _, r in rows] == [{"prompt": "Why?", "answer": "Because."}]
    write_jsonl(tmp_path / "y.jsonl", [{"prompt": "p", "completion": "c", "question": "q", "answer": "a"}])
    rows, _ = sources.load_files(str(tmp_path / "y.jsonl"), "question_answer", {})
    assert [r for _, r in rows] == [{"prompt": "q", "answer": "a"}]


def test_cleaning_counts_every_reason_and_splits_are_seeded(tmp_path):
    rows = qa_rows(20) + qa_rows(3) + [{"question": "  ", "answer": "x"}, {"question": "q", "answer": ""}]
    write_jsonl(tmp_path / "part1.jsonl", rows[:12])
    write_jsonl(tmp_path / "part2.jsonl", rows[12:] + [{"messages": [{"role": "user", "content": "a"}]}])
    # a file's format is read off its first row: a chat row among question/answer rows is a missing column
    with pytest.raises(DataError, match="part2.jsonl:14: missing column 'question'"):
        data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="part*.jsonl"))))
    (tmp_path / "part2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[12:]))
    cfg = recipe.load(recipe_file(tmp_path, FILES, data=dict(path="part*.jsonl", test_size=4)))
    splits, figures = data.build_splits(cfg)
    assert figures["drops"] == {"duplicate": 3, "empty_field": 2}
    assert len(splits["test"]) == 4 and len(splits["train"]) == 16
    assert figures["contamination"]["exact_matches"] == 0
    again, _ = data.build_splits(cfg)
    assert again == splits
    capped, _ = data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="part*.jsonl", test_size=4, train_size=5))))
    assert len(capped["train"]) == 5 and capped["test"] == splits["test"]


def test_turn_order_problems_are_dropped_and_counted(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    two_users = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                              {"role": "assistant", "content": "c"}]}
    ends_with_user = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                   {"role": "user", "content": "c"}]}
    write_jsonl(tmp_path / "c.jsonl", [good, two_users, ends_with_user])
    rows, drops = sources.load_files(str(tmp_path / "c.jsonl"), "auto", {})
    assert len(rows) == 1 and drops == {"turn_order": 1, "ends_with_user": 1}
    assert "data.format: prompts" in data.dropped(drops)
    # ... which is a prompt for RL when asked for: its earlier turns become the history
    rows, drops = sources.load_files(str(tmp_path / "c.jsonl"), "prompts", {"prompt": "messages"})
    assert [r for _, r in rows] == [{"prompt": "c", "history": [{"role": "user", "content": "a"},
                                                                {"role": "assistant", "content": "b"}]}]
    assert drops == {"turn_order": 2}, "a conversation already answered, or two users in a row, is no prompt"
    sharegpt = {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "hi"}]}
    write_jsonl(tmp_path / "s.jsonl", [sharegpt])
    assert sources.load_files(str(tmp_path / "s.jsonl"), "auto", {})[1] == {"ends_with_user": 1}
    assert [r for _, r in sources.load_files(str(tmp_path / "s.jsonl"), "prompts", {"prompt": "conversations"})[0]] \
        == [{"prompt": "hi", "system": "Be kind."}]


def test_too_long_examples_are_dropped_by_token_count(tmp_path, tiny_model_dir):
    from ftkit.models.loader import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = qa_rows(30) + [{"question": "word " * 400, "answer": "long"}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = recipe.load(recipe_file(tmp_path, FILES, data=dict(path="d.jsonl"), sft=dict(max_length=128)))
    splits, figures = data.build_splits(cfg, tokenizer)
    assert figures["drops"] == {"too_long": 1} and "max_length" not in figures
    assert "warnings" not in figures  # one example in 31 is noted in the drops, not warned about
    stats = data.save_splits(splits, tmp_path / "run", figures, tokenizer)
    assert stats["splits"]["train"]["tokens_max"] <= cfg.sft.max_length
    assert stats["splits"]["test"]["examples"] == 2
    write_jsonl(tmp_path / "d.jsonl", rows + [{"question": f"{i} " + "word " * 300, "answer": "long"} for i in range(3)])
    longest = max(data.token_lengths([{"prompt": r["question"], "answer": r["answer"]} for r in rows[-1:]], tokenizer))
    _, figures = data.build_splits(cfg, tokenizer)
    assert figures["warnings"] == [f"4 of 34 examples (12 %) are longer than sft.max_length = 128 tokens and were "
                                   f"dropped; sft.max_length: {longest} keeps them all (the longest), data.too_long: "
                                   "truncate keeps them cut"]


def test_source_test_split_is_used_as_given(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", qa_rows(6))
    write_jsonl(tmp_path / "test.jsonl", qa_rows(3, start=100))
    splits, _ = data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="train.jsonl", test_path="test.jsonl"))))
    assert [r["answer"] for r in splits["test"]] == ["City 100", "City 101", "City 102"]
    assert len(splits["train"]) == 6


@pytest.mark.pipeline
def test_data_stage_runs_on_files_through_the_cli(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "qa.jsonl", qa_rows(30) + qa_rows(2))
    path = recipe_file(tmp_path, {"name": "files", "model": {"id": str(tiny_model_dir)},
                                    "data": {"path": "qa.jsonl", "test_size": 5}}, file="files.yaml")
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(path), "--stages", "data", "--run-dir", str(run_dir)]) == 0
    metrics = read_json(run_dir / "metrics.json")["data"]
    assert metrics["splits"]["train"]["examples"] == 25 and metrics["drops"] == {"duplicate": 2}
    assert "Dropped: duplicate: 2" in (run_dir / "report.html").read_text()


# ---------------------------------------------------------------- bad input: each message names file, place, fix


def bad(tmp_path, name, content, fmt="auto", columns=None, match=None):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=match) as info:
        sources.load_files(str(path), fmt, columns or {})
    assert str(path) in str(info.value)
    return str(info.value)


def test_malformed_json_line_names_file_and_line(tmp_path):
    text = bad(tmp_path, "a.jsonl", '{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": }\n')
    assert "a.jsonl:3: malformed JSON" in text and "fix or delete this line" in text


def test_malformed_json_file(tmp_path):
    bad(tmp_path, "a.json", '[{"prompt": "a",]', match=r"a.json:1: malformed JSON .*use .jsonl")


def test_json_file_that_is_not_a_list(tmp_path):
    bad(tmp_path, "a.json", '"just a string"', match="expected a list of objects, found a str")


def test_jsonl_line_that_is_not_an_object(tmp_path):
    bad(tmp_path, "a.jsonl", '{"prompt": "a", "completion": "b"}\n42\n', match=r"a.jsonl:2: expected an object")


def test_missing_column_lists_columns_and_mapping_key(tmp_path):
    text = bad(tmp_path, "a.jsonl", '{"prompt": "a", "reply": "b"}\n', fmt="prompt_completion",
               match="a.jsonl:1: missing column 'completion'")
    assert "['prompt', 'reply']" in text and "data.columns: {completion: <column>}" in text


def test_undetectable_format(tmp_path):
    bad(tmp_path, "a.jsonl", '{"foo": "a", "bar": "b"}\n', match=r"cannot tell the format from the columns "
                                                                 r"\['bar', 'foo'\]; set data.format")


def test_column_mapping_to_an_absent_column(tmp_path):
    bad(tmp_path, "a.jsonl", '{"q": "a", "a": "b"}\n', columns={"question": "query"},
        match="data.columns names 'query', which is not a column here")


def test_unknown_role_name(tmp_path):
    line = json.dumps({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]})
    bad(tmp_path, "a.jsonl", line, match=r"a.jsonl:1: message 0 has role 'bot'; allowed roles: system, user")


def test_message_without_content(tmp_path):
    line = json.dumps({"messages": [{"role": "user", "text": "x"}]})
    bad(tmp_path, "a.jsonl", line, match=r"message 0 has keys \['role', 'text'\]; each message needs 'role' and")


def test_conversation_that_is_not_a_list(tmp_path):
    bad(tmp_path, "a.jsonl", json.dumps({"messages": "hello"}), match="the conversation must be a list")


def test_sharegpt_with_wrong_keys(tmp_path):
    line = json.dumps({"conversations": [{"role": "user", "content": "x"}]})
    bad(tmp_path, "a.jsonl", line, fmt="sharegpt", match="each message needs 'from' and 'value'")


def test_file_not_utf8(tmp_path):
    bad(tmp_path, "a.jsonl", '{"prompt": "caf\xe9"}'.encode("latin-1"), match="not UTF-8 text .*re-save the file")


def test_csv_not_utf8(tmp_path):
    bad(tmp_path, "a.csv", "prompt,completion\ncaf\xe9,x\n".encode("latin-1"), match="not UTF-8 text")


def test_unknown_file_type(tmp_path):
    bad(tmp_path, "a.txt", "hello", match="unknown file type '.txt'; use .jsonl, .json, .csv")


def test_no_file_matches_at_run_time(tmp_path):
    with pytest.raises(DataError, match="no file matches; check data.path"):
        sources.load_files(str(tmp_path / "nothing*.jsonl"), "auto", {})


def test_missing_file_is_caught_by_validate(tmp_path, capsys):
    path = recipe_file(tmp_path, data={"path": "missing.jsonl"})
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: data.path = 'missing.jsonl': no file matches" in err and "Traceback" not in err


def test_empty_split_after_cleaning(tmp_path):
    write_jsonl(tmp_path / "e.jsonl", [{"prompt": "a", "completion": " "}] * 3 + [{"prompt": "b", "completion": "c"}])
    with pytest.raises(DataError, match="1 examples after cleaning, not enough for a test split of 2 .*"
                                             "lower data.test_size"):
        data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="e.jsonl"))))


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="0 examples after cleaning"):
        data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="e.jsonl"))))


def test_empty_test_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", qa_rows(4))
    write_jsonl(tmp_path / "test.jsonl", [{"question": "", "answer": "x"}])
    with pytest.raises(DataError, match="split 'test' is empty after cleaning"):
        data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="train.jsonl", test_path="test.jsonl"))))


def test_contamination_above_threshold_fails(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", qa_rows(6))
    write_jsonl(tmp_path / "test.jsonl", qa_rows(2) + qa_rows(2, start=50))
    with pytest.raises(DataError, match=r"2 of 4 test prompts share a word 8-gram with a train prompt \(2 of them "
                                             r"word for word\); fraction 0.5 is above data.max_contamination = 0.0"
                       ) as caught:
        data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="train.jsonl", test_path="test.jsonl"))))
    message = str(caught.value)
    assert "test:   'What is the capital of country number 0?'" in message  # the pairs, side by side
    assert "train:  'What is the capital of country number 0?'" in message and "data.split_by: ngram" in message
    splits, figures = data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="train.jsonl", test_path="test.jsonl",
                                                    max_contamination=0.5))))
    assert figures["contamination"]["fraction"] == 0.5


def test_ngram_overlap_counts_near_duplicates(tmp_path):
    train = [{"prompt": "please summarize the following short article about the history of rome", "answer": "a"}]
    test = [{"prompt": "Summarize the following short article about the history of rome for me", "answer": "b"},
            {"prompt": "completely different words here", "answer": "c"}]
    assert leakage.contamination(train, test) == {
        "exact_matches": 0, "ngram_overlaps": 1, "ngram": 8, "counted": "ngram", "fraction": 0.5,
        "common_ngrams": 0, "common_example": None, "pairs": [{"test": test[0]["prompt"], "train": train[0]["prompt"],
                   "shared": "summarize the following short article about the history"}]}
    assert leakage.contamination(train, test, exact_only=True)["fraction"] == 0.0


def test_a_template_of_columns_fills_a_text_field(tmp_path):
    countries = [("Aruba", "ABW", 533, "Americas"), ("French Polynesia", "PYF", 258, "Oceania"),
                 ("French Guiana", "GUF", 254, "Americas"), ("Nowhere", "NWH", 0, "")]
    pd.DataFrame(countries * 6, columns=["Country", "Alpha-3 code", "Numeric", "Region"]).to_csv(
        tmp_path / "c.csv", index=False)
    columns = {"prompt": "What is the ISO code of {Country} ({Region}, number {Numeric})? {{braces}} stay",
               "answer": "Alpha-3 code"}
    rows, drops = sources.load_files(str(tmp_path / "c.csv"), "auto", columns, keep=["Region"])
    assert rows[1][1] == {"prompt": "What is the ISO code of French Polynesia (Oceania, number 258)? {braces} stay",
                          "answer": "PYF", "extra": {"Region": "Oceania"}}  # a template's column may go to a reward
    splits, figures = data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="c.csv", columns=columns))))
    assert figures["drops"] == {"empty_field": 6, "duplicate": 15}  # Nowhere has no region: no prompt with a hole
    # in JSONL a field inside a column is named by a dotted path
    write_jsonl(tmp_path / "n.jsonl", [{"country": {"name": "Aruba", "codes": ["AW", "ABW"]}, "code": "ABW"}])
    rows, _ = sources.load_files(str(tmp_path / "n.jsonl"), "auto",
                                 {"prompt": "Code of {country.name}?", "answer": "code"})
    assert rows[0][1]["prompt"] == "Code of Aruba?"
    for template, message in (("Code of {country}?", r"names 'country', which holds an object with the fields "
                                                     r"\['codes', 'name'\], not text; name a text inside it, e.g. "
                                                     r"\{country.<field>\}"),
                              ("Code of {nation}?", r"data.columns names 'nation', which is not a column here; the "
                                                    r"columns are \['code', 'country'\]")):
        with pytest.raises(DataError, match=r"n.jsonl.*" + message):
            sources.load_files(str(tmp_path / "n.jsonl"), "auto", {"prompt": template, "answer": "code"})


def test_a_templates_words_and_one_of_the_examples_own_are_not_one_story(tmp_path):
    names = [f"{first} {second}" for first in ("French", "South", "New", "Saint", "North") for second in
             ("Polynesia", "Guiana", "Georgia", "Caledonia", "Lucia", "Kitts", "Zealand", "Sudan")]
    rows = [{"question": f"What is the ISO 3166-1 alpha-3 code of {name}?", "answer": name[:3].upper()}
            for name in names]
    overlap = leakage.contamination(rows[::2], rows[1::2])
    assert overlap["ngram_overlaps"] == 0 and overlap["common_example"] == "what is the iso 3166-1 alpha-3 code of"
    assert leakage.group_keys(rows, "ngram") == list(range(len(rows)))
    asked_twice = {"question": f"What is the ISO 3166-1 alpha-3 code of {names[0]}?", "answer": "FRE"}
    assert leakage.contamination(rows[::2], [asked_twice, *rows[1::2]])["ngram_overlaps"] == 1


@pytest.mark.parametrize("section, message", [
    ({"task": "addition", "path": "x.jsonl"}, "set one source, not task ('addition') and path ('x.jsonl')"),
    ({"test_split": "test"}, "test_split needs hub"),
    ({"too_long": "cut"}, "data.too_long = 'cut': Input should be 'drop' or 'truncate'"),
    ({"test_path": "t.jsonl"}, "test_path needs path"),
    ({"format": "csv"}, "data.format = 'csv': Input should be 'auto', 'prompt_completion'"),
    ({"columns": {"questoin": "q"}}, "data.columns.questoin: unknown key 'questoin'; did you mean 'question'?"),
    ({"max_contamination": 2}, "data.max_contamination = 2: Input should be less than or equal to 1"),
    ({"columns": {"answer": "{Code", "label": "{x}", "prompt": "Code of {Country!r}?"}},
     "data.columns: answer: '{Code' is not a template (expected '}' before end of string); write a column as {column} "
     "and a brace meant literally twice ({{ or }}); label: '{x}' is a template, which fills text fields only (prompt, "
     "completion, question, answer, instruction, input, output, chosen, rejected, system, text); map label onto a "
     "column; prompt: 'Code of {Country!r}?': {Country!r} formats the value, which a template does not; write "
     "{Country}"),
    ({"columns": {"answer": "{{a}}", "prompt": "Say {}"}}, "answer: '{{a}}' names no column: a template puts columns "
     "in braces, e.g. 'Title: {title}'; for the same text on every row use data.system; prompt: 'Say {}': {} names no "
     "column; put the column's name inside the braces, e.g. {question}"),
])
def test_bad_data_sections_fail_validation(tmp_path, section, message):
    (tmp_path / "x.jsonl").write_text("{}\n")
    path = recipe_file(tmp_path, {"name": "x", "data": section})
    with pytest.raises(recipe.RecipeError, match=re.escape(message)):
        recipe.load(path)


# ---------------------------------------------------------------- what the trainer sees


def test_token_view_marks_trained_tokens_and_escapes(tiny_model_dir):
    from ftkit.models.loader import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    row = {"system": "Be brief.", "prompt": "<b>What is 1 plus 2?</b>", "answer": "3"}
    (prompt, masked), (answer, trained) = trained_tokens(row, tokenizer)
    assert not masked and trained and tokenizer.convert_tokens_to_string(answer).startswith("3")
    assert tokenizer.eos_token in answer and ends_with_end_of_turn(row, tokenizer)
    html = display.token_view([row], tokenizer)._repr_html_()
    assert "<b>" not in html and "</b>" not in html and "&lt;" in html  # tokens may split the tag: each escaped
    assert html.count("background:#d4f4dd") == len(answer) + 1  # the legend and every trained token


def test_all_masked_labels_are_an_error(tiny_model_dir):
    from ftkit.models.loader import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    # a template that drops assistant turns leaves nothing to learn
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}\n"
                               "{% endif %}{% endfor %}")
    with pytest.raises(DataError, match="every label would be masked; use a model whose template"):
        trained_tokens({"prompt": "hi", "answer": "hello"}, tokenizer)


# ---------------------------------------------------------------- preference pairs, truncation, hub, templates


def test_preference_pairs_keep_the_rejected_answer(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
                                       {"prompt": "3+3?", "chosen": "6", "rejected": " "}])
    rows, drops = sources.load_files(str(tmp_path / "p.jsonl"), "auto", {})
    assert [r for _, r in rows][0] == {"prompt": "2+2?", "answer": "4", "rejected": "5"}
    assert len(data.clean(rows, drops)) == 1 and drops == {"empty_field": 1}


def test_a_preference_pair_with_identical_answers_is_dropped_and_counted(tmp_path):
    pairs = [{"prompt": f"Is {i} even?", "chosen": "yes" if i % 2 == 0 else "no",
              "rejected": "no" if i % 2 == 0 else "yes"} for i in range(12)]
    pairs[5]["rejected"] = pairs[5]["chosen"]
    write_jsonl(tmp_path / "p.jsonl", pairs)
    splits, figures = data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="p.jsonl", max_contamination=1.0))))
    assert figures["drops"] == {"identical_pair": 1}
    assert sum(len(rows) for rows in splits.values()) == 11
    assert all(r["answer"] != r["rejected"] for rows in splits.values() for r in rows)


def test_chosen_and_rejected_conversations_without_a_prompt_share_it(tmp_path):
    """Anthropic HH's transcripts and TRL's implicit-prompt message lists: the shared beginning is the prompt (and
    history); pairs that differ earlier, or whose answers are the same, are dropped and counted."""
    earlier = "\n\nHuman: Hi.\n\nAssistant: Hello! How can I help?"
    hh = [{"chosen": f"{earlier}\n\nHuman: Name a fruit.\n\nAssistant: An apple.",
           "rejected": f"{earlier}\n\nHuman: Name a fruit.\n\nAssistant: No."},
          {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+3?\n\nAssistant: 4"},
          {"chosen": "\n\nHuman: Yes?\n\nAssistant: Yes.", "rejected": "\n\nHuman: Yes?\n\nAssistant: Yes."},
          {"chosen": "\n\nHuman: Only me.", "rejected": "\n\nHuman: Only me."}]
    rows, drops = sources.load_files(str(write_jsonl(tmp_path / "hh.jsonl", hh)), "auto", {})
    assert [r for _, r in rows] == [{"prompt": "Name a fruit.", "answer": "An apple.", "rejected": "No.",
                                     "history": [{"role": "user", "content": "Hi."},
                                                 {"role": "assistant", "content": "Hello! How can I help?"}]}]
    assert drops == {"unshared_prompt": 1, "identical_pair": 1, "turn_order": 1}
    assert "differ before their last turn" in data.dropped(drops)
    user = {"role": "user", "content": "Name a fruit."}
    listed = [{"chosen": [{"role": "system", "content": "Be brief."}, user, {"role": "assistant", "content": "Fig."}],
               "rejected": [{"role": "system", "content": "Be brief."}, user, {"role": "assistant", "content": "?"}]}]
    rows, _ = sources.load_files(str(write_jsonl(tmp_path / "m.jsonl", listed)), "auto", {})
    assert [r for _, r in rows] == [{"prompt": "Name a fruit.", "answer": "Fig.", "rejected": "?",
                                     "system": "Be brief."}]


def test_chosen_and_rejected_text_that_is_no_conversation_says_what_is_missing(tmp_path):
    text = bad(tmp_path, "a.jsonl", json.dumps({"chosen": "An apple.", "rejected": "No."}),
               match="a.jsonl:1: there is no prompt column, so 'chosen' must be a conversation")
    assert "data.columns: {prompt: <column>}" in text


def test_message_content_given_as_text_parts_is_joined_and_an_image_part_refused(tmp_path):
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "text",
                                                                                          "text": "this."}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]}
    rows, _ = sources.load_files(str(write_jsonl(tmp_path / "p.jsonl", [row])), "auto", {})
    assert [r for _, r in rows] == [{"prompt": "Describe\nthis.", "answer": "A cat."}]
    row["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": "x.png"}})
    bad(tmp_path, "a.jsonl", json.dumps(row), match="a.jsonl:1: message 0 has a 'image_url' part; ftkit trains on text")


def test_dolly_and_input_output_columns_read_as_alpaca(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Summarize.", "context": "Ann met Bo.", "response": "They met.", "category": "summarization"},
        {"instruction": "Name a colour.", "context": "", "response": "Red."}])
    write_jsonl(tmp_path / "io.jsonl", [{"input": "2+2", "output": "4"}])
    assert [r for _, r in sources.load_files(str(tmp_path / "d.jsonl"), "auto", {})[0]] == [
        {"prompt": "Summarize.\n\nAnn met Bo.", "answer": "They met."}, {"prompt": "Name a colour.", "answer": "Red."}]
    assert [r for _, r in sources.load_files(str(tmp_path / "io.jsonl"), "auto", {})[0]] == [
        {"prompt": "2+2", "answer": "4"}]


def test_trl_conversational_prompts_and_completions_become_turns_not_their_repr(tmp_path):
    system, user = {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}
    write_jsonl(tmp_path / "pc.jsonl", [
        {"prompt": [system, user], "completion": [{"role": "assistant", "content": "4"}]},
        {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, user],
         "completion": [{"role": "assistant", "content": "Four."}]},
        {"prompt": [user, {"role": "assistant", "content": "4"}], "completion": [{"role": "assistant", "content": "!"}]}])
    rows, drops = sources.load_files(str(tmp_path / "pc.jsonl"), "auto", {})
    assert [r for _, r in rows] == [{"prompt": "2+2?", "answer": "4", "system": "Be brief."},
                                    {"prompt": "2+2?", "answer": "Four.", "history": [
                                        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    assert drops == {"turn_order": 1}, "a prompt must end with the user's turn"
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": [system, user]}])
    assert [r for _, r in sources.load_files(str(tmp_path / "p.jsonl"), "auto", {})[0]] == [
        {"prompt": "2+2?", "system": "Be brief."}]


def test_a_prompt_column_alone_is_prompts_and_beside_a_label_is_refused(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Write a haiku.", "system": "Be brief.", "topic": "rain"}])
    rows, _ = sources.load_files(str(tmp_path / "p.jsonl"), "auto", {}, keep=["topic"])
    assert [r for _, r in rows] == [{"prompt": "Write a haiku.", "system": "Be brief.", "extra": {"topic": "rain"}}]
    text = bad(tmp_path, "q.jsonl", json.dumps({"prompt": "Great film.", "label": "positive"}),
               match="q.jsonl:1: a 'prompt' column and a 'label' column")
    assert "data.columns: {answer: label}" in text and "data.format: prompts" in text
    write_jsonl(tmp_path / "k.jsonl", [{"prompt": "a", "n": 3}, {"prompt": "b", "n": None}, {"prompt": "c", "n": "x"}])
    with pytest.raises(DataError, match=r"k.jsonl:3: data.keep_columns column 'n' holds a string here and a number at "
                                        r".*k.jsonl:1; give it one type in every row"):
        sources.load_files(str(tmp_path / "k.jsonl"), "auto", {}, keep=["n"])


def test_text_beside_a_label_is_not_taken_for_plain_text(tmp_path):
    pd.DataFrame({"text": ["Great film.", "Dull."], "label": [1, 0]}).to_csv(tmp_path / "c.csv", index=False)
    text = bad(tmp_path, "c.csv", (tmp_path / "c.csv").read_text(),
               match="c.csv:2: a 'text' column and a 'label' column")
    assert "data.columns: {prompt: text, answer: label}" in text and "data.format: text" in text
    rows, _ = sources.load_files(str(tmp_path / "c.csv"), "auto", {"prompt": "text", "answer": "label"})
    assert [r for _, r in rows] == [{"prompt": "Great film.", "answer": "1"}, {"prompt": "Dull.", "answer": "0"}]
    rows, _ = sources.load_files(str(tmp_path / "c.csv"), "text", {})
    assert [r for _, r in rows] == [{"text": "Great film."}, {"text": "Dull."}]


def test_too_few_rows_after_cleaning_names_what_was_dropped(tmp_path):
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "assistant", "content": "Hello!"},
                                                        {"role": "user", "content": f"Hi {i}"}]} for i in range(5)])
    with pytest.raises(DataError, match=r"0 examples after cleaning, not enough for a test split of 2 and a train "
                                        r"split \(cleaning dropped 5: 5 turn_order \(a conversation that is not user "
                                        r"and assistant turns in turn"):
        data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="chat.jsonl"))))


def story_rows(stories, questions=3):
    """Several questions on one story: stories share no wording, the questions on one story share its text."""
    return [{"question": " ".join(f"{chr(97 + s % 26)}{s}word{k}" for k in range(10)) + f". Question {q}: how many?",
             "answer": str(s * q), "story": f"s{s}"}
            for s in range(stories) for q in range(questions)]


@pytest.mark.parametrize("split_by", ["story", "ngram"])
def test_a_grouped_split_keeps_every_group_on_one_side(tmp_path, split_by):
    write_jsonl(tmp_path / "d.jsonl", story_rows(20))
    with pytest.raises(DataError, match="data.split_by"):  # split per question, stories straddle train and test
        data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="d.jsonl", test_size=6))))
    splits, figures = data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="d.jsonl", test_size=6, validation_size=3,
                                                    split_by=split_by))))
    side = {}
    for name, rows in splits.items():
        for row in rows:
            story = row["prompt"].split()[0]
            assert side.setdefault(story, name) == name, f"{story} is in {side[story]} and {name}"
    assert len(splits["test"]) == 6 and len(splits["validation"]) == 3 and len(splits["train"]) == 51
    assert figures["contamination"]["ngram_overlaps"] == 0 and figures["split_by"] == split_by


@pytest.mark.parametrize("split_by", ["story", "ngram"])
def test_with_its_own_test_split_train_examples_grouped_with_test_ones_are_dropped(tmp_path, split_by):
    rows = story_rows(10)
    write_jsonl(tmp_path / "train.jsonl", rows[:24])
    write_jsonl(tmp_path / "test.jsonl", rows[21:])  # story 7 on both sides
    splits, figures = data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="train.jsonl", test_path="test.jsonl",
                                                    split_by=split_by))))
    assert figures["drops"] == {"grouped_with_test": 3} and len(splits["train"]) == 21
    assert figures["contamination"]["ngram_overlaps"] == 0


def test_split_by_a_missing_column_names_it(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", qa_rows(6))
    with pytest.raises(DataError, match=r"d.jsonl:1: data.split_by names the column 'story', which this row lacks"):
        data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="d.jsonl", split_by="story"))))


def test_split_by_ngram_refuses_wording_that_links_everything(tmp_path):
    """One document in overlapping pieces: each piece shares 8-grams with its neighbours only (never a template's
    tenth of the prompts), yet the chain links every piece into one group."""
    write_jsonl(tmp_path / "d.jsonl", [{"question": " ".join(f"w{j}" for j in range(i, i + 12)), "answer": str(i)}
                                       for i in range(20)])
    with pytest.raises(DataError, match=r"links 20 of 20 examples into one group .* belongs in data.system"):
        data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="d.jsonl", split_by="ngram"))))


def temperature_rows(values):
    return [{"question": f"Convert {c} degrees Celsius to Fahrenheit. Give the number only.",
             "answer": f"{c * 9 / 5 + 32:g}"} for c in values]


def test_a_template_every_prompt_repeats_is_not_contamination_but_a_story_told_twice_is(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", temperature_rows(range(-20, 40)))
    splits, figures = data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="t.jsonl", test_size=10))))
    overlap = figures["contamination"]
    assert overlap["fraction"] == 0.0 and overlap["ngram_overlaps"] == 0 and len(splits["train"]) == 50
    assert overlap["common_ngrams"] == 1
    assert overlap["common_example"] == "degrees celsius to fahrenheit. give the number only."
    assert leakage.group_keys(splits["train"], "ngram") == list(range(50))  # the template links nothing

    story = "Mara walked her three dogs along the river before the storm came in from the west"
    write_jsonl(tmp_path / "train.jsonl",
                temperature_rows(range(30)) + [{"question": f"{story}. How many dogs?", "answer": "3"}])
    write_jsonl(tmp_path / "test.jsonl",
                temperature_rows(range(30, 40)) + [{"question": f"{story}. Where?", "answer": "river"}])
    with pytest.raises(DataError, match=r"1 of 11 test prompts share a word 8-gram with a train prompt \(0 of them word "
                                        r"for word; wording that a tenth of the prompts repeat, a template's, is not "
                                        r"counted: 1 8-gram such as 'degrees celsius to fahrenheit") as caught:
        data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="train.jsonl", test_path="test.jsonl"))))
    assert "shared: 'mara walked her three dogs along the river'" in str(caught.value)  # the story, caught



def test_max_length_auto_is_fitted_to_the_data_and_read_by_the_later_stages(tmp_path, tiny_model_dir):
    from ftkit.models.loader import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = qa_rows(200)
    write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = recipe.load(recipe_file(tmp_path, FILES, data=dict(path="d.jsonl")))
    assert cfg.sft.max_length == "auto"
    lengths = data.token_lengths([{"prompt": r["question"], "answer": r["answer"]} for r in rows], tokenizer)
    splits, figures = data.build_splits(cfg, tokenizer)
    fit = figures["max_length"]
    assert fit["rule"] == "longest" and fit["longest"] == max(lengths) and fit["chosen"] == -(-max(lengths) // 8) * 8
    assert figures["drops"] == {} and cfg.sft.max_length == "auto"  # the recipe itself is left as it was
    # a few outliers far beyond the rest: the 99th percentile, and they are dropped and counted
    write_jsonl(tmp_path / "d.jsonl", rows + [{"question": f"{i} " + "word " * 150, "answer": "long"} for i in range(2)])
    splits, figures = data.build_splits(cfg, tokenizer)
    assert figures["max_length"]["rule"] == "99th percentile" and figures["drops"] == {"too_long": 2}
    assert figures["max_length"]["chosen"] == fit["chosen"]
    # the stages after data read the choice from the run's figures
    run = tmp_path / "run"
    stats = data.save_splits(splits, run, figures, tokenizer)
    rundir.record(run, "data", stats)
    assert recipe.fitted(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="d.jsonl"))), run).sft.max_length \
        == fit["chosen"]

def test_too_long_examples_can_be_kept_for_truncation(tmp_path, tiny_model_dir):
    from ftkit.models.loader import load_tokenizer

    write_jsonl(tmp_path / "d.jsonl", qa_rows(10) + [{"question": "word " * 400, "answer": "long"}])
    splits, figures = data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="d.jsonl", too_long="truncate"))),
                                        load_tokenizer(str(tiny_model_dir)))
    assert figures["truncated"] == 1 and figures["drops"] == {}
    assert sum(len(rows) for rows in splits.values()) == 11


def test_unreachable_hub_dataset_says_how_to_use_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(DataError) as info:
        sources.read_hub("ftkit-tests/no-such-dataset", None, "train", None)
    text = str(info.value)
    assert "hub dataset 'ftkit-tests/no-such-dataset' (subset None, split 'train') could not be loaded" in text
    assert "set data.path to it (and data.hub to null)" in text


@pytest.mark.skipif(__import__("os").environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""),
                    reason="HF_HUB_OFFLINE is set (the suite runs offline); run with HF_HUB_OFFLINE=0 where the "
                           "Hugging Face hub can be reached")
def test_hub_dataset_loads_by_id_subset_and_split(tmp_path):
    path = recipe_file(tmp_path, {"name": "hub", "data": {
        "hub": "trl-internal-testing/zen", "subset": "standard_prompt_completion", "test_size": 2}})
    splits, figures = data.build_splits(recipe.load(path))
    assert splits["train"] and len(splits["test"]) == 2 and figures["source"].startswith("hub dataset")


def test_models_without_a_chat_template_get_the_documented_default(tmp_path, tiny_model_dir):
    import shutil

    from ftkit.models.loader import DEFAULT_CHAT_TEMPLATE, load_tokenizer

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = load_tokenizer(str(plain))
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    row = {"system": "Be brief.", "prompt": "Hi", "answer": "Hello"}
    text = tokenizer.apply_chat_template(messages(row) + [{"role": "assistant", "content": "Hello"}],
                                         tokenize=False)
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    assert text == f"{bos}### System:\nBe brief.{eos}\n### User:\nHi{eos}\n### Assistant:\nHello{eos}\n"
    assert ends_with_end_of_turn(row, tokenizer)


def test_validation_split_is_held_out_of_train(tmp_path):
    write_jsonl(tmp_path / "v.jsonl", qa_rows(20))
    splits, _ = data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="v.jsonl", test_size=3, validation_size=4))))
    assert {k: len(v) for k, v in splits.items()} == {"test": 3, "validation": 4, "train": 13}
    prompts = [{r["prompt"] for r in rows} for rows in splits.values()]
    assert sum(len(p) for p in prompts) == len(set().union(*prompts)) == 20
    write_jsonl(tmp_path / "t.jsonl", qa_rows(2, start=100))
    own, _ = data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="v.jsonl", test_path="t.jsonl", validation_size=5))))
    assert {k: len(v) for k, v in own.items()} == {"validation": 5, "train": 15, "test": 2}
    cfg = recipe.load(recipe_file(tmp_path, FILES, data=dict(test_size=10, validation_size=5, train_size=50)))
    task, _ = data.build_splits(cfg)
    assert {k: len(v) for k, v in task.items()} == {"validation": 5, "train": 45, "test": 10, "generalization": 100}


def test_a_test_split_larger_than_what_is_left_to_train_on_is_warned_about(tmp_path):
    rows = temperature_rows(range(-20, 40))
    write_jsonl(tmp_path / "t.jsonl", rows + rows[:5])
    splits, figures = data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="t.jsonl", test_size=50))))
    assert len(splits["train"]) == 10
    assert figures["warnings"] == ["train keeps 10 examples, fewer than the 50 held out for test (cleaning dropped "
                                   "5: duplicate 5); lower data.test_size or add data"]
    assert "warnings" not in data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="t.jsonl", test_size=30))))[1]


@pytest.mark.pipeline
def test_ftkit_run_prints_the_data_stage_warning(tmp_path, tiny_model_dir, capsys):
    write_jsonl(tmp_path / "t.jsonl", temperature_rows(range(-20, 40)))
    path = recipe_file(tmp_path, {"name": "thin", "stages": ["data"], "model": {"id": str(tiny_model_dir)},
                                    "data": {"path": "t.jsonl", "test_size": 40}}, file="t.yaml")
    assert cli.main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    assert "  ⚠ train keeps 20 examples, fewer than the 40 held out for test; lower data.test_size or add data\n" \
           in capsys.readouterr().out


def test_a_prompt_labelled_two_ways_is_warned_about(tmp_path):
    rows = temperature_rows(range(30))
    rows.append({**rows[4], "answer": "-40"})  # the same question again with a wrong answer
    write_jsonl(tmp_path / "t.jsonl", rows)
    _, figures = data.build_splits(recipe.load(recipe_file(tmp_path, FILES, data=dict(path="t.jsonl", test_size=5))))
    assert figures["warnings"] == [
        "1 prompt comes with different answers, e.g. 'Convert 4 degrees Celsius to Fahrenheit. Give the number only.' "
        "-> '-40' / '39.2'; where the task has one right answer (a label, a number), fix them in the sources (several "
        "good replies to one prompt are fine for SFT; eval scores each row against its own)"]


def test_nested_answers_are_read_by_a_dotted_path_never_as_an_objects_repr(tmp_path):
    squad = {"id": "1", "context": "Paris is the capital of France.", "question": "What is the capital of France?",
             "answers": {"text": ["Paris", "Paris."], "answer_start": [0, 0]}}
    write_jsonl(tmp_path / "squad.jsonl", [squad])
    path = str(tmp_path / "squad.jsonl")
    with pytest.raises(DataError, match=r"squad.jsonl:1: the answer is an object with the fields \['answer_start', "
                                        r"'text'\], not text; .* data.columns: \{answer: answers.text\}"):
        sources.load_files(path, "auto", {"prompt": "question", "answer": "answers"})
    rows, _ = sources.load_files(path, "auto", {"prompt": "question", "answer": "answers.text"})
    assert [r for _, r in rows] == [{"prompt": "What is the capital of France?", "answer": "Paris"}]  # the first
    alpaca = {"instruction": "question", "input": "context", "output": "answers.text"}
    rows, _ = sources.load_files(path, "alpaca", alpaca)
    assert [r for _, r in rows] == [{"prompt": "What is the capital of France?\n\nParis is the capital of France.",
                                     "answer": "Paris"}]
    with pytest.raises(DataError, match=r"data.columns names 'answers.txt', which is not a column here"):
        sources.load_files(path, "auto", {"prompt": "question", "answer": "answers.txt"})
    trivia = {"question": "Capital of France?", "answer": {"value": "Paris", "aliases": ["paris"]}}
    write_jsonl(tmp_path / "trivia.jsonl", [trivia])
    with pytest.raises(DataError, match=r"data.columns: \{answer: answer.value\}"):
        sources.load_files(str(tmp_path / "trivia.jsonl"), "auto", {})
    rows, _ = sources.load_files(str(tmp_path / "trivia.jsonl"), "auto", {"answer": "answer.value"})
    assert [r for _, r in rows] == [{"prompt": "Capital of France?", "answer": "Paris"}]
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": {"score": 1}, "rejected": "r"}])
    with pytest.raises(DataError, match=r"pairs.jsonl:1: the answer is an object"):
        sources.load_files(str(tmp_path / "pairs.jsonl"), "auto", {})


def test_several_acceptable_answers_are_kept_and_any_one_scores(tmp_path):
    # SQuAD: a list of answer spans; TriviaQA: a canonical value and its aliases in another field
    squad = [{"question": f"Who wrote play {i}?", "answers": {"text": ["William Shakespeare", "Shakespeare",
                                                                        "shakespeare."]}} for i in range(6)]
    squad.append({"question": "Who wrote Faust?", "answers": {"text": ["Goethe"]}})
    write_jsonl(tmp_path / "squad.jsonl", squad)
    cfg = recipe.load(recipe_file(tmp_path, FILES, data=dict(path="squad.jsonl", test_size=3, split_by=None,
                      columns={"prompt": "question", "answer": "answers.text"})))
    splits, figures = data.build_splits(cfg)
    rows = [r for split in splits.values() for r in split]
    assert {(r["answer"], tuple(r.get("accepted", ()))) for r in rows} == {
        ("William Shakespeare", ("William Shakespeare", "Shakespeare")), ("Goethe", ())}  # "shakespeare." repeats one
    assert sum(figures["several_acceptable_answers"].values()) == 6
    trivia = {"question": "Capital of France?", "answer": {"value": "Paris", "aliases": ["paris", "City of Paris"]}}
    write_jsonl(tmp_path / "trivia.jsonl", [trivia])
    loaded, _ = sources.load_files(str(tmp_path / "trivia.jsonl"), "auto",
                                   {"answer": "answer.value", "accepted": "answer.aliases"})
    assert [r for _, r in loaded] == [{"prompt": "Capital of France?", "answer": "Paris",
                                       "accepted": ["Paris", "City of Paris"]}]
    write_jsonl(tmp_path / "flag.jsonl", [{"question": "Is it done?", "answer": "yes", "accepted": True}])
    loaded, _ = sources.load_files(str(tmp_path / "flag.jsonl"), "auto", {})  # the data's own flag, not answers
    assert [r for _, r in loaded] == [{"prompt": "Is it done?", "answer": "yes"}]
    with pytest.raises(DataError, match=r"trivia.jsonl:1: the accepted answers are an object with the fields "
                                        r"\['aliases', 'value'\], not texts"):
        sources.load_files(str(tmp_path / "trivia.jsonl"), "auto", {"answer": "answer.value", "accepted": "answer"})

    # eval: a reply giving any acceptable answer is right, by the task (strict and lenient) and by ftkit's metrics
    from ftkit.core.rows import acceptable
    from ftkit.scoring import rewards
    from ftkit.stages import rl

    test = [{"prompt": "Who wrote Hamlet?", "answer": "William Shakespeare",
             "accepted": ["William Shakespeare", "Shakespeare"]}, {"prompt": "Who wrote Faust?", "answer": "Goethe"}]
    scored = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"metrics": [
        "task", "lenient", "f1", "exact_match", "bleu"]})})
    per_example, _ = grading.score(scored, ["Shakespeare.", "Schiller"], [acceptable(r) for r in test], test)
    assert per_example["task"] == per_example["exact_match"] == [1.0, 0.0]
    assert per_example["f1"] == [1.0, 0.0]
    alone, _ = grading.score(scored, ["Shakespeare."], ["William Shakespeare"])
    assert alone["f1"][0] == pytest.approx(2 / 3)
    several = grading.score(scored, ["the cat sat on the mat"] * 2, [["a dog ran off", "the cat sat on the mat"],
                                                                        "a dog ran off"])[0]["bleu"]
    assert several[0] == pytest.approx(1.0) and several[1] < 0.1  # BLEU: the references as sacreBLEU's streams
    per_example, _ = grading.score(scored, ["It was Shakespeare", "Goethe, I think"], [acceptable(r) for r in test])
    assert per_example["task"] == [0.0, 0.0] and per_example["lenient"] == [1.0, 1.0]
    # GRPO's rewards see the same: every row gets the `accepted` column, the task reward takes any of them
    total, _ = rewards.score_replies(*rewards.build(cfg, tmp_path), test, ["shakespeare", "Goethe"])
    assert total == [1.0, 1.0]
    prompts = rl.prompt_dataset(test)
    assert prompts["accepted"] == [["William Shakespeare", "Shakespeare"], ["Goethe"]]
    assert prompts["answer"] == ["William Shakespeare", "Goethe"]


def test_class_numbers_become_their_names(tmp_path):
    # a hub dataset (here a local one, read the same way) and a Parquet file written by datasets name their classes
    # in the features; the rows hold numbers, and -1 is datasets' "no label" (GLUE's test splits)
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    reviews = datasets.Dataset.from_dict({"sentence": ["A joy.", "Dull.", "Unlabelled."], "label": [1, 0, -1]},
                                         features=features)
    (tmp_path / "hub").mkdir()
    reviews.to_parquet(str(tmp_path / "hub" / "train.parquet"))
    columns = {"prompt": "sentence", "answer": "label"}
    records = sources.read_hub(str(tmp_path / "hub"), None, "train", None)
    assert [r["label"] for _, r in records] == ["positive", "negative", None]
    drops = __import__("collections").Counter()
    rows = sources.normalize_records(records, "auto", columns, drops)
    assert [r["answer"] for _, r in rows] == ["positive", "negative", ""]
    cleaned = data.clean(rows, drops)
    assert [r["answer"] for r in cleaned] == ["positive", "negative"] and drops == {"empty_field": 1}
    loaded, _ = sources.load_files(str(tmp_path / "hub" / "train.parquet"), "auto", columns)
    assert [r["answer"] for _, r in loaded] == ["positive", "negative", ""]

    # multi-label (GoEmotions): a list of class numbers becomes its names, several acceptable answers
    emotions = datasets.Dataset.from_dict(
        {"text": ["Wow, thanks!"], "labels": [[2, 0]]},
        features=datasets.Features({"text": datasets.Value("string"),
                                    "labels": datasets.Sequence(datasets.ClassLabel(names=["joy", "anger", "fear"]))}))
    emotions.to_parquet(str(tmp_path / "emotions.parquet"))
    loaded, _ = sources.load_files(str(tmp_path / "emotions.parquet"), "auto", {"prompt": "text", "answer": "labels"})
    assert [r for _, r in loaded] == [{"prompt": "Wow, thanks!", "answer": "fear", "accepted": ["fear", "joy"]}]

    emotions.to_json(str(tmp_path / "emotions.jsonl"))
    loaded, _ = sources.load_files(str(tmp_path / "emotions.jsonl"), "auto", {"prompt": "text", "answer": "labels"},
                                   label_names={"0": "joy", "1": "anger", "2": "fear"})
    assert [r for _, r in loaded] == [{"prompt": "Wow, thanks!", "answer": "fear", "accepted": ["fear", "joy"]}]

    # an export that lost the names (to_json, to_csv) gets them back from data.label_names
    reviews.to_json(str(tmp_path / "reviews.jsonl"))
    pd.DataFrame({"sentence": ["A joy.", "Dull."], "label": [1, 0]}).to_csv(tmp_path / "reviews.csv", index=False)
    for name in ("reviews.jsonl", "reviews.csv"):
        plain, _ = sources.load_files(str(tmp_path / name), "auto", columns)
        assert [r["answer"] for _, r in plain][:2] == ["1", "0"]
    for names in (["negative", "positive"], {0: "negative", 1: "positive"}):
        cfg = recipe.load(recipe_file(tmp_path, FILES, data=dict(path="reviews.csv", test_size=1, label_names=names, columns=columns)))
        splits, _ = data.build_splits(cfg)
        assert sorted(r["answer"] for split in splits.values() for r in split) == ["negative", "positive"]
    with pytest.raises(DataError, match=r"reviews.jsonl:3: the answer '-1' is not a class of data.label_names "
                                        r"\(0, 1, or the names negative, positive\)"):
        sources.load_files(str(tmp_path / "reviews.jsonl"), "auto", columns, label_names={"0": "negative",
                                                                                           "1": "positive"})
    with pytest.raises(ValueError, match="'negative' names two classes"):
        recipe.load(recipe_file(tmp_path, FILES, data=dict(path="reviews.csv", label_names=["negative", "negative"])))


def test_multiple_choice_questions_list_their_options_and_are_answered_by_letter(tmp_path):
    import datasets

    # MMLU: choices and the right one's index, a ClassLabel named A to D
    mmlu = datasets.Dataset.from_dict(
        {"question": [f"Which planet is number {i} from the sun?" for i in range(40)],
         "subject": ["astronomy"] * 40,
         "choices": [["Mercury", "Venus", "Earth", "Mars"]] * 40, "answer": [i % 4 for i in range(40)]},
        features=datasets.Features({"question": datasets.Value("string"), "subject": datasets.Value("string"),
                                    "choices": datasets.Sequence(datasets.Value("string")),
                                    "answer": datasets.ClassLabel(names=["A", "B", "C", "D"])}))
    mmlu.to_parquet(str(tmp_path / "mmlu.parquet"))
    rows = [r for _, r in sources.load_files(str(tmp_path / "mmlu.parquet"), "auto", {})[0]]
    assert rows[2] == {"prompt": "Which planet is number 2 from the sun?\n\nA. Mercury\nB. Venus\nC. Earth\nD. Mars"
                                 "\n\nAnswer with the letter of the right option.", "answer": "C",
                       "question": "Which planet is number 2 from the sun?",
                       "options": {"A": "Mercury", "B": "Venus", "C": "Earth", "D": "Mars"}}
    cfg = recipe.load(recipe_file(tmp_path, FILES, data=dict(path="mmlu.parquet", test_size=12, split_by=None)))
    splits, figures = data.build_splits(cfg)
    assert set(figures["classes"]["names"]) == set("ABCD"), "letters are classes: eval reads them as such"
    assert sum(figures["classes"]["counts"]["train"].values()) == len(splits["train"]) == 28
    # ARC: options labelled by the data, the right one by its label
    write_jsonl(tmp_path / "arc.jsonl", [{"question": "Which is a gas?", "answerKey": "2",
                                          "choices": {"text": ["ice", "steam"], "label": ["1", "2"]}}])
    assert [r["answer"] for _, r in sources.load_files(str(tmp_path / "arc.jsonl"), "auto", {})[0]] == ["2"]
    # HellaSwag: a context, its endings and the right one's index as a string, mapped by name
    write_jsonl(tmp_path / "hs.jsonl", [{"ctx": "She picks up the bow and", "endings": ["eats it.", "plays."],
                                         "label": "1"}])
    loaded, _ = sources.load_files(str(tmp_path / "hs.jsonl"), "auto", {"prompt": "ctx", "choices": "endings"})
    assert loaded[0][1]["answer"] == "B" and "A. eats it.\nB. plays." in loaded[0][1]["prompt"]
    # the right one given by its text; a bad answer or bad choices name the row and the fix
    write_jsonl(tmp_path / "t.jsonl", [{"question": "Pick yes", "choices": ["no", "yes"], "answer": "yes"},
                                       {"question": "Pick", "choices": ["no", "yes"], "answer": 5}])
    with pytest.raises(DataError, match=r"t.jsonl:2: the answer 5 is not one of the 2 choices: give its index "
                                        r"\(0 to 1\), its label \(A, B\) or its text"):
        sources.load_files(str(tmp_path / "t.jsonl"), "auto", {})
    write_jsonl(tmp_path / "c.jsonl", [{"question": "Pick", "choices": "no, yes", "answer": 0}])
    with pytest.raises(DataError, match=r"c.jsonl:1: the choices must be a list of at least two texts"):
        sources.load_files(str(tmp_path / "c.jsonl"), "auto", {})


def test_options_in_columns_of_their_own_become_the_choices(tmp_path):
    # PIQA: a goal, one column per solution, the right one's index from 0; mapped through a recipe
    pd.DataFrame([{"goal": f"To open jar {i}", "sol1": "twist the lid", "sol2": "lick the lid", "label": i % 2}
                  for i in range(30)]).to_csv(tmp_path / "piqa.csv", index=False)
    cfg = recipe.load(recipe_file(tmp_path, FILES, data=dict(path="piqa.csv", test_size=10, split_by=None,
                      columns={"question": "goal", "choices": ["sol1", "sol2"]})))
    splits, figures = data.build_splits(cfg)
    row = next(r for r in splits["test"] + splits["train"] if r["question"] == "To open jar 3")
    assert row["answer"] == "B" and "A. twist the lid\nB. lick the lid" in row["prompt"]
    assert set(figures["classes"]["names"]) == {"A", "B"}
    # WinoGrande counts its options from 1: "2" (out of range from 0) tells, and "1" is then option A
    write_jsonl(tmp_path / "wino.jsonl", [{"sentence": "The cup beat the jug because _ was big.", "option1": "cup",
                                           "option2": "jug", "answer": a} for a in ("1", "2", "1")])
    loaded, _ = sources.load_files(str(tmp_path / "wino.jsonl"), "auto",
                                   {"question": "sentence", "choices": ["option1", "option2"]})
    assert [r["answer"] for _, r in loaded] == ["A", "B", "A"]
    # COPA: the premise mapped onto question wins over COPA's own `question` column (cause / effect)
    write_jsonl(tmp_path / "copa.jsonl", [{"premise": "The man broke his toe.", "choice1": "He dropped a hammer.",
                                           "choice2": "He got a hole in his sock.", "question": "cause", "label": 0}])
    loaded, _ = sources.load_files(str(tmp_path / "copa.jsonl"), "auto",
                                   {"question": "premise", "choices": ["choice1", "choice2"]})
    assert loaded[0][1]["question"] == "The man broke his toe." and loaded[0][1]["answer"] == "A"
    # fewer options than columns: the empty ones at the end are left out; one missing before the last names the row
    write_jsonl(tmp_path / "opts.jsonl", [{"q": "2 + 2?", "a": "3", "b": "4", "c": "", "answer": 1},
                                          {"q": "1 + 1?", "a": "2", "b": None, "c": "5", "answer": 0}])
    with pytest.raises(DataError, match=r"opts.jsonl:2: the option column 'b' is missing or empty here"):
        sources.load_files(str(tmp_path / "opts.jsonl"), "auto", {"question": "q", "choices": ["a", "b", "c"]})
    write_jsonl(tmp_path / "opts.jsonl", [{"q": "2 + 2?", "a": "3", "b": "4", "c": "", "answer": 1}])
    loaded, _ = sources.load_files(str(tmp_path / "opts.jsonl"), "auto", {"question": "q", "choices": ["a", "b", "c"]})
    assert loaded[0][1]["prompt"].count("\n") == 5 and loaded[0][1]["answer"] == "B"  # two options, not three
    # a list of columns for any other field, or of one column, is refused where the recipe says it
    for columns, message in (({"answer": ["a", "b"]}, "answer maps onto one column, not a list"),
                             ({"choices": ["a"]}, "names at least two, each once")):
        with pytest.raises(recipe.RecipeError, match=message):
            recipe.load(recipe_file(tmp_path, FILES, data=dict(path="opts.jsonl", columns=columns)))
