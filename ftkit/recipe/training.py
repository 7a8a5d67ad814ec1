"""What the sft: and rl: sections share: how long to train (steps or epochs), the batch an update sees and the
micro-batch that goes through the model at once, the optimizer's settings, checkpoints, and `trainer_args:` for
anything else the trainer's config takes.

`batch_size` is the effective batch: examples (GRPO/RLOO: completions) per optimizer step over all processes.
`micro_batch_size` is what one process puts through the model at once; gradient accumulation makes up the rest, so
the same recipe trains the same way on 1 or 8 processes and with any micro-batch:

    accumulation steps = batch_size / (launch.num_processes x micro_batch_size)
"""

from __future__ import annotations

import difflib
import math
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ftkit.recipe.section import Section

# trainer config fields that ftkit sets from the recipe (or itself): a trainer_args key among them is refused with
# the recipe key to use instead ({s}: the section, sft or rl)
OWNED = {
    "output_dir": "nothing: ftkit writes into the run directory",
    "overwrite_output_dir": "nothing: ftkit writes into the run directory",
    "max_steps": "{s}.max_steps", "num_train_epochs": "{s}.epochs",
    "per_device_train_batch_size": "{s}.micro_batch_size",
    "gradient_accumulation_steps": "{s}.batch_size and {s}.micro_batch_size (accumulation is batch_size / "
                                   "(launch.num_processes x micro_batch_size))",
    "auto_find_batch_size": "{s}.micro_batch_size: auto", "learning_rate": "{s}.learning_rate",
    "lr_scheduler_type": "sft.lr_scheduler", "warmup_steps": "sft.warmup_ratio", "warmup_ratio": "sft.warmup_ratio",
    "weight_decay": "{s}.weight_decay", "max_grad_norm": "{s}.max_grad_norm", "optim": "{s}.optimizer",
    "logging_steps": "{s}.logging_steps", "save_steps": "{s}.save_steps", "save_strategy": "{s}.save_steps",
    "save_total_limit": "nothing: ftkit keeps the last two saved states, for resuming, and deletes them after training",
    "resume_from_checkpoint": "`ftkit resume RUN_DIR`", "seed": "seed (top level)", "data_seed": "seed (top level)",
    "report_to": "report_to (top level)", "run_name": "name (top level)", "logging_dir": "report_to (top level)",
    "bf16": "model.dtype", "fp16": "model.dtype", "use_cpu": "nothing: ftkit uses the GPU where there is one",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "activation_checkpointing": "model.gradient_checkpointing", "max_length": "sft.max_length",
    "padding_free": "sft.padding_free", "disable_tqdm": "nothing: ftkit reports progress itself",
    "eval_strategy": "data.validation_size (a validation split turns the evaluation loss on)",
    "push_to_hub": "export.push_to_hub", "hub_model_id": "export.push_to_hub",
    "num_generations": "rl.num_generations", "temperature": "rl.temperature",
    "max_completion_length": "rl.max_completion_length", "beta": "rl.beta", "loss_type": "rl.loss_type",
    "scale_rewards": "rl.scale_rewards", "use_vllm": "rl.use_vllm", "vllm_mode": "rl.use_vllm",
    "reward_weights": "rl.rewards (reward -> weight)",
    "eval_steps": "nothing: with a validation split it evaluates five times in a run",
    "per_device_eval_batch_size": "{s}.micro_batch_size",
}
SFT_ONLY = ("lr_scheduler_type", "warmup_steps", "warmup_ratio")  # rl's schedule is constant unless trainer_args say


