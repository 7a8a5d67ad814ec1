"""The recipe's schema: one section per stage (model, data, sft, rl, eval, export, launch) and the rules across
them. Every key has its type, default and description here; the data section has its own module."""

from __future__ import annotations

import difflib
import re
from typing import Annotated, ClassVar, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from ftkit.core.rundir import STAGES
from ftkit.recipe.data import DataConfig
from ftkit.recipe.rules import (
    DEFAULT_MODEL,
    DEFAULT_STAGES,
    TRACKERS,
    TUNED_MODELS,
    check_regex,
    data_problem,
    trackers,
)
from ftkit.recipe.section import Section
from ftkit.recipe.training import TrainingSection
from ftkit.scoring.robustness import PERTURBATIONS


class ModelConfig(Section):
    """The pretrained model, how it is loaded and what of it is trained."""

    id: str = Field(DEFAULT_MODEL, min_length=1, description="hub id or local directory")
    revision: str | None = Field(None, description="a hub branch, tag or commit of model.id (default: main)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: the faster of bfloat16 and float32 here, for training and for generation apart: "
        "bfloat16 on a GPU with bf16 or a CPU with AMX, float32 on a CPU without bf16 arithmetic, and on a CPU with "
        "AVX-512-BF16 alone what a few-second benchmark, run once per machine and cached, found faster (the run's "
        "environment record says which and why)")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = Field(
        None, description="default: transformers' choice (sdpa where supported)")
    trust_remote_code: bool = Field(False, description="run modelling code shipped with the model; off unless set")
    adapter: Literal["lora", "qlora", "none"] = Field(
        "lora", description="qlora: LoRA on a 4-bit base (CUDA + bitsandbytes); none: full fine-tuning")
    lora_r: int = Field(16, gt=0, description="LoRA rank: the inner size of each adapter's two matrices")
    lora_alpha: int = Field(32, gt=0, description="LoRA scale numerator: the update is multiplied by "
                            "lora_alpha / lora_r")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input while training")
    target_modules: str | list[str] = Field("all-linear", description="default: every linear layer but the output")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="recompute activations: less memory, 11-30% slower; auto: only when the memory estimate "
        "says training would not fit without it")


class SFTConfig(TrainingSection):
    """Supervised fine-tuning on the train split's demonstrations (TRL's SFTTrainer)."""

    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="how the learning rate falls from learning_rate over the steps")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of the steps over which the learning rate "
                                "rises from 0 to learning_rate")
    max_length: Annotated[int, Field(gt=8)] | Literal["auto"] = Field(
        "auto", description="tokens an example may take as trained; longer ones are dropped or cut (data.too_long). "
        "auto: fitted to the data by the data stage, the longest example (the 99th percentile where the longest is "
        "over 1.5 times it), within the model's context and the memory one example needs")

    ASSUMED_LENGTH: ClassVar[int] = 512  # max_length: auto, before the data stage has fitted it (memory estimates)
    padding_free: bool | Literal["auto"] = Field(
        "auto", description="a step's examples in one row without padding, each attending only to itself (same "
        "loss, same real tokens); auto: on with flash attention and data.too_long: drop, off otherwise (sdpa "
        "computes the row under a mask and is slower than padded batches); true is refused where the model's "
        "attention would let the examples see each other")


class RLConfig(TrainingSection):
    """Reinforcement learning after SFT (or from the base): GRPO or RLOO on rewards, DPO or KTO on preferences."""

    method: Literal["grpo", "rloo", "dpo", "kto"] = Field(
        "grpo", description="grpo/rloo: maximise rl.rewards on sampled completions; dpo: preference pairs; kto: "
        "answers labelled desirable or not (or preference pairs, unpaired)")
    DEFAULT_STEPS: ClassVar[int] = 30
    learning_rate: float = Field(2e-5, gt=0, lt=1, description="the optimizer's learning rate (constant unless "
                                 "trainer_args set a scheduler)")
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
    num_generations: int = Field(8, ge=2, description="completions sampled per prompt")
    temperature: float = Field(1.0, gt=0, description="grpo/rloo: sampling temperature of the completions (also "
                               "eval.sampled's)")
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
            check_regex("rewards names format", "format_regex", self.format_regex, "'\\d+'")
        return self


class JudgeConfig(Section):
    """A model that reads the replies: pairwise against a reference or another model, or a grade."""

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
    batch_size: int = Field(8, gt=0, description="judge prompts generated at once")


