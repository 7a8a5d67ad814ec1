"""The formats a record can come in, and one function per format turning a record into ftkit's row
(`ftkit.core.rows`): prompt/completion, question/answer, multiple choice, Alpaca, chat messages, ShareGPT,
preference pairs, feedback, prompts alone and plain text. `detect_format` tells them apart by their columns."""

from __future__ import annotations

import re

from ftkit.core.rows import DataError
from ftkit.scoring import answers

FORMATS = ("prompt_completion", "question_answer", "multiple_choice", "alpaca", "messages", "sharegpt", "preference",
           "feedback", "prompts", "text")
FIELDS = {"prompt_completion": ("prompt", "completion"), "question_answer": ("question", "answer"),
          "alpaca": ("instruction", "output"), "messages": ("messages",), "sharegpt": ("conversations",),
          "preference": ("prompt", "chosen", "rejected"), "feedback": ("prompt", "completion", "label"),
          "prompts": ("prompt",), "text": ("text",), "multiple_choice": ("question", "choices", "answer")}
CHOICE_ANSWERS = ("answer", "answerKey", "label")  # MMLU, ARC, HellaSwag
CHOOSE = "Answer with the letter of the right option."
LABELS = {True: ("true", "1", "yes", "up", "good", "desirable", "thumbs_up", "👍"),
          False: ("false", "0", "no", "down", "bad", "undesirable", "thumbs_down", "👎")}
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant",
         "tool": "tool"}
# beside a text or prompt column alone, a column by one of these names is what should be answered, not noise
TARGETS = ("label", "labels", "target", "answer", "output", "response", "completion", "summary", "sentiment", "class",
           "category")
TRANSCRIPT_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")  # Anthropic HH: "\n\nHuman: ...\n\nAssistant: ..."


def detect_format(columns, place: str) -> str:
    keys = set(columns)
    for name in ("messages", "sharegpt", "preference", "feedback"):
        if set(FIELDS[name]) <= keys:
            return name
    if {"chosen", "rejected"} <= keys:
        return "preference"  # no prompt column: the prompt is the conversations' shared beginning
    if keys & {"instruction", "input"} and keys & {"output", "response"}:
        return "alpaca"
    if "choices" in keys and keys & {"question", "prompt"} and keys & set(CHOICE_ANSWERS):
        return "multiple_choice"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if {"question", "answer"} <= keys or {"prompt", "answer"} <= keys:
        return "question_answer"
    for alone, what, mapping, use in (("prompt", "prompts", "answer: {}", "RL with rewards that need no answer"),
                                      ("text", "text", "prompt: text, answer: {}", "continued pre-training")):
        if alone not in keys:
            continue
        target = next((c for c in TARGETS if c in keys), None)
        if target:
            raise DataError(f"{place}: a {alone!r} column and a {target!r} column: is {target!r} what the model should "
                            f"answer? Then map it: data.columns: {{{mapping.format(target)}}}; to use the {alone}s "
                            f"alone ({use}), set data.format: {what}")
        return what
    raise DataError(f"{place}: cannot tell the format from the columns {sorted(keys)}; set data.format (one of "
                    f"{', '.join(FORMATS)}) or map your columns, e.g. data.columns: {{prompt: <column>, answer: <column>}}")


def _content(content, place: str, i: int) -> str:
    """A message's text: a string, or a list of parts (OpenAI's `[{"type": "text", "text": ...}]`) whose text parts
    are joined by a newline; an image or other non-text part is refused, as nothing here can train on it."""
    if content is None:
        return ""
    if not isinstance(content, list):
        return str(content)
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text" and "text" in part:
            texts.append("" if part["text"] is None else str(part["text"]))
        else:
            what = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise DataError(f"{place}: message {i} has a {what!r} part; ftkit trains on text only: drop that part "
                            "(or the row), or keep only parts of type 'text'")
    return "\n".join(texts)


