"""Where the data comes from: local files (JSONL, JSON, CSV, TSV, Parquet; globs allowed) and Hugging Face Hub
datasets, read and normalized from any of the formats below to ftkit's rows (`ftkit.rows`).

Formats: prompt/completion, question/answer, multiple choice (a question, its options and the right one), Alpaca
(instruction, input, output; also Dolly's instruction, context, response), chat messages (role/content, the content
a string or a list of text parts), ShareGPT conversations (from/value), preference pairs (prompt, chosen, rejected;
or chosen and rejected conversations that share their beginning, as in Anthropic's HH), prompts alone (for RL whose
rewards need no reference answer) and plain text; `data.columns` maps other column names onto these, and
`data.keep_columns` carries more of them along on each row (as `extra`, for a reward to read). Every problem raises
`DataError` naming the file, the line and the fix.
"""

from __future__ import annotations

import glob
import json
import re
import string
from collections import Counter
from pathlib import Path

from ftkit import answers
from ftkit.recipe import template_fields
from ftkit.rows import DataError

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
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}
# beside a text or prompt column alone, a column by one of these names is what should be answered, not noise
TARGETS = ("label", "labels", "target", "answer", "output", "response", "completion", "summary", "sentiment", "class",
           "category")
TRANSCRIPT_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")  # Anthropic HH: "\n\nHuman: ...\n\nAssistant: ..."


# ---------------------------------------------------------------- reading files


def expand(pattern: str) -> list[Path]:
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(f"{pattern}: no file matches; check data.path (relative paths start at the recipe's folder)")
    return files


def _text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); re-save the file as UTF-8") from None


