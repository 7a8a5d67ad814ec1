"""SFT stage: supervised fine-tuning with TRL's SFTTrainer on the train split (loss on the answer only; plain
text: continued pre-training, loss on every token). Saves the adapter to `<run_dir>/sft/adapter` (the whole model to
`sft/model` for full fine-tuning).

In several processes (`launch.num_processes` > 1) the notebook starts `accelerate launch ... -m ftkit.stages.sft RUN_DIR`,
and each process runs this module's `train` on its share of every batch.
"""

from __future__ import annotations

from pathlib import Path

from ftkit.core import rundir
from ftkit.core.rows import imitated
from ftkit.models import loader
from ftkit.recipe import fitted
from ftkit.training import launch
from ftkit.training import plan as training_plan
from ftkit.training.trainer import backing_off, fit, to_dataset, training_args


def train(cfg, run_dir: str | Path) -> dict:
    """Train on the data stage's train split (with a validation loss when there is a validation split); save the
    result into `<run_dir>/sft/`; return the figures the notebook records."""
    if launch.needed(cfg):
        return launch.train(cfg, run_dir, "sft")
    # sft.max_length: auto as the data stage chose it; a smaller micro-batch after an out-of-memory error
    return backing_off(fitted(cfg, run_dir), "sft", run_dir, lambda cfg: _train(cfg, run_dir))


def _train(cfg, run_dir: str | Path) -> dict:
    from trl import SFTConfig, SFTTrainer

    rows = imitated(rundir.load_split(run_dir, "train"))  # feedback: the desirable answers only
    model, tokenizer = loader.load(cfg.model)
    dataset = to_dataset(rows, tokenizer)
    validation = (to_dataset(imitated(rundir.load_split(run_dir, "validation")), tokenizer)
                  if rundir.split_path(run_dir, "validation").is_file() else None)
    # padding-free: the data stage already dropped examples over max_length, so none is cut here
    padding_free = loader.padding_free(cfg, model)
    plan = training_plan.for_stage(cfg, "sft", run_dir, len(rows), [r["tokens"] for r in rows if "tokens" in r],
                                   padding_free)
    evaluation = {}
    if validation is not None:
        evaluation = {"eval_strategy": "steps", "eval_steps": max(cfg.sft.logging_steps, plan["steps"] // 5),
                      "per_device_eval_batch_size": plan["micro_batch_size"]}
    args = training_args(cfg, cfg.sft, run_dir, "sft", SFTConfig, plan, lr_scheduler_type=cfg.sft.lr_scheduler,
                         warmup_steps=cfg.sft.warmup_ratio, padding_free=padding_free,
                         max_length=None if padding_free else cfg.sft.max_length,
                         **evaluation)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=validation,
                         processing_class=tokenizer, peft_config=loader.lora_config(cfg.model))
    figures, history = fit(trainer, tokenizer, run_dir, "sft")
    losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    return {**figures, "plan": plan, "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None, "final_eval_loss": eval_losses[-1] if eval_losses else None}


if __name__ == "__main__":  # one of several processes started by `accelerate launch`
    launch.inside("sft", train)
