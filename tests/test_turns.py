"""Multi-turn conversations: every assistant turn trained and nothing else, checked token by token against the
rendered template (the test model's ChatML and ftkit's default); cut at whole turns; tool calls where the template
renders them, refused where it does not."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from ftkit.core.rows import DataError, conversation, labelled, trained_tokens, turns_that_fit
from ftkit.models.loader import DEFAULT_CHAT_TEMPLATE
from ftkit.sources.formats import _messages_to_row
from tests.conftest import build_tokenizer

CHAT = [{"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"},
        {"role": "user", "content": "And times 4?"}, {"role": "assistant", "content": "20, since 5 x 4 = 20."},
        {"role": "user", "content": "Minus 7?"}, {"role": "assistant", "content": "13"}]
# ChatML that renders tool calls and tool results, as tool-capable templates (Qwen2.5's) do
TOOL_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "{% for c in m.get('tool_calls', []) %}<tool_call>{{ c['function']['name'] }}"
                 "{{ c['function']['arguments'] | tojson }}</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TOOLS = [{"role": "user", "content": "Weather in Oslo?"},
         {"role": "assistant", "content": "", "tool_calls": [
             {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
         {"role": "tool", "name": "get_weather", "content": "{\"celsius\": -3}"},
         {"role": "assistant", "content": "It is -3 C in Oslo."}]


def tokenizer_with(template: str | None):
    tokenizer = build_tokenizer()
    tokenizer.chat_template = template or DEFAULT_CHAT_TEMPLATE
    return tokenizer


@pytest.mark.parametrize("template", [None, "model"], ids=["ftkit-default", "chatml"])
def test_labels_cover_exactly_the_assistant_turns(template):
    tokenizer = tokenizer_with(None if template is None else build_tokenizer().chat_template)
    row = _messages_to_row(CHAT, "chat.jsonl:1", "role", "content")
    assert row["prompt"] == "Minus 7?" and row["answer"] == "13" and len(row["history"]) == 4
    ids, trained = labelled(row, tokenizer)
    assert ids == tokenizer.apply_chat_template(conversation(row), tokenize=True, return_dict=True)["input_ids"]
    # the trained runs, decoded, are each assistant turn's content and the template's end of turn, in order
    runs = [tokenizer.decode(tokenizer.convert_tokens_to_ids(t)) for t, flag in trained_tokens(row, tokenizer) if flag]
    end = "<|im_end|>\n"
    assert runs == [f"{m['content']}{end}" for m in CHAT if m["role"] == "assistant"], runs
    # and the untrained ones hold every system and user message, none of them in a trained run
    masked = "".join(tokenizer.decode(tokenizer.convert_tokens_to_ids(t))
                     for t, flag in trained_tokens(row, tokenizer) if not flag)
    for message in CHAT:
        if message["role"] != "assistant":
            assert message["content"] in masked and not any(message["content"] in r for r in runs)
    assert sum(trained) == sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in runs)


def test_the_trainer_gets_those_labels(tiny_model_dir):
    from ftkit.training.trainer import to_dataset

    tokenizer = build_tokenizer()
    row = _messages_to_row(CHAT, "chat.jsonl:1", "role", "content")
    example = to_dataset([row], tokenizer)[0]
    ids, trained = labelled(row, tokenizer)
    assert example["input_ids"] == ids
    assert example["labels"] == [t if flag else -100 for t, flag in zip(ids, trained)]
    assert sum(label != -100 for label in example["labels"]) > len(tokenizer("13<|im_end|>\n")["input_ids"]) * 3


def test_a_long_conversation_is_cut_at_whole_turns_or_dropped():
    from ftkit.stages.data import limit_length

    tokenizer = build_tokenizer()
    row = _messages_to_row(CHAT, "chat.jsonl:1", "role", "content")
    whole = len(labelled(row, tokenizer)[0])
    two_turns = len(tokenizer.apply_chat_template(CHAT[:5], tokenize=True, return_dict=True)["input_ids"])
    cut = turns_that_fit(row, tokenizer, whole - 1)
    assert cut["answer"] == "20, since 5 x 4 = 20." and cut["prompt"] == "And times 4?" and cut["system"] == \
        "Answer briefly." and len(cut["history"]) == 2
    assert len(labelled(cut, tokenizer)[0]) == two_turns < whole
    drops, figures = Counter(), Counter()
    kept = limit_length([dict(row), {**row, "answer": "13 " * 200}], tokenizer, two_turns, "truncate", drops, figures)
    assert [r["answer"] for r in kept] == ["20, since 5 x 4 = 20."] * 2 and figures["cut_to_whole_turns"] == 2
    assert all(r["tokens"] <= two_turns for r in kept)
    first_only = len(tokenizer.apply_chat_template(CHAT[:3], tokenize=True, return_dict=True)["input_ids"])
    assert limit_length([dict(row)], tokenizer, first_only - 1, "truncate", drops, Counter()) == []
    assert drops["too_long"] == 1  # not even the first answer fits: dropped and counted, never half an answer
    assert limit_length([dict(row)], tokenizer, whole - 1, "drop", drops, Counter()) == [] and drops["too_long"] == 2


def test_turn_order_and_tool_calls_are_read_in_the_openai_form():
    row = _messages_to_row(TOOLS, "t.jsonl:1", "role", "content")
    assert row["prompt"] == "Weather in Oslo?" and row["answer"] == "It is -3 C in Oslo."
    assert [m["role"] for m in row["tool_steps"]] == ["assistant", "tool"]
    assert row["tool_steps"][0]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert _messages_to_row(TOOLS[:2] + TOOLS[3:], "t.jsonl:1", "role", "content") is None  # a call without a result
    assert _messages_to_row([TOOLS[0], TOOLS[2], TOOLS[3]], "t.jsonl:1", "role", "content") is None  # result uncalled


def test_tool_calls_are_trained_where_the_template_renders_them():
    from ftkit.core.rows import tools_unrendered

    tokenizer = tokenizer_with(TOOL_TEMPLATE)
    row = _messages_to_row(TOOLS, "t.jsonl:1", "role", "content")
    assert tools_unrendered([row], tokenizer) is None
    runs = [tokenizer.decode(tokenizer.convert_tokens_to_ids(t)) for t, flag in trained_tokens(row, tokenizer) if flag]
    assert runs == ['<tool_call>get_weather{"city": "Oslo"}</tool_call><|im_end|>\n', "It is -3 C in Oslo.<|im_end|>\n"]
    problem = tools_unrendered([row], tokenizer_with(None))
    assert "does not render tool calls" in problem and "get_weather" in problem


def test_a_template_without_tools_is_refused_in_the_data_stage(tmp_path, tiny_model_dir):
    from ftkit import recipe
    from ftkit.models.loader import load_tokenizer
    from ftkit.stages import data
    from tests.conftest import recipe_file

    path = tmp_path / "chat.jsonl"
    asked = [[{**TOOLS[0], "content": f"Weather in city {i}?"}, *TOOLS[1:]] for i in range(30)]
    chats = [[{**CHAT[1], "content": f"What is 2 + {i}?"}, *CHAT[2:]] for i in range(30)]
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in asked + chats))
    cfg = recipe.load(recipe_file(tmp_path, data={"path": "chat.jsonl", "test_size": 5}, stages=["data", "sft"],
                                  model={"id": str(tiny_model_dir)}))
    with pytest.raises(DataError, match=r"chat.jsonl.*does not render tool calls.*get_weather"):
        data.build_splits(cfg, load_tokenizer(str(tiny_model_dir)))


def test_a_template_that_raises_on_tool_turns_is_refused_with_the_reason():
    from ftkit.core.rows import tools_unrendered

    strict = ("{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
              "{{ m['content'] }}{% endfor %}")
    row = _messages_to_row(TOOLS, "t.jsonl:1", "role", "content")
    problem = tools_unrendered([row], tokenizer_with(strict))
    assert "fails on a conversation with tool calls" in problem and "must alternate" in problem