def read_records(path: Path) -> list[tuple[str, dict]]:
    """(place, record) pairs from one file; place is 'file:line' (JSONL, CSV) or 'file item N' / 'file row N'."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        records = []
        for number, line in enumerate(_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: malformed JSON ({exc.msg} at column {exc.colno}); "
                                "fix or delete this line") from None
    elif suffix == ".json":
        try:
            loaded = json.loads(_text(path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}); a .json file must hold one list of "
                            "objects (use .jsonl for one object per line)") from None
        if isinstance(loaded, dict) and isinstance(loaded.get("data"), list):
            loaded = loaded["data"]
        if not isinstance(loaded, list):
            raise DataError(f"{path}: expected a list of objects, found a {type(loaded).__name__}")
        records = [(f"{path} item {i}", r) for i, r in enumerate(loaded)]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise DataError(f"{path}: cannot be read as Parquet ({exc})") from None
        records = [(f"{path} row {i}", r) for i, r in enumerate(table.to_pylist())]
        if b"huggingface" in (table.schema.metadata or {}):  # written by datasets: its ClassLabel names travel along
            from datasets import Features

            records = named_classes(records, class_names(Features.from_arrow_schema(table.schema)))
    elif suffix in (".csv", ".tsv"):
        import pandas as pd

        try:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                                encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); re-save the file as UTF-8") from None
        except Exception as exc:
            raise DataError(f"{path}: cannot be read as {suffix[1:].upper()} ({exc})") from None
        records = [(f"{path}:{i + 2}", r) for i, r in enumerate(frame.to_dict(orient="records"))]
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet")
    for place, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{place}: expected an object with named fields, found {type(record).__name__}")
    return records


# ---------------------------------------------------------------- formats


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
    """A conversation -> row; None when its turn order is invalid (dropped and counted by the caller)."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DataError(f"{place}: the conversation must be a list of objects with {role_key!r} and {content_key!r}")
    turns = []
    for i, message in enumerate(messages):
        if role_key not in message or content_key not in message:
            raise DataError(f"{place}: message {i} has keys {sorted(message)}; each message needs "
                            f"{role_key!r} and {content_key!r}")
        role = ROLES.get(str(message[role_key]).lower())
        if role is None:
            raise DataError(f"{place}: message {i} has role {message[role_key]!r}; allowed roles: "
                            f"{', '.join(ROLES)}; fix the role or set data.format")
        turns.append({"role": role, "content": _content(message[content_key], place, i)})
    system = turns.pop(0)["content"] if turns and turns[0]["role"] == "system" else None
    expected = ["user", "assistant"] * (len(turns) // 2)
    if len(turns) < 2 or len(turns) % 2 or [t["role"] for t in turns] != expected:
        return None
    row = {"prompt": turns[-2]["content"], "answer": turns[-1]["content"]}
    if system is not None:
        row["system"] = system
    if len(turns) > 2:
        row["history"] = turns[:-2]
    return row


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


def normalize(record: dict, fmt: str, place: str, first_index: int = 0) -> dict | str:
    """One raw record -> row, or the reason it is dropped: "turn_order" (a conversation that is not user then
    assistant turns, ending with the assistant), "ends_with_user" (one that waits for the assistant's reply) or
    "identical_pair" (a preference pair whose answers are the same)."""
    fields = FIELDS[fmt]
    if fmt == "question_answer" and "question" not in record and "prompt" in record:
        fields = ("prompt", "answer")  # ftkit's own rows: prompt + answer
    if fmt == "preference" and "prompt" not in record and {"chosen", "rejected"} <= set(record):
        return _implicit_pair(record, place)
    if fmt == "multiple_choice":  # the question may be a prompt; ARC's answer is answerKey, HellaSwag's a label
        fields = ("question" if "question" in record or "prompt" not in record else "prompt", "choices",
                  next((k for k in CHOICE_ANSWERS if k in record), "answer"))
    if fmt == "alpaca":  # Dolly's names too; the instruction may be missing where an input says it all
        fields = (next((k for k in ("instruction", "input", "context") if k in record), "instruction"),
                  "output" if "output" in record or "response" not in record else "response")
    missing = [f for f in fields if f not in record]
    if missing:
        raise DataError(f"{place}: missing column {missing[0]!r} for format {fmt!r}; the columns are "
                        f"{sorted(record)}; map yours with data.columns: {{{missing[0]}: <column>}}")
    if fmt in ("messages", "sharegpt"):
        column, role, content = ("messages", "role", "content") if fmt == "messages" else \
            ("conversations", "from", "value")
        row = _messages_to_row(record[column], place, role, content)
        if row is None:  # a conversation waiting for the assistant's reply is a prompt, not a demonstration
            waiting = _messages_to_row([*record[column], {role: "assistant", content: ""}], place, role, content)
            return "ends_with_user" if waiting is not None else "turn_order"
        return row
    if fmt == "text":
        return {"text": record["text"]}
    if fmt == "prompts":
        row = {"prompt": record["prompt"]}
    elif fmt == "feedback":
        row = {"prompt": record["prompt"], "answer": _answer_text(record["completion"], place),
               "label": _label(record["label"], place)}
    elif fmt == "preference":
        chosen, rejected = (_answer_text(record[k], place) for k in ("chosen", "rejected"))
        if isinstance(chosen, str) and chosen.strip() and chosen.strip() == str(rejected).strip():
            return "identical_pair"
        row = {"prompt": record["prompt"], "answer": chosen, "rejected": rejected}
    elif fmt == "multiple_choice":
        row = multiple_choice(record[fields[0]], record["choices"], record[fields[2]], place, first_index)
    elif fmt == "alpaca":
        instruction, extra = record.get("instruction"), record.get("input", record.get("context"))
        parts = [p for p in (instruction, extra) if isinstance(p, str) and (p.strip() or p is instruction)]
        row = {"prompt": "\n\n".join(parts), "answer": _answer_text(record[fields[1]], place)}
    else:
        first, second = fields
        row = {"prompt": record[first], "answer": _answer_text(record[second], place)}
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


def _value_kind(value) -> str | None:
    """A kept column's value as a type a dataset column can hold (None for a missing value, which any type allows).

    >>> [_value_kind(v) for v in (3, 2.5, "3", True, None, [1])]
    ['number', 'number', 'string', 'bool', None, 'list']
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


_ABSENT = object()


def _nested(record: dict, path: str):
    """A column, or a field inside one by a dotted path (`answers.text`, SQuAD's); _ABSENT where there is none.

    >>> _nested({"answers": {"text": ["Paris"]}}, "answers.text"), _nested({"a": 1}, "a.b") is _ABSENT
    (['Paris'], True)
    """
    if path in record:
        return record[path]
    value = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _ABSENT
        value = value[key]
    return value


def _filled(record: dict, template: str, place: str) -> str:
    """A data.columns template with this record's values in place of its columns; "" where one of them is missing
    or empty, so that the row is dropped and counted (empty_field) rather than trained on with a hole in it.

    >>> _filled({"Country": "Aruba", "info": {"region": "Americas"}}, "{Country} ({info.region})?", "x")
    'Aruba (Americas)?'
    >>> _filled({"Country": "", "info": {}}, "{Country}?", "x")
    ''
    """
    values = {}
    for name in template_fields(template):
        value = _nested(record, name)
        if value is _ABSENT:
            raise DataError(f"{place}: the template {template!r} names {name!r}, which is not a column here; the "
                            f"columns are {sorted(record)}: fix the template, or fill this row")
        if isinstance(value, (dict, list)):
            inside = f"an object with the fields {sorted(value)}" if isinstance(value, dict) else "a list"
            raise DataError(f"{place}: the template {template!r} names {name!r}, which holds {inside}, not text; "
                            f"name a text inside it, e.g. {{{name}.<field>}}")
        if value is None or not str(value).strip():
            return ""
        values[name] = str(value)
    return "".join(text + (values[name] if name is not None else "")
                   for text, name, _, _ in string.Formatter().parse(template))


def _mapped(record: dict, columns: dict, named: list[str], place: str) -> dict:
    """A record with data.columns applied: each ftkit field takes its column's value (a mapped column wins over an
    unmapped one of the same name, as COPA's `question` when its premise is mapped onto question), and a list of
    option columns becomes the list of choices; empty options at the end (a question with fewer options than the
    columns) are left out.

    >>> _mapped({"goal": "Open a jar", "sol1": "twist", "sol2": "lick", "label": 0},
    ...         {"question": "goal", "choices": ["sol1", "sol2"]}, ["goal", "sol1", "sol2"], "x")
    {'label': 0, 'question': 'Open a jar', 'choices': ['twist', 'lick']}
    """
    out = {k: v for k, v in record.items() if k not in columns and k not in named}
    for name, path in columns.items():
        if not isinstance(path, list):
            value = _filled(record, path, place) if template_fields(path) else _nested(record, path)
            if value is not _ABSENT:  # else the format's check names the missing column
                out[name] = value
            continue
        values = [_nested(record, column) for column in path]
        while values and values[-1] in (None, "", _ABSENT):
            values.pop()
        missing = [c for c, v in zip(path, values) if v is _ABSENT or v is None]
        if missing:
            raise DataError(f"{place}: the option column {missing[0]!r} is missing or empty here, before the "
                            f"last option; fill it, or drop this row")
        out[name] = values
    return out


def normalize_records(records: list[tuple[str, dict]], fmt: str, columns: dict[str, str],
                      drops: Counter, group: str | None = None, keep=(),
                      label_names: dict[str, str] | None = None) -> list[tuple[str, dict]]:
    """Rename mapped columns, detect the format from the first record, normalize every record to a row; with
    `group` (data.split_by naming a column) the row keeps that column's value as its "group", each column named
    in `keep` (data.keep_columns) goes along in the row's "extra", and with `label_names` (data.label_names) an
    answer given as a class number becomes its name."""
    if not records:
        return []
    if columns:
        # a mapped column leaves the record under its own name; a template's columns stay (a reward may keep one)
        named = [c for path in columns.values() if not template_fields(path)
                 for c in (path if isinstance(path, list) else [path])]
        used = named + [c for path in columns.values() for c in template_fields(path) or []]
        absent = [c for c in used if _nested(records[0][1], c) is _ABSENT]
        if absent:
            raise DataError(f"{records[0][0]}: data.columns names {absent[0]!r}, which is not a column here; "
                            f"the columns are {sorted(records[0][1])} (a field inside one: <column>.<field>)")
        records = [(p, _mapped(r, columns, named, p)) for p, r in records]
    if "accepted" not in (columns or {}):  # a column of the data's own by that name counts only as a list of texts
        records = [(p, {k: v for k, v in r.items() if k != "accepted" or _plain_list(v)}) for p, r in records]
    if group and columns:
        group = {v: k for k, v in columns.items() if isinstance(v, str)}.get(group, group)
    source_format = detect_format(records[0][1], records[0][0]) if fmt == "auto" else fmt
    first_index = counted_from(records) if source_format == "multiple_choice" else 0
    if first_index:
        print(f"{records[0][0]}: the answers count the options from 1 (none is 0, and some name the last option): "
              "answer 1 is option A")
    rows, seen_kinds = [], {}
    for place, record in records:
        row = normalize(record, source_format, place, first_index)
        if isinstance(row, str):
            drops[row] += 1
            continue
        if group:
            if record.get(group) in (None, ""):
                raise DataError(f"{place}: data.split_by names the column {group!r}, which this row lacks or leaves "
                                f"empty; the columns are {sorted(record)}: fill it, or split_by: ngram")
            row["group"] = str(record[group])
        if keep:
            absent = [c for c in keep if c not in record]
            if absent:
                raise DataError(f"{place}: data.keep_columns names {absent[0]!r}, which this row lacks; the columns "
                                f"are {sorted(record)}: add it, or remove it from data.keep_columns")
            row["extra"] = {c: record[c] for c in keep}
            for column in keep:  # one type per column: the RL stage hands the columns to TRL as Arrow columns
                kind_here = _value_kind(record[column])
                first_kind = seen_kinds.setdefault(column, (kind_here, place)) if kind_here else None
                if first_kind and first_kind[0] != kind_here:
                    raise DataError(f"{place}: data.keep_columns column {column!r} holds a {kind_here} here and a "
                                    f"{first_kind[0]} at {first_kind[1]}; give it one type in every row (e.g. all "
                                    "strings)")
        for field in ("prompt", "answer", "rejected", "system", "text"):
            if isinstance(row.get(field), (dict, list)):  # never the object's repr as text
                value, column = row[field], (columns or {}).get(field, field)
                texts = [k for k, v in value.items() if isinstance(v, str) or isinstance(v, list) and v
                         and all(isinstance(x, str) for x in v)] if isinstance(value, dict) else []
                what = f"an object with the fields {sorted(value)}" if isinstance(value, dict) else "a list"
                raise DataError(f"{place}: the {field} is {what}, not text; name the text inside it with a dotted "
                                f"path, e.g. data.columns: {{{field}: {column}.{texts[0] if texts else '<field>'}}}")
            if field in row and not isinstance(row[field], str):
                row[field] = "" if row[field] is None else str(row[field])
        if label_names and row.get("answer"):
            row["answer"] = label_name(row["answer"].strip(), label_names, place)
            if row.get("accepted"):  # a multi-label row's numbers
                row["accepted"] = list(dict.fromkeys(label_name(a, label_names, place) for a in row["accepted"]))
        rows.append((place, row))
    return rows


def load_files(pattern: str, fmt: str, columns: dict[str, str], group: str | None = None,
               keep=(), label_names: dict[str, str] | None = None) -> tuple[list[tuple[str, dict]], Counter]:
    """Read and normalize every file matching `pattern`; returns ((place, row) pairs, drop counts)."""
    rows, drops = [], Counter()
    for path in expand(pattern):
        rows += normalize_records(read_records(path), fmt, columns, drops, group, keep, label_names)
    return rows, drops


def class_names(features) -> dict[str, list[str]]:
    """Column -> class names, for the columns a `datasets` Features declares as ClassLabel, or a list of them
    (multi-label: GoEmotions' labels), in a hub dataset or a Parquet file written by `datasets`: there the data holds
    class numbers and the names live in the features."""
    from datasets import ClassLabel

    def labels(feature):
        inner = getattr(feature, "feature", None)  # a List (Sequence) of ClassLabel
        return feature if isinstance(feature, ClassLabel) else inner if isinstance(inner, ClassLabel) else None

    return {column: list(labels(f).names) for column, f in (features or {}).items() if labels(f) is not None}


def named_classes(records: list[tuple[str, dict]], names: dict[str, list[str]]) -> list[tuple[str, dict]]:
    """Records with each ClassLabel column's class numbers replaced by their names (in a list of them too: a
    multi-label row's labels become several acceptable answers); -1, datasets' "no label" (GLUE's test splits),
    becomes None, so such a row counts as one without its answer.

    >>> named_classes([("x", {"text": "fine", "label": 1}), ("y", {"text": "?", "label": -1})],
    ...               {"label": ["negative", "positive"]})
    [('x', {'text': 'fine', 'label': 'positive'}), ('y', {'text': '?', 'label': None})]
    >>> named_classes([("x", {"labels": [2, 0]})], {"labels": ["joy", "anger", "fear"]})
    [('x', {'labels': ['fear', 'joy']})]
    """
    def name(value, classes):
        if isinstance(value, list):
            return [n for n in (name(v, classes) for v in value) if n is not None]
        if isinstance(value, int) and not isinstance(value, bool):
            return classes[value] if 0 <= value < len(classes) else None if value == -1 else value
        return value

    if not names:
        return records
    return [(p, {k: name(v, names[k]) if k in names else v for k, v in r.items()}) for p, r in records]


def label_name(answer: str, names: dict[str, str], place: str) -> str:
    """An answer given as a class number, by data.label_names (number -> name); an answer that is already one of
    the names stays.

    >>> names = {"0": "negative", "1": "positive"}
    >>> label_name("1", names, "x"), label_name("1.0", names, "x"), label_name("negative", names, "x")
    ('positive', 'positive', 'negative')
    """
    if answer in names:
        return names[answer]
    if answer in names.values():
        return answer
    try:
        number = float(answer)
    except ValueError:
        number = None
    if number is not None and number.is_integer() and str(int(number)) in names:
        return names[str(int(number))]
    raise DataError(f"{place}: the answer {answer!r} is not a class of data.label_names ({', '.join(names)}, or the "
                    f"names {', '.join(sorted(set(names.values())))}); fix the row, or add its class to label_names")


def read_hub(dataset_id: str, subset: str | None, split_name: str, revision: str | None) -> list[tuple[str, dict]]:
    """Records of a Hugging Face Hub dataset split, through `datasets`."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(dataset_id, subset, split=split_name, revision=revision)
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(f"hub dataset {dataset_id!r} (subset {subset!r}, split {split_name!r}) could not be loaded: "
                        f"{type(exc).__name__}: {detail}. If the Hugging Face hub cannot be reached from here, save "
                        "the data where it can (load_dataset(...).to_json('data.jsonl')), copy the file over and set "
                        "data.path to it (and data.hub to null)") from None
    return named_classes([(f"{dataset_id}[{split_name}] row {i}", dict(r)) for i, r in enumerate(dataset)],
                         class_names(dataset.features))


def sources(data_cfg) -> dict[str, float]:
    """The recipe's file and hub sources with their weights: data.mix, or the one data.path / data.hub."""
    if data_cfg.mix:
        return dict(data_cfg.mix)
    return {data_cfg.path if data_cfg.path else f"hub:{data_cfg.hub}": 1.0}


def load_source(name: str, data_cfg, own_test: bool = False) -> tuple[list[tuple[str, dict]], Counter]:
    """Normalized rows of one source (a file pattern or hub:<id>); its own test split when `own_test`."""
    group = data_cfg.split_by if data_cfg.split_by != "ngram" else None
    if name.startswith("hub:"):
        split_name = data_cfg.test_split if own_test else data_cfg.split
        records = read_hub(name.removeprefix("hub:"), data_cfg.subset, split_name, data_cfg.revision)
        drops = Counter()
        return normalize_records(records, data_cfg.format, data_cfg.columns, drops, group,
                                 data_cfg.keep_columns, data_cfg.label_names), drops
    return load_files(data_cfg.test_path if own_test else name, data_cfg.format, data_cfg.columns, group,
                      data_cfg.keep_columns, data_cfg.label_names)