class TrainingSection(Section):
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; set this or epochs, not both (neither: "
                                  "60 steps for sft, 30 for rl)")
    epochs: float | None = Field(None, gt=0, description="passes over the train split (a fraction too), instead of "
                                 "max_steps")
    batch_size: int = Field(16, gt=0, description="examples per optimizer step over all processes (the batch an "
                            "update sees)")
    micro_batch_size: int | Literal["auto"] = Field(
        "auto", description="examples one process puts through the model at once; gradient accumulation makes up "
        "batch_size. auto: the largest that divides its share of the batch and fits in memory by the estimate")
    learning_rate: float = Field(1e-3, gt=0, lt=1, description="the optimizer's peak learning rate (LoRA takes "
                                 "larger ones than full fine-tuning)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's decoupled weight decay")
    max_grad_norm: float = Field(1.0, ge=0, description="gradients clipped to this norm; 0: not clipped")
    optimizer: str = Field("adamw_torch_fused", min_length=1, description="by its transformers name: adamw_torch, "
                           "adafactor, adamw_bnb_8bit (needs bitsandbytes), ...")
    trainer_args: dict[str, Any] = Field(
        default_factory=dict, description="anything else the trainer's config (TRL's SFTConfig, GRPOConfig, ...) "
        "takes, by its name there, e.g. {adam_beta2: 0.95}; what ftkit sets from other keys is refused")
    logging_steps: int = Field(5, gt=0, description="the loss and other figures logged every N steps (the "
                               "curves' resolution)")
    save_steps: int = Field(50, ge=0, description="checkpoint every N steps, for `ftkit resume` after a crash; 0: none")

    DEFAULT_STEPS: ClassVar[int] = 60

    @model_validator(mode="after")
    def _steps_or_epochs(self):
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError(f"max_steps ({self.max_steps}) and epochs ({self.epochs}) both say how long to train; "
                             "set one of them")
        if self.epochs is None and self.max_steps is None:
            self.max_steps = self.DEFAULT_STEPS
        if self.micro_batch_size != "auto" and (self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size):
            raise ValueError(f"micro_batch_size ({self.micro_batch_size}) must divide batch_size ({self.batch_size}): "
                             "gradient accumulation makes up the batch from whole micro-batches")
        return self

    def steps(self, examples: int, per_step: int | None = None) -> int:
        """Optimizer steps this section trains for on `examples` train examples (each step takes `per_step` of them,
        default batch_size); with epochs, whole passes rounded up as the trainer counts them.

        >>> TrainingSection(epochs=2, batch_size=16).steps(40), TrainingSection(max_steps=7).steps(40)
        (6, 7)
        """
        if self.max_steps is not None:
            return self.max_steps
        per_epoch = -(-examples // (per_step or self.batch_size))
        return max(1, math.ceil(per_epoch * self.epochs))


def owned_key_problem(section: str, key: str) -> str | None:
    """Why a trainer_args key is refused, with the recipe key to use instead; None when ftkit does not set it.

    >>> owned_key_problem("sft", "per_device_train_batch_size")
    'ftkit sets per_device_train_batch_size from sft.micro_batch_size; set that instead'
    """
    if key not in OWNED or (section != "sft" and key in SFT_ONLY):
        return None
    instead = OWNED[key].format(s=section)
    if instead.startswith("nothing"):
        return f"ftkit sets {key} itself ({instead.removeprefix('nothing: ')}); remove it"
    return f"ftkit sets {key} from {instead}; set that instead"


def unknown_key_problem(key: str, known: list[str], config_name: str) -> str:
    """A trainer_args key that the trainer's config does not take, with the closest one it does."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else "see that class's documentation for its fields"
    return f"{config_name} has no field {key!r}; {hint}"


def trainer_config(section: str, method: str | None = None):
    """The TRL config class that a section's trainer_args go to: SFTConfig, or the rl.method's."""
    import trl

    if section == "sft":
        return trl.SFTConfig
    return {"grpo": trl.GRPOConfig, "rloo": trl.RLOOConfig, "dpo": trl.DPOConfig, "kto": trl.KTOConfig}[method]


def check_trainer_settings(cfg, where) -> list[str]:
    """Each training stage's optimizer named as transformers names it, and its trainer_args: keys the stage's TRL
    config takes and ftkit does not set, with values that config accepts. `where(path)`: "file:line" of a key."""
    import dataclasses
    import tempfile
    import warnings

    from transformers.training_args import OptimizerNames

    problems = []
    optimizers = [o.value for o in OptimizerNames]
    for name in ("sft", "rl"):
        section = getattr(cfg, name)
        if name not in cfg.stages:
            continue
        if section.optimizer not in optimizers:
            close = difflib.get_close_matches(section.optimizer, optimizers, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"one of: {', '.join(optimizers[:12])}, ..."
            problems.append(f"{where((name, 'optimizer'))}: {name}.optimizer = {section.optimizer!r}: transformers "
                            f"has no optimizer by that name; {hint}")
        if not section.trainer_args:
            continue
        config = trainer_config(name, getattr(section, "method", None))
        known = [f.name for f in dataclasses.fields(config) if f.init]
        good = {}
        for key, value in section.trainer_args.items():
            problem = owned_key_problem(name, key) or (None if key in known else
                                                       unknown_key_problem(key, known, config.__name__))
            if problem:
                problems.append(f"{where((name, 'trainer_args', key))}: {name}.trainer_args.{key}: {problem}")
            else:
                good[key] = value
        if good and len(problems) == 0:
            with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    config(output_dir=scratch, use_cpu=True, report_to="none", **good)
                except Exception as exc:  # the config's own checks of values
                    first = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
                    problems.append(f"{where((name, 'trainer_args'))}: {name}.trainer_args: {config.__name__} refuses "
                                    f"{good}: {first}")
    return problems