class EvalConfig(Section):
    """Every model on the same held-out examples: the test split, a shifted set and perturbed prompts."""

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
    batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="prompts generated (or scored) at once, sorted by length; auto: as many as a quarter of "
        "the free memory holds (each one's cache and logits), at most 128")
    max_new_tokens: Annotated[int, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="tokens a reply may take; auto: fitted to the answers of train and test "
        "(rows.reply_budget: 1.25 x the longest + 4, at least 8; 64 for prompts without answers)")
    temperature: float = Field(0.0, ge=0, description="0: greedy; above 0: sampling")
    samples: int = Field(1, gt=0, description="completions per prompt (pass@k with temperature > 0)")
    sampled: int | None = Field(None, ge=0, description="completions per test prompt also sampled at rl.temperature: "
                                "the sampled accuracy, what GRPO and RLOO maximise, beside the greedy one (default 4 "
                                "when the recipe trains with GRPO or RLOO and eval is greedy, else 0: none)")
    sampled_models: list[str] | None = Field(
        None, description="the models whose replies are also sampled (eval.sampled); default: with an RL stage, the "
                          "RL model and the model it started from (the sampled gain RL is measured by), else every "
                          "evaluated model")
    sampled_size: int = Field(1000, gt=0, description="test prompts (the first ones) whose replies are sampled: 1000 "
                              "bounds the 95% interval of a pass/fail rate at about ±3 points (1.96 x 0.5 / "
                              "sqrt(1000)); fewer prompts cost less and give a wider interval")
    stop: list[str] = Field(default_factory=list, description="strings that end a completion")
    answer_loss: bool = Field(True, description="loss and perplexity of each model on the reference answers")
    likeliest_class: bool = Field(True, description="for a classification: the class each model finds likeliest as "
                                  "its whole reply (one scoring pass per class and test prompt)")
    robustness_size: int = Field(50, ge=0, description="test prompts perturbed per perturbation (0: none)")
    finish_cut: int = Field(50, ge=0, description="test prompts whose reply was cut at max_new_tokens answered again "
                                                  "with room to finish (twice the limit, at least 128 tokens), to "
                                                  "tell a model that explains before it answers from one that does "
                                                  "not know the answer; the headline is not changed (0: none)")
    perturbations: list[Literal[PERTURBATIONS]] = Field(default_factory=lambda: list(PERTURBATIONS), description=
                                                        "the robustness claim's perturbations, each applied alone")
    n_examples_shown: int = Field(10, ge=0, description="predictions shown side by side in the notebook and report")
    judge: JudgeConfig | None = Field(None, description="a model that grades the replies or compares them pairwise")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics):
        from ftkit.scoring.metrics import LOCAL

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
        for key in ("models", "sampled_models"):
            unknown = [m for m in getattr(self, key) or [] if m not in ("base", *TUNED_MODELS, *self.extra)]
            if unknown:
                raise ValueError(f"{key} lists {unknown[0]!r}; use base, sft, rl or a label of eval.extra "
                                 f"({', '.join(self.extra) or 'none set'})")
        return self

    @model_validator(mode="after")
    def _samples_need_sampling(self):
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(f"samples = {self.samples} needs temperature > 0 (greedy decoding gives the same "
                             "completion every time); e.g. temperature: 0.8")
        return self


class ExportConfig(Section):
    """The tuned model written for use outside ftkit (runs only when stages lists export)."""

    model: Literal["sft", "rl"] | None = Field(None, description="tuned model to export (default: the last trained)")
    merged: bool = Field(True, description="base and adapter merged into one checkpoint, loadable with transformers")
    adapter: bool = Field(True, description="the LoRA adapter alone (small; needs the base model)")
    push_to_hub: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$",
                                    description="hub repo id for the merged model; the token comes from HF_TOKEN")
    private: bool = Field(True, description="push_to_hub: create the hub repository private")
    gguf: list[Literal["f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k"]] = Field(
        default_factory=list, description="GGUF files for llama.cpp and Ollama (export/gguf/, with an Ollama "
        "Modelfile), each loaded back and checked against the merged model; e.g. [f16, q8_0]. Llama, Mistral, "
        "Qwen2 and Gemma 3 models; the k-quants (q4_k_m, q5_k_m, q6_k) need llama.cpp's quantizer: pip install -e '.[gguf]'")


class LaunchConfig(Section):
    """Where training runs: one process, several GPUs, several machines (through accelerate launch)."""

    num_processes: int = Field(1, ge=1, description="training processes in all machines (one per GPU); 1: train in "
                                                    "the notebook's kernel; more: through `accelerate launch`")
    num_machines: int = Field(1, ge=1, description="machines taking part (the same processes on each)")
    machine_rank: int = Field(0, ge=0, description="this machine's rank (run the same command on each machine)")
    main_process_ip: str | None = Field(None, description="address of machine 0 (several machines)")
    main_process_port: int = Field(29500, gt=0, lt=65536, description="port of machine 0 (several machines)")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="accelerate's autocast; ftkit's own bf16/fp16 training follows model.dtype")
    config_file: str | None = Field(None, description="accelerate config file (FSDP, DeepSpeed), relative to the "
                                                      "recipe; default: plain data parallel (DDP)")
    shard: Literal["none", "fsdp", "zero3"] = Field(
        "none", description="the weights, gradients and optimizer state sharded over the processes, from an "
        "accelerate config that ftkit writes (<stage>/accelerate.yaml): fsdp with PyTorch's FSDP2 (CUDA GPUs only), "
        "zero3 with DeepSpeed ZeRO-3 (pip install deepspeed)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank {self.machine_rank} must be below num_machines {self.num_machines}")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError(f"num_machines {self.num_machines} needs main_process_ip: the address of machine 0")
        if self.shard != "none" and self.config_file:
            raise ValueError(f"shard {self.shard!r} and config_file {self.config_file!r} both say how to launch; set "
                             "one of them (shard: ftkit writes the accelerate config)")
        if self.num_processes % self.num_machines:
            raise ValueError(f"num_processes {self.num_processes} must be a multiple of num_machines "
                             f"{self.num_machines} (processes in all, the same number on each machine)")
        return self


class Recipe(Section):
    """One experiment: its name, seed and stages, then one section per part."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80, description="run directories go "
                      "to reports/<name>/; letters, digits, ., _ and -")
    seed: int = Field(0, description="one seed for data splits, training and bootstrap intervals")
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
        problems = []
        for name, section in (("sft", self.sft), ("rl", self.rl)):
            micro = 1 if section.micro_batch_size == "auto" else section.micro_batch_size
            if name in self.stages and section.batch_size % (n * micro):
                problems.append(f"{name}.batch_size {section.batch_size}" + (f" (micro-batches of {micro})"
                                                                              if micro > 1 else ""))
        if problems:
            raise ValueError(f"{' and '.join(problems)} must be a multiple of launch.num_processes {n} x "
                             "micro_batch_size: batch_size is the batch of one step over all processes, each process "
                             "trains batch_size / num_processes of it, micro_batch_size examples at a time")
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