def _messages_to_row(messages, place: str, role_key: str, content_key: str) -> dict | None:
    """A conversation -> row; None when its turn order is invalid (dropped and counted by the caller).

    After an optional system prompt, user and assistant take turns, ending with the assistant. An assistant turn may
    call tools (OpenAI's `tool_calls`, content optional), answered by one or more `tool` messages before the assistant
    goes on. The last user message is the row's prompt, what came before it its history, the tool calls and results
    after it its `tool_steps`, and the last assistant message its answer."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DataError(f"{place}: the conversation must be a list of objects with {role_key!r} and {content_key!r}")
    turns = []
    for i, message in enumerate(messages):
        calls = message.get("tool_calls") or None
        if role_key not in message or (content_key not in message and not calls):
            raise DataError(f"{place}: message {i} has keys {sorted(message)}; each message needs "
                            f"{role_key!r} and {content_key!r}")
        role = ROLES.get(str(message[role_key]).lower())
        if role is None:
            raise DataError(f"{place}: message {i} has role {message[role_key]!r}; allowed roles: "
                            f"{', '.join(ROLES)}; fix the role or set data.format")
        turn = {"role": role, "content": _content(message.get(content_key), place, i)}
        if calls and role == "assistant":
            turn["tool_calls"] = calls
        turn.update({k: message[k] for k in ("name", "tool_call_id") if role == "tool" and k in message})
        turns.append(turn)
    system = turns.pop(0)["content"] if turns and turns[0]["role"] == "system" else None
    if not _in_turn(turns):
        return None
    last_user = max(i for i, t in enumerate(turns) if t["role"] == "user")
    row = {"prompt": turns[last_user]["content"], "answer": turns[-1]["content"]}
    if system is not None:
        row["system"] = system
    if last_user:
        row["history"] = turns[:last_user]
    if turns[last_user + 1:-1]:
        row["tool_steps"] = turns[last_user + 1:-1]
    return row


def _in_turn(turns: list[dict]) -> bool:
    """User and assistant in turn from a user message to a final assistant answer (no tool call); a tool call is
    followed by tool results and then the assistant again.

    >>> u, a, t = {"role": "user"}, {"role": "assistant"}, {"role": "tool"}
    >>> call = {"role": "assistant", "tool_calls": [{}]}
    >>> _in_turn([u, a, u, a]), _in_turn([u, call, t, t, a]), _in_turn([u, a, a]), _in_turn([u, call, a])
    (True, True, False, False)
    """
    if len(turns) < 2 or turns[0]["role"] != "user" or turns[-1]["role"] != "assistant" or "tool_calls" in turns[-1]:
        return False
    for before, after in zip(turns, turns[1:]):
        calls = before["role"] == "assistant" and "tool_calls" in before
        allowed = {"user": ("assistant",), "tool": ("tool", "assistant")}.get(before["role"], ("tool",) if calls
                                                                                 else ("user",))
        if after["role"] not in allowed:
            return False
    return True


def _answer_text(value, place: str):
    """An answer: a string, a conversation (UltraFeedback's chosen, TRL's conversational completion) whose last
    message is the answer, or a list of acceptable answers (SQuAD's `answers.text`), of which the first is the
    reference (an empty list: no answer). Any other object is returned as it is, for the caller to refuse.

    >>> _answer_text(["Paris", "paris"], "x"), _answer_text([], "x"), _answer_text(4, "x")
    ('Paris', '', '4')
    """
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        return _content(value[-1]["content"], place, len(value) - 1)
    if _plain_list(value):
        return str(value[0]) if value else ""
    if isinstance(value, (dict, list)):
        return value
    return "" if value is None else str(value)


def _plain_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value)


def _accepted(answer: str, *values) -> list[str] | None:
    """Every acceptable answer, the reference first, from lists of alternatives (SQuAD's `answers.text`, a mapped
    `accepted` column; a lone string counts as one), duplicates after `answers.normalize` left out; None when there is
    no answer besides the reference.

    >>> _accepted("Paris", ["Paris", "paris", "City of Paris"]), _accepted("4", ["4"]), _accepted("JFK", None, "Kennedy")
    (['Paris', 'City of Paris'], None, ['JFK', 'Kennedy'])
    """
    found, seen = [answer], {answers.normalize(answer)}
    for value in values:
        single = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        for alternative in value if _plain_list(value) else [value] if single else []:
            text = str(alternative)
            if text.strip() and answers.normalize(text) not in seen:
                found.append(text)
                seen.add(answers.normalize(text))
    return found if len(found) > 1 else None


def _transcript(text: str, place: str, column: str) -> list[dict]:
    """An Anthropic HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") -> role/content messages.

    >>> _transcript("\\n\\nHuman: Hi?\\n\\nAssistant: Hello.", "x", "chosen")
    [{'role': 'user', 'content': 'Hi?'}, {'role': 'assistant', 'content': 'Hello.'}]
    """
    pieces = TRANSCRIPT_TURN.split(text)
    if len(pieces) < 3 or pieces[0].strip():
        raise DataError(f"{place}: there is no prompt column, so {column!r} must be a conversation: a list of "
                        "role/content messages, or a transcript of 'Human:' and 'Assistant:' turns; this one starts "
                        f"{text[:60]!r}. Add the prompt (data.columns: {{prompt: <column>}}) or set data.format")
    return [{"role": "user" if who == "Human" else "assistant", "content": said.strip()}
            for who, said in zip(pieces[1::2], pieces[2::2])]


def _implicit_pair(record: dict, place: str) -> dict | str:
    """chosen and rejected conversations (message lists or HH transcripts) sharing everything but their last turn ->
    a preference row whose prompt, history and system are that shared beginning; "turn_order" or "unshared_prompt"
    when they do not."""
    conversations = []
    for column in ("chosen", "rejected"):
        value = record[column]
        turns = _transcript(value, place, column) if isinstance(value, str) else value
        conversations.append(_messages_to_row(turns, place, "role", "content"))
    chosen, rejected = conversations
    if chosen is None or rejected is None:
        return "turn_order"
    if {k: v for k, v in chosen.items() if k != "answer"} != {k: v for k, v in rejected.items() if k != "answer"}:
        return "unshared_prompt"
    if chosen["answer"].strip() and chosen["answer"].strip() == rejected["answer"].strip():
        return "identical_pair"
    return {**chosen, "rejected": rejected["answer"]}


def _label(value, place: str) -> bool:
    """A feedback label: desirable (True) or not, from a bool, 1/0 or a word such as up/down or good/bad.

    >>> _label("thumbs_up", "x"), _label(0, "x"), _label(" Bad ", "x")
    (True, False, False)
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    for label, words in LABELS.items():
        if text in words:
            return label
    raise DataError(f"{place}: label {value!r} is neither desirable nor undesirable; use true/false (also 1/0, "
                    "up/down, good/bad)")


def _fields(record: dict, fmt: str) -> tuple[str, ...]:
    """The columns a format reads in this record (some formats take one of several names)."""
    if fmt == "question_answer" and "question" not in record and "prompt" in record:
        return ("prompt", "answer")  # ftkit's own rows: prompt + answer
    if fmt == "multiple_choice":  # the question may be a prompt; ARC's answer is answerKey, HellaSwag's a label
        return ("question" if "question" in record or "prompt" not in record else "prompt", "choices",
                next((k for k in CHOICE_ANSWERS if k in record), "answer"))
    if fmt == "alpaca":  # Dolly's names too; the instruction may be missing where an input says it all
        return (next((k for k in ("instruction", "input", "context") if k in record), "instruction"),
                "output" if "output" in record or "response" not in record else "response")
    return FIELDS[fmt]


def _from_chat(record: dict, fields: tuple, place: str, first_index: int) -> dict | str:
    column = fields[0]
    role, content = ("role", "content") if column == "messages" else ("from", "value")
    row = _messages_to_row(record[column], place, role, content)
    if row is None:  # a conversation waiting for the assistant's reply is a prompt, not a demonstration
        waiting = _messages_to_row([*record[column], {role: "assistant", content: ""}], place, role, content)
        return "ends_with_user" if waiting is not None else "turn_order"
    return row


def _from_text(record: dict, fields: tuple, place: str, first_index: int) -> dict:
    return {"text": record["text"]}


def _from_prompts(record: dict, fields: tuple, place: str, first_index: int) -> dict:
    return {"prompt": record["prompt"]}


def _from_feedback(record: dict, fields: tuple, place: str, first_index: int) -> dict:
    return {"prompt": record["prompt"], "answer": _answer_text(record["completion"], place),
            "label": _label(record["label"], place)}


def _from_preference(record: dict, fields: tuple, place: str, first_index: int) -> dict | str:
    chosen, rejected = (_answer_text(record[k], place) for k in ("chosen", "rejected"))
    if isinstance(chosen, str) and chosen.strip() and chosen.strip() == str(rejected).strip():
        return "identical_pair"
    return {"prompt": record["prompt"], "answer": chosen, "rejected": rejected}


def _from_multiple_choice(record: dict, fields: tuple, place: str, first_index: int) -> dict:
    return multiple_choice(record[fields[0]], record["choices"], record[fields[2]], place, first_index)


def _from_alpaca(record: dict, fields: tuple, place: str, first_index: int) -> dict:
    instruction, extra = record.get("instruction"), record.get("input", record.get("context"))
    parts = [p for p in (instruction, extra) if isinstance(p, str) and (p.strip() or p is instruction)]
    return {"prompt": "\n\n".join(parts), "answer": _answer_text(record[fields[1]], place)}


def _from_pair(record: dict, fields: tuple, place: str, first_index: int) -> dict:
    first, second = fields
    return {"prompt": record[first], "answer": _answer_text(record[second], place)}


CONVERTERS = {"prompt_completion": _from_pair, "question_answer": _from_pair, "multiple_choice": _from_multiple_choice,
              "alpaca": _from_alpaca, "messages": _from_chat, "sharegpt": _from_chat, "preference": _from_preference,
              "feedback": _from_feedback, "prompts": _from_prompts, "text": _from_text}
WHOLE = ("messages", "sharegpt", "text")  # formats whose converter gives the finished row


def normalize(record: dict, fmt: str, place: str, first_index: int = 0) -> dict | str:
    """One raw record -> row, or the reason it is dropped: "turn_order" (a conversation that is not user then
    assistant turns, ending with the assistant), "ends_with_user" (one that waits for the assistant's reply) or
    "identical_pair" (a preference pair whose answers are the same)."""
    if fmt == "preference" and "prompt" not in record and {"chosen", "rejected"} <= set(record):
        return _implicit_pair(record, place)
    fields = _fields(record, fmt)
    missing = [f for f in fields if f not in record]
    if missing:
        raise DataError(f"{place}: missing column {missing[0]!r} for format {fmt!r}; the columns are "
                        f"{sorted(record)}; map yours with data.columns: {{{missing[0]}: <column>}}")
    row = CONVERTERS[fmt](record, fields, place, first_index)
    if fmt in WHOLE or isinstance(row, str):
        return row
    return _completed(row, record, fmt, fields, place)


def _completed(row: dict, record: dict, fmt: str, fields: tuple, place: str) -> dict | str:
    """A converted row with what every format may carry: acceptable answers, a system prompt, and a prompt given
    as a conversation (TRL's conversational form: its earlier turns become the history)."""
    if isinstance(record.get("accepted"), dict) or isinstance(record.get("accepted"), list) and not _plain_list(
            record["accepted"]):
        inside = f"an object with the fields {sorted(record['accepted'])}" if isinstance(record["accepted"], dict) \
            else "a list of objects"
        raise DataError(f"{place}: the accepted answers are {inside}, not texts; name the list of texts inside with a "
                        "dotted path, e.g. data.columns: {accepted: <column>.<field>}")
    if fmt in ("alpaca", "question_answer", "prompt_completion") and isinstance(row["answer"], str):
        several = _accepted(row["answer"], record[fields[-1]], record.get("accepted"))
        if several:  # a list of acceptable answers (the first is the reference) or an `accepted` column
            row["accepted"] = several
    if isinstance(record.get("system"), str) and record["system"].strip():
        row["system"] = record["system"]
    if isinstance(row["prompt"], list):  # TRL's conversational prompt: messages ending with the user's turn
        opening = row["prompt"][0] if row["prompt"] else {}
        role, content = ("from", "value") if isinstance(opening, dict) and "from" in opening else ("role", "content")
        asked = _messages_to_row(row["prompt"] + [{role: "assistant", content: ""}], place, role, content)
        if asked is None:
            return "turn_order"
        row.update({k: v for k, v in asked.items() if k != "answer"})
    return row


def multiple_choice(question, choices, answer, place: str, first_index: int = 0) -> dict:
    """A multiple-choice question -> a row: the prompt lists the options, lettered (or labelled as the data labels
    them: ARC's {"text": [...], "label": [...]}), and asks for the letter; the answer is the right option's letter.
    The right one may be given by its index (from 0: MMLU, HellaSwag; from `first_index` 1: WinoGrande), its letter
    or label (ARC), or its text. The
    row keeps the question alone too: the options repeat across questions, and the contamination check compares
    questions.

    >>> row = multiple_choice("2 + 2?", ["3", "4"], 1, "x")
    >>> print(row["prompt"]); row["answer"]
    2 + 2?
    <BLANKLINE>
    A. 3
    B. 4
    <BLANKLINE>
    Answer with the letter of the right option.
    'B'
    >>> [multiple_choice("?", {"text": ["no", "yes"], "label": ["1", "2"]}, a, "x")["answer"] for a in ("2", "yes")]
    ['2', '2']
    """
    labels = None
    if isinstance(choices, dict) and "text" in choices:
        choices, labels = choices["text"], choices.get("label")
    if isinstance(choices, list):  # options that are numbers (AQuA-like answers) are their text
        choices = [str(c) if isinstance(c, (int, float)) and not isinstance(c, bool) else c for c in choices]
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)):
        raise DataError(f"{place}: the choices must be a list of at least two texts (or {{text: [...], label: "
                        f"[...]}}), not {str(choices)[:80]!r}")
    if len(choices) > 26 and labels is None:
        raise DataError(f"{place}: {len(choices)} choices; ftkit letters at most 26 (A to Z)")
    labels = [str(label).strip() for label in labels] if labels else [chr(ord("A") + i) for i in range(len(choices))]
    if len(labels) != len(choices) or len(set(labels)) < len(labels):
        raise DataError(f"{place}: the choices' labels {labels} must name each of the {len(choices)} choices once")
    given = answer.strip() if isinstance(answer, str) else answer
    if given in labels:
        right = given
    elif isinstance(given, str) and given.upper() in labels:
        right = given.upper()
    elif (isinstance(given, int) and not isinstance(given, bool)) or (isinstance(given, str) and given.isdigit()):
        index = int(given) - first_index
        right = labels[index] if 0 <= index < len(labels) else None
    else:
        right = next((label for label, text in zip(labels, choices) if isinstance(given, str)
                      and text.strip() == given), None)
    if right is None:
        raise DataError(f"{place}: the answer {answer!r} is not one of the {len(choices)} choices: give its index "
                        f"({first_index} to {len(choices) - 1 + first_index}), its label ({', '.join(labels)}) or its text")
    options = "\n".join(f"{label}. {text.strip()}" for label, text in zip(labels, choices))
    return {"prompt": f"{str(question).strip()}\n\n{options}\n\n{CHOOSE}", "answer": right,
            "question": str(question).strip(), "options": {label: text.strip() for label, text in zip(labels, choices)}}


def counted_from(records: list[tuple[str, dict]]) -> int:
    """Where a multiple-choice file's answer indices start: 1 when no answer is 0 and some answer is its row's
    number of options (WinoGrande's "1"/"2" for two options, out of range if counted from 0); else 0 (MMLU,
    HellaSwag, PIQA). Labelled options (ARC's "1"-"4") are answered by label and count for neither.

    >>> counted_from([("a", {"choices": ["x", "y"], "answer": "2"}), ("b", {"choices": ["x", "y"], "answer": "1"})])
    1
    >>> counted_from([("a", {"choices": ["x", "y"], "label": 1}), ("b", {"choices": ["x", "y"], "label": 0})])
    0
    """
    seen = set()
    for _, record in records:
        choices = record.get("choices")
        given = next((record[k] for k in CHOICE_ANSWERS if k in record), None)
        if not isinstance(choices, list) or isinstance(given, bool):
            continue
        if isinstance(given, str) and given.strip().isdigit():
            given = int(given.strip())
        if isinstance(given, int):
            seen.add("zero" if given == 0 else "last" if given == len(choices) else "inside")
    return 1 if "last" in seen and "zero" not in seen else 0
