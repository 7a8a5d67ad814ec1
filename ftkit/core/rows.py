"""What a row of data is, and how a model sees it.

Every source is normalized (`ftkit.sources`) to rows

    {"system": str (optional), "history": [messages] (optional), "prompt": str, "answer": str,
     "tool_steps": [messages] (optional: tool calls and their results between the prompt and the answer),
     "rejected": str (preference pairs only), "label": bool (feedback only: the answer is desirable or not),
     "tests": [str] (code only: asserts a reply's code must pass), "extra": {column: value} (data.keep_columns),
     "accepted": [str] (optional: every acceptable answer, the reference first, where a source gives several),
     "question": str (multiple choice only: the question without its options, which the prompt lists),
     "options": {label: text} (multiple choice only: the options as lettered in the prompt)}

that is, the last user turn and the assistant answer the model must learn, with any earlier turns as history;
prompts for RL whose rewards need no reference answer have no "answer"; plain text (continued pre-training) is
{"text": str}. The data stage adds "tokens" (the length as trained) and, for
a mix, "source". The helpers here turn a row into chat messages, into the text the trainer sees through the
tokenizer's chat template, and into its trained tokens. No torch: the tokenizer is passed in.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data; the message names the file, the place and the fix."""


def fields(row: dict) -> tuple[str, ...]:
    """The text fields a row must fill: its text (plain text), else prompt and answer (and rejected)."""
    if "text" in row:
        return ("text",)
    if "answer" not in row:
        return ("prompt",)
    return ("prompt", "answer", "rejected") if "rejected" in row else ("prompt", "answer")


def kind(rows: list[dict]) -> str:
    """What the rows can train, for `recipe.data_problem`: "text", "prompts" (no answers), "pairs", "feedback" or
    "answers"."""
    if rows and "text" in rows[0]:
        return "text"
    if rows and "answer" not in rows[0]:
        return "prompts"
    if rows and all("label" in r for r in rows):
        return "feedback"
    return "pairs" if rows and all(r.get("rejected") for r in rows) else "answers"


# reference answers this long (median, in words) are sentences: scored, and rewarded, by their overlap with the reply
SENTENCE_WORDS = 5


