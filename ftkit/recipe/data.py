"""The data: section of a recipe: where the examples come from, how they are read, split, cleaned and scored."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ftkit.recipe.rules import KEPT_RESERVED, TEMPLATED, check_regex, template_fields
from ftkit.recipe.section import Section
from ftkit.scoring.answers import MODES as ANSWER_MODES
from ftkit.scoring.robustness import PERTURBATIONS
from ftkit.scoring.tasks import TASKS


class DataConfig(Section):
    """Where the examples come from, how they are read, split, cleaned and scored."""

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
    revision: str | None = Field(None, description="hub dataset branch, tag or commit")
    format: Literal["auto", "prompt_completion", "question_answer", "multiple_choice", "alpaca", "messages", "sharegpt",
                    "preference", "feedback", "prompts", "text"] = Field(
        "auto", description="how a row is read; auto: detected from the columns (prompt/completion, question/answer, "
        "instruction/input/output, messages, chosen/rejected, label, text, ...)")
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
    dedupe: bool = Field(True, description="drop exact duplicate examples (counted)")
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
            check_regex("extract is regex", "extract_regex", self.extract_regex, "'Answer: (\\S+)'")
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
