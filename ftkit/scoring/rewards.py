"""GRPO rewards: built-in ones by name, and a user's own function named `file.py:function` in the recipe.

Every reward has TRL's signature: the completions plus the dataset's columns (e.g. `answer`) and TRL's extras
(`prompts`, `completion_ids`, `trainer_state`, ...) as keyword arguments; it returns one float per completion.
A user's reward is written like this, in a file next to the recipe:

    def brevity(completions, answer, **kwargs):
        return [1.0 if len(text(c)) <= len(a) + 2 else 0.0 for c, a in zip(completions, answer)]

(`ftkit.scoring.tasks.common.completion_text` turns a chat completion into its text.) The recipe names it with a weight:
`rl.rewards: {task: 1.0, rewards.py:brevity: 0.5}`.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import math
import re
from pathlib import Path

from ftkit.core.rows import messages, reward_columns, sentences
from ftkit.scoring import answers, metrics, tasks
from ftkit.scoring.tasks.common import completion_text

log = logging.getLogger(__name__)


class RewardError(ValueError):
    """A reward that cannot be used; the message names it and says the fix."""


def numeric_match(completions, answer, tolerance: float = 0.0, extract: str = "last_number", pattern: str | None = None,
                  accepted: list[list[str]] | None = None, **_) -> list[float]:
    """1.0 when the number read from the completion where `extract` says (`ftkit.scoring.answers`: by default its last
    number, where worked solutions end) is the reference's (or one of the `accepted` answers') within `tolerance`,
    else 0.0.

    >>> numeric_match(["42", "about 41.5", "none"], answer=["#### 42", "42", "42"], tolerance=0.5)
    [1.0, 1.0, 0.0]
    >>> numeric_match(["3 * 4 = 12, so 12 - 5 = 7"], answer=["7"]), numeric_match(["7 then 9"], ["7"], extract="first_number")
    ([1.0], [1.0])
    >>> numeric_match(["it is 12", "it is 14"], answer=["12", "12"], accepted=[["12", "twelve"], ["12", "13"]])
    [1.0, 0.0]
    """
    scores = []
    for completion, references in zip(completions, accepted or answer, strict=True):
        got = answers.numbers(answers.extract(completion_text(completion), extract, pattern) or "")
        wanted = [answers.numbers(answers.reference(r, extract, pattern)) for r in answers.alternatives(references)]
        scores.append(float(bool(got) and any(want and answers.same(got[-1], want[-1], tolerance) for want in wanted)))
    return scores


def rouge_l(completions, answer: list[str], accepted: list[list[str]] | None = None, **_) -> list[float]:
    """ROUGE-L F-measure of each completion against its reference answer (the best of the `accepted` ones): a reward
    that rises as a sentence comes nearer the reference, where exact match is 0 for nearly every reply.

    >>> [round(r, 3) for r in rouge_l(["Return the tangent of x.", "No idea.", "x"], ["Return the tangent of x."] * 3)]
    [1.0, 0.0, 0.333]
    """
    return [metrics.rouge_l(completion_text(c), r) for c, r in zip(completions, accepted or answer, strict=True)]


def think_format(completions, **_) -> list[float]:
    """1.0 for a reply laid out as reasoning, then the answer: `<think>...</think>` with something in it, followed
    by a non-empty answer; 0.0 otherwise.

    >>> think_format(["<think>3 * 4 = 12</think> 12", "12", "<think></think>12", "<think>so</think>"])
    [1.0, 0.0, 0.0, 0.0]
    """
    layout = re.compile(r"\s*<think>\s*\S.*?</think>\s*\S.*", re.DOTALL)
    return [float(layout.fullmatch(completion_text(c)) is not None) for c in completions]


def code_tests(completions, answer: list[str], **_) -> list[float]:
    """The share of its example's unit tests (one assert per line, as `rows.scored_against` gives them) that each
    completion's Python passes, run in `ftkit.scoring.sandbox`: a reply that loops, hogs memory or reaches outside scores
    what it passed before it was stopped, and the run goes on.

    >>> code_tests(["def f(x):\\n    return 2 * x", "while True: pass"], ["assert f(2) == 4\\nassert f(0) == 0"] * 2)
    [1.0, 0.0]
    """
    return tasks.Code().reward(completions, answer)


def format_match(completions, pattern: str, **_) -> list[float]:
    """1.0 when the whole completion (stripped) matches the regular expression `pattern`.

    >>> format_match(["<answer>7</answer>", "7"], pattern=r"<answer>\\d+</answer>")
    [1.0, 0.0]
    """
    compiled = re.compile(pattern, re.DOTALL)
    return [float(compiled.fullmatch(completion_text(c).strip()) is not None) for c in completions]


def length_penalty(completions, target: int = 200, **_) -> list[float]:
    """0.0 up to `target` characters, falling linearly to -1.0 at twice the target (and staying there).

    >>> length_penalty(["a" * 10, "a" * 15, "a" * 40], target=10)
    [0.0, -0.5, -1.0]
    """
    return [0.0 - min(1.0, max(0, len(completion_text(c)) - target) / target) for c in completions]


def json_valid(completions, **_) -> list[float]:
    """1.0 when the completion (without a ``` fence) parses as JSON.

    >>> json_valid(['{"a": 1}', '```json\\n[1, 2]\\n```', "{a: 1}"])
    [1.0, 1.0, 0.0]
    """
    scores = []
    for completion in completions:
        text = completion_text(completion).strip()
        text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
        try:
            json.loads(text)
            scores.append(1.0)
        except ValueError:
            scores.append(0.0)
    return scores


# ---------------------------------------------------------------- user rewards


def _split_reference(name: str) -> tuple[str, str] | None:
    """'rewards.py:brevity' -> ('rewards.py', 'brevity'); None for a built-in name."""
    if ":" not in name:
        return None
    path, _, function = name.rpartition(":")
    return path, function


def load_user_reward(reference: str, base_dir: str | Path = "."):
    """Import `file.py:function` (the file relative to `base_dir`) and check TRL can call it."""
    path_text, function = _split_reference(reference)
    path = Path(base_dir) / path_text
    if not path.is_file():
        raise RewardError(f"reward {reference!r}: no file {path}; put the file next to the recipe or fix the path")
    spec = importlib.util.spec_from_file_location(f"ftkit_user_rewards_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise RewardError(f"reward {reference!r}: importing {path} failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        defined = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise RewardError(f"reward {reference!r}: {path} defines no function {function!r}; its functions: "
                          f"{', '.join(defined) or 'none'}")
    check_signature(fn, reference)
    return fn


def check_signature(fn, name: str) -> None:
    """TRL calls a reward as fn(prompts=..., completions=..., completion_ids=..., <columns>=..., trainer_state=...)."""
    parameters = inspect.signature(fn).parameters.values()
    names = {p.name for p in parameters}
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    if "completions" not in names or not takes_kwargs:
        shown = f"{getattr(fn, '__name__', name)}{inspect.signature(fn)}"
        raise RewardError(f"reward {name!r}: {shown} cannot take TRL's arguments; a reward takes `completions` and "
                          "**kwargs (the dataset's columns such as `answer`, and `prompts`), e.g. "
                          "def my_reward(completions, answer, **kwargs)")


def check_names(names, base_dir: str | Path) -> list[str]:
    """Problems with the rewards a recipe names (used at validation time; user files are imported and checked)."""
    problems = []
    for name in names:
        if _split_reference(name) is None:
            if name not in BUILT_IN:
                problems.append(f"rl.rewards: unknown reward {name!r}; built-in rewards: {', '.join(BUILT_IN)}, "
                                "or name your own as file.py:function")
            continue
        try:
            load_user_reward(name, base_dir)
        except RewardError as exc:
            problems.append(str(exc))
    return problems


# ---------------------------------------------------------------- the recipe's rewards, checked at run time


def checked(fn, name: str, **options):
    """Wrap a reward so that an exception, a wrong length, None or NaN stops training with a message naming it
    (TRL would otherwise turn None into NaN and carry on)."""

    def reward(completions, **columns):
        try:
            values = fn(completions, **options, **columns)
        except Exception as exc:
            raise RewardError(f"reward {name!r} raised {type(exc).__name__}: {exc}") from exc
        values = list(values) if values is not None else []
        if len(values) != len(completions):
            raise RewardError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions; "
                              "return one float per completion")
        for value in values:
            if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
                raise RewardError(f"reward {name!r} returned {value!r}; a reward must be a number for every "
                                  "completion (never None or NaN)")
        return [float(v) for v in values]

    reward.__name__ = name
    return reward


def short_name(name: str) -> str:
    """A reward's name in logs and tables: the recipe key, a user file shortened to `file.py:function`."""
    return f"{Path(name.rpartition(':')[0]).name}:{name.rpartition(':')[2]}" if ":" in name else name


def _extraction(cfg, default: str) -> dict:
    """Where a reply's answer is (`ftkit.scoring.answers`): the task's own, `data.extract`, or `default` for a whole reply."""
    task = tasks.for_data(cfg.data)
    mode = default if task.extract == "exact" else task.extract
    return {"extract": mode, "pattern": getattr(task, "pattern", None)}


# the built-in rewards by name: each gives the function and its options from the recipe
BUILT_IN = {
    "task": lambda cfg: (tasks.for_data(cfg.data).reward, {}),
    "exact_match": lambda cfg: (tasks.ReferenceAnswer("exact").reward, {}),
    "rouge_l": lambda cfg: (rouge_l, {}),
    "numeric_match": lambda cfg: (numeric_match, {"tolerance": cfg.data.numeric_tolerance,
                                                  **_extraction(cfg, default="last_number")}),
    "format": lambda cfg: (format_match, {"pattern": cfg.rl.format_regex}),
    "length_penalty": lambda cfg: (length_penalty, {"target": cfg.rl.length_target}),
    "json_valid": lambda cfg: (json_valid, {}),
    "think_format": lambda cfg: (think_format, {}),
    "code_tests": lambda cfg: (code_tests, {}),
}


def score_replies(functions, weights, rows: list[dict], replies: list[str]) -> tuple[list[float], dict[str, list]]:
    """Each reply's weighted total reward and each reward's values, called as GRPO calls them: the replies as chat
    completions, with each row's prompt messages and reward columns (`rows.reward_columns`).

    >>> total, each = score_replies([json_valid, think_format], [1.0, 0.5], [{"prompt": "a"}] * 2, ['{}', 'no'])
    >>> total, each["think_format"]
    ([1.0, 0.0], [0.0, 0.0])
    """
    columns = reward_columns(rows)
    keys = {k for c in columns for k in c}
    kwargs = {k: [c.get(k) for c in columns] for k in keys}
    completions = [[{"role": "assistant", "content": reply}] for reply in replies]
    each = {f.__name__: f(completions, prompts=[messages(r) for r in rows], **kwargs) for f in functions}
    total = [sum(w * v for w, v in zip(weights, values)) for values in zip(*each.values())]
    return total, each


def build(cfg, base_dir: str | Path, rows: list[dict] = ()) -> tuple[list, list[float]]:
    """The recipe's GRPO reward functions (checked, named by `short_name`) and their weights. `task` on answers
    from files or the hub that are sentences (`rows.sentences` of `rows`, read as whole replies) is ROUGE-L, the
    score eval headlines them by, and is named so."""
    functions, weights = [], []
    for name, weight in cfg.rl.rewards.items():
        if name == "task" and cfg.data.whole_replies and sentences(rows):
            name = "rouge_l"
            log.info("the answers are sentences: the task reward is ROUGE-L against them, as eval scores them")
        fn, options = BUILT_IN[name](cfg) if name in BUILT_IN else (load_user_reward(name, base_dir), {})
        functions.append(checked(fn, short_name(name), **options))
        weights.append(weight)
    return functions, weights