def sentences(rows: list[dict]) -> bool:
    """Whether the rows' answers are sentences rather than a label, a name or a number: a median of SENTENCE_WORDS
    words or more. Exact match calls nearly every good sentence wrong, so eval headlines them by ROUGE-L and GRPO's
    `task` reward is ROUGE-L too.

    >>> sentences([{"answer": "Return the inverse hyperbolic tangent of x."}]), sentences([{"answer": "Paris"}])
    (True, False)
    """
    lengths = sorted(len(str(r.get("answer", "")).split()) for r in rows)
    return bool(lengths) and lengths[len(lengths) // 2] >= SENTENCE_WORDS


def imitated(rows: list[dict]) -> list[dict]:
    """The rows whose answer a model should learn to give (SFT) or be scored against (eval): all but feedback
    labelled undesirable.

    >>> [r["answer"] for r in imitated([{"answer": "a", "label": True}, {"answer": "b", "label": False}, {"answer": "c"}])]
    ['a', 'c']
    """
    return [r for r in rows if r.get("label", True)]


def scored_against(row: dict) -> str:
    """What a reply to the row is scored against (the rewards' `answer`; eval reads `acceptable`): its unit tests, one
    per line, when it carries `tests` (code), else its verified answer where its demonstration is a deliberate
    mistake (data.teacher_errors), else its reference answer ("" for a prompt without one).

    >>> scored_against({"answer": "73", "verified": "83"}), scored_against({"answer": "83"})
    ('83', '83')
    """
    return "\n".join(row["tests"]) if row.get("tests") else row.get("verified", row.get("answer", ""))


def acceptable(row: dict) -> str | list[str]:
    """What eval scores a reply against: every acceptable answer where the row has several (a reply giving any of
    them is right), else `scored_against`.

    >>> acceptable({"answer": "Paris", "accepted": ["Paris", "City of Paris"]}), acceptable({"answer": "4"})
    (['Paris', 'City of Paris'], '4')
    """
    return row["accepted"] if row.get("accepted") else scored_against(row)


def reward_columns(rows: list[dict]) -> list[dict]:
    """The columns a reward receives for each row besides the completions and prompts: `answer` (what a reply is
    scored against, where the row has one), `accepted` (every acceptable answer, where any row has several: the
    built-in rewards take a reply giving any of them) and each data.keep_columns column by its name. Every row gets
    the same columns (TRL hands them over as Arrow columns).

    >>> reward_columns([{"prompt": "Hi", "answer": "4", "extra": {"topic": "sums"}}]), reward_columns([{"prompt": "Hi"}])
    ([{'answer': '4', 'topic': 'sums'}], [{}])
    >>> [c["accepted"] for c in reward_columns([{"answer": "a", "accepted": ["a", "b"]}, {"answer": "c"}])]
    [['a', 'b'], ['c']]
    """
    several = any(r.get("accepted") for r in rows)
    return [{**({"answer": scored_against(r)} if "answer" in r else {}),
             **({"accepted": r.get("accepted") or [scored_against(r)]} if several and "answer" in r else {}),
             **r.get("extra", {})} for r in rows]


def messages(row: dict) -> list[dict]:
    """The chat messages a model sees for a row: system prompt, earlier turns, the user prompt, then the tool calls
    made and their results since it (`tool_steps`), if any."""
    system = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return (system + list(row.get("history", [])) + [{"role": "user", "content": row["prompt"]}]
            + list(row.get("tool_steps", [])))


def context(row: dict) -> str:
    """The conversation a row asks about (earlier turns and the prompt) as one text. The system prompt is left
    out: datasets share one, and it says nothing about leaked questions; so are a multiple-choice question's
    options, which other questions share. Plain text: the text."""
    if "text" in row:
        return row["text"]
    return "\n".join([m["content"] for m in row.get("history", [])] + [row.get("question") or row["prompt"]]
                     + [m["content"] for m in row.get("tool_steps", [])])


def trained_text(row: dict, tokenizer) -> str:
    """A row as the trainer sees it: chat template over its messages and answer; plain text with EOS appended; a
    prompt without an answer as the model is shown it, up to the generation prompt."""
    if "text" in row:
        return row["text"] + tokenizer.eos_token
    if "answer" not in row:
        return tokenizer.apply_chat_template(messages(row), tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(messages(row) + [{"role": "assistant", "content": row["answer"]}],
                                         tokenize=False)


def reply_budget(rows: list[dict], tokenizer) -> dict:
    """How many tokens a reply may take when the recipe says `auto` (eval.max_new_tokens, rl.max_completion_length):
    room for the longest answer the rows hold (any acceptable one) with a quarter to spare and a few tokens for an
    end of turn, at least 8 — a reply the format asks for is never cut, and a model that rambles is stopped near the
    length the task needs. Rows without answers (prompts scored by rewards) get 64. Returns the longest answer's
    tokens (None without answers) and the budget."""
    texts = [a for r in rows for a in [r.get("answer"), *(r.get("accepted") or [])] if isinstance(a, str) and a]
    if not texts:
        return {"longest_answer": None, "tokens": 64}
    longest = max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return {"longest_answer": longest, "tokens": max(8, -(-longest * 5 // 4) + 4)}


def with_lengths(cfg, rows: list[dict], tokenizer):
    """The recipe with eval.max_new_tokens and rl.max_completion_length as run: an `auto` one fitted to the rows'
    answers (`reply_budget`), a number as the recipe gives it."""
    budget = None
    update = {}
    for section, field in (("eval", "max_new_tokens"), ("rl", "max_completion_length")):
        if getattr(getattr(cfg, section), field) == "auto":
            budget = budget or reply_budget(rows, tokenizer)["tokens"]
            update[section] = getattr(cfg, section).model_copy(update={field: budget})
    return cfg.model_copy(update=update) if update else cfg


def token_lengths(rows: list[dict], tokenizer) -> list[int]:
    """Tokens of each row as trained. Measured once, in one batch, and kept on the row as "tokens"."""
    todo = [r for r in rows if "tokens" not in r]
    if todo:
        ids = tokenizer([trained_text(r, tokenizer) for r in todo], add_special_tokens=False)["input_ids"]
        for row, row_ids in zip(todo, ids):
            row["tokens"] = len(row_ids)
    return [r["tokens"] for r in rows]


def conversation(row: dict) -> list[dict]:
    """A row's whole conversation: `messages` and then its answer as the last assistant turn."""
    return messages(row) + [{"role": "assistant", "content": row["answer"]}]


def common_prefix(seqs: list[list[int]]) -> int:
    """How many leading tokens every sequence shares.

    >>> common_prefix([[1, 2, 3, 4], [1, 2, 3, 9, 9], [1, 2]])
    2
    """
    n = 0
    for column in zip(*seqs):
        if any(t != column[0] for t in column):
            break
        n += 1
    return n


def _template_ids(tokenizer, turns: list[dict], **kwargs) -> list[int]:
    return list(tokenizer.apply_chat_template(turns, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def labelled(row: dict, tokenizer) -> tuple[list[int], list[bool]]:
    """A row's token ids as SFT trains them, and which of them carry loss: every assistant turn of a conversation
    (its earlier answers too, each with the template's end of turn) and none of the system, user or tool text; plain
    text whole (with EOS); a prompt without an answer (RL) not at all.

    Each assistant turn's tokens are found from the chat template alone: they start where the conversation up to the
    turn, rendered with the generation prompt, stops being a prefix of the whole conversation, and end where the
    conversation rendered up to and with the turn does. Tokens, not characters, are compared, so a template that
    renders an earlier turn otherwise than the whole conversation does trains only what the two share. Raises
    DataError when no token would be trained.
    """
    if "text" in row:
        ids = tokenizer(trained_text(row, tokenizer), add_special_tokens=False)["input_ids"]
        return ids, [True] * len(ids)
    if "answer" not in row:
        ids = _template_ids(tokenizer, messages(row), add_generation_prompt=True)
        return ids, [False] * len(ids)
    turns = conversation(row)
    ids = _template_ids(tokenizer, turns)
    trained = [False] * len(ids)
    for k, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        start = common_prefix([_template_ids(tokenizer, turns[:k], add_generation_prompt=True), ids])
        end = len(ids) if k == len(turns) - 1 else common_prefix([_template_ids(tokenizer, turns[:k + 1]), ids])
        trained[start:end] = [True] * max(0, end - start)
    if not any(trained):
        raise DataError(f"the chat template of {tokenizer.name_or_path!r} does not put the answer after the "
                        f"generation prompt for {row['prompt'][:60]!r}: every label would be masked; use a model "
                        "whose template renders the assistant turn last")
    return ids, trained


def trained_tokens(row: dict, tokenizer) -> list[tuple[list[str], bool]]:
    """A row as SFT sees it, in runs of tokens that carry loss (True) or not (False), in order (`labelled`)."""
    ids, trained = labelled(row, tokenizer)
    runs: list[tuple[list[int], bool]] = []
    for token, flag in zip(ids, trained):
        if runs and runs[-1][1] == flag:
            runs[-1][0].append(token)
        else:
            runs.append(([token], flag))
    return [(tokenizer.convert_ids_to_tokens(run), flag) for run, flag in runs]


def tools_unrendered(rows: list[dict], tokenizer) -> str | None:
    """Why the chat template cannot train the rows' tool calls, or None (also where no row has any): the first
    conversation with tool calls is rendered, and each call's function name and each tool result must show."""
    row = next((r for r in rows if any(m["role"] == "tool" or m.get("tool_calls")
                                       for m in [*r.get("history", []), *r.get("tool_steps", [])])), None)
    if row is None:
        return None
    try:
        text = tokenizer.apply_chat_template(conversation(row), tokenize=False)
    except Exception as exc:  # e.g. a template that allows only user and assistant turns in turn
        return (f"the chat template of {tokenizer.name_or_path!r} fails on a conversation with tool calls "
                f"({type(exc).__name__}: {str(exc)[:120]}): use a model whose template supports tools, or leave the "
                "conversations with tool calls out of the data")
    for message in conversation(row):
        for call in message.get("tool_calls") or []:
            name = (call.get("function") or {}).get("name") if isinstance(call, dict) else None
            if not name or name not in text:
                return (f"the chat template of {tokenizer.name_or_path!r} does not render tool calls (the call to "
                        f"{name!r} in {row['prompt'][:60]!r} is missing from the text the model would see): use a "
                        "model whose template supports tools (Qwen2.5-Instruct, Llama 3.1 Instruct, Mistral "
                        "Instruct v0.3), or leave the conversations with tool calls out of the data")
        if message["role"] == "tool" and message["content"] not in text:
            return (f"the chat template of {tokenizer.name_or_path!r} does not render tool results (the result "
                    f"{message['content'][:40]!r} is missing): use a model whose template supports tools, or leave "
                    "the conversations with tool calls out of the data")
    return None


def turns_that_fit(row: dict, tokenizer, max_length: int) -> dict | None:
    """A conversation over `max_length` tokens cut to its longest beginning of whole turns that fits, ending at an
    assistant turn (which becomes the row's answer); None when not even its first answer fits. Never half a turn.

    >>> class Chars:  # a stand-in tokenizer: one token per character of "role:content;" turns
    ...     def apply_chat_template(self, turns, tokenize, return_dict, add_generation_prompt=False):
    ...         return {"input_ids": list("".join(f"{t['role']}:{t['content']};" for t in turns))}
    >>> row = {"history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    ...        "prompt": "and?", "answer": "a long answer"}
    >>> turns_that_fit(row, Chars(), 30)
    {'prompt': 'hi', 'answer': 'yo'}
    >>> turns_that_fit(row, Chars(), 10) is None
    True
    """
    turns = conversation(row)
    first = 1 if turns[0]["role"] == "system" else 0
    for k in range(len(turns) - 3, first, -1):  # the last assistant turn before the final one, back to the first
        if turns[k]["role"] != "assistant" or turns[k - 1]["role"] != "user":
            continue
        if len(_template_ids(tokenizer, turns[:k + 1])) <= max_length:
            kept = {key: value for key, value in row.items()
                    if key not in ("history", "prompt", "answer", "accepted", "tokens", "rejected", "verified")}
            return {**kept, **({"history": turns[first:k - 1]} if k - 1 > first else {}),
                    "prompt": turns[k - 1]["content"], "answer": turns[k]["content"]}
    return None


def ends_with_end_of_turn(row: dict, tokenizer) -> bool:
    """Whether the trained tokens include the end-of-turn/EOS token, so the model learns to stop."""
    trained = [run for run, flag in trained_tokens(row, tokenizer) if flag]
    return bool(trained) and tokenizer.eos_token in trained[-1]


def shared_system(rows: list[dict]) -> str | None:
    """The system prompt every test prompt has, or None where they differ or have none.

    >>> shared_system([{"system": "Be brief."}, {"system": "Be brief."}]), shared_system([{"system": "A"}, {}])
    ('Be brief.', None)
    """
    systems = {r.get("system") for r in rows}
    return systems.pop() if len(systems) == 1 else None
