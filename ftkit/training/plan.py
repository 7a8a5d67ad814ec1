"""One training plan per stage, resolved once: every `auto` of the recipe that shapes training (dtype, micro-batch
and so gradient accumulation, gradient checkpointing, max_length, steps and epochs) settled, each with the reason.
The trainer's config is built from the plan alone; the stage writes it to `<run>/<stage>/plan.json`, the notebook
and the report show it, and `ftkit validate` prints it before the run, so a user sees what `auto` will do on their
machine.

    >>> print(describe({"stage": "sft", "dtype": "float32", "processes": 1, "batch_size": 16, "micro_batch_size": 4,
    ...                 "gradient_accumulation_steps": 4, "gradient_checkpointing": False, "max_length": 128,
    ...                 "steps": 60, "epochs": None, "optimizer": "adamw_torch_fused", "why": {"dtype": "set"}}))
    sft plan: float32 (set); 1 process; batch 16 = micro-batch 4 x 4 accumulation x 1 process; gradient checkpointing off; max_length 128; 60 steps; optimizer adamw_torch_fused
"""

from __future__ import annotations

import json
import os

from ftkit.core import rundir
from ftkit.core.io import write_atomic
from ftkit.models import dtypes
from ftkit.models.loader import ModelNotFound, dtype_name
from ftkit.training import preflight

SHARDING = {"fsdp": "FSDP2", "zero3": "DeepSpeed ZeRO-3"}  # launch.shard


def section_of(cfg, stage: str):
    return cfg.sft if stage == "sft" else cfg.rl


def tokens_for(cfg, stage: str, lengths: list[int] | None = None, padding_free: bool = False):
    """The most tokens a forward pass of n examples holds, as a function of n: SFT's longest examples (padded unless
    padding-free); GRPO/RLOO's prompt and sampled reply; DPO/KTO's chosen and rejected sequences."""
    length = preflight.planned_length(cfg)
    if stage == "sft":
        return lambda n: preflight.step_tokens(cfg, lengths or [], padding_free, n)
    if cfg.rl.method in ("grpo", "rloo"):
        completion = cfg.rl.max_completion_length
        return lambda n: n * (length + (completion if isinstance(completion, int) else 64))
    return lambda n: n * 2 * length


def resolve(cfg, stage: str, examples: int | None = None, lengths: list[int] | None = None,
            padding_free: bool = False, fit: dict | None = None) -> dict:
    """The plan of training stage `stage` ("sft" or "rl") for `examples` train examples (None before the data
    stage: steps only where max_steps is set) of these token `lengths`; `fit`: the data stage's fit of
    `sft.max_length: auto` (its figures' max_length), for the reason."""
    section, why = section_of(cfg, stage), {}
    processes = cfg.launch.num_processes
    share = section.batch_size // processes
    pass_tokens = tokens_for(cfg, stage, lengths, padding_free)
    micro = preflight.micro_batch(cfg, section, pass_tokens)
    try:
        figures = preflight.estimate(cfg, pass_tokens(micro))
    except ModelNotFound:
        figures = None
    memory = "by the memory estimate (below)" if figures else "(the model's config could not be read for an estimate)"
    why["micro_batch_size"] = (f"auto: the largest divisor of the process's share ({share}) that fits {memory}"
                               if section.micro_batch_size == "auto" else "set in the recipe")
    checkpointing = preflight.gradient_checkpointing(cfg, pass_tokens(micro), figures)
    why["gradient_checkpointing"] = ("set in the recipe" if cfg.model.gradient_checkpointing != "auto" else
                                     f"auto: {'on, needed' if checkpointing else 'off, not needed'} to fit {memory}")
    dtype = dtype_name(cfg.model)
    why.update(_reasons(cfg, dtype, fit))
    per_step = section.batch_size // cfg.rl.num_generations if stage == "rl" and cfg.rl.method in ("grpo", "rloo") \
        else section.batch_size
    steps = section.steps(examples, per_step) if examples else section.max_steps
    # epochs as the trainer counts them: steps over the steps of one pass (its last step partial)
    epochs = section.epochs if section.epochs else (round(steps / -(-examples // per_step), 3) if examples else None)
    passes = f"{section.epochs:g} epoch{'' if section.epochs == 1 else 's'}" if section.epochs else ""
    why["steps"] = (f"{passes} of {examples} examples, {per_step} a step"
                    if section.epochs and examples else f"{passes}, counted once the data stage has split the data"
                    if section.epochs else "max_steps")
    return {"stage": stage, "dtype": dtype, "processes": processes, "shard": cfg.launch.shard,
            "batch_size": section.batch_size,
            "micro_batch_size": micro, "gradient_accumulation_steps": share // micro,
            "gradient_checkpointing": checkpointing, "max_length": cfg.sft.max_length, "steps": steps,
            "epochs": epochs, "optimizer": section.optimizer,
            **({"padding_free": padding_free} if stage == "sft" else {}),
            **({"memory": {"estimated_gb": figures["estimated_gb"], "available_gb": figures["available_gb"],
                           "available_on": figures["available_on"]}} if figures else {}), "why": why}


def _reasons(cfg, dtype: str, fit: dict | None) -> dict:
    """Why the dtype, max_length and sharding are what they are."""
    why = {"dtype": "set in the recipe" if cfg.model.dtype != "auto" else
           "auto: " + dtypes.choose("training")[1],
           "shard": (f"{SHARDING[cfg.launch.shard]}: each process holds its share of the weights, gradients and "
                     "optimizer state" if cfg.launch.shard != "none" else "every process holds the whole model")}
    if cfg.sft.max_length == "auto":
        why["max_length"] = f"auto: fitted by the data stage ({cfg.sft.ASSUMED_LENGTH} assumed here until then)"
    else:
        why["max_length"] = (f"auto: fitted by the data stage to the {fit['rule']} example length "
                             f"({fit['longest'] if fit['rule'] == 'longest' else fit['p99']} tokens)"
                             + (f", capped by {fit['capped_by']}" if fit.get("capped_by") else "")
                             if fit else "set in the recipe")
    return why


def describe(plan: dict) -> str:
    """The plan in one line, as `ftkit validate` prints it."""
    why = plan.get("why", {})
    processes = f"{plan['processes']} process{'es' if plan['processes'] > 1 else ''}"
    return "; ".join([
        f"{plan['stage']} plan: {plan['dtype']}" + (f" ({why['dtype']})" if why.get("dtype") else ""),
        processes + (f" sharded with {SHARDING[plan['shard']]}" if plan.get("shard", "none") != "none" else ""),
        f"batch {plan['batch_size']} = micro-batch {plan['micro_batch_size']} x {plan['gradient_accumulation_steps']} "
        f"accumulation x {processes}",
        f"gradient checkpointing {'on' if plan['gradient_checkpointing'] else 'off'}",
        f"max_length {plan['max_length']}" + (f" ({why['max_length']})" if plan["max_length"] == "auto" else ""),
        f"{plan['steps']} steps" if plan["steps"] else f"{plan['epochs']:g} epoch{'s' if plan['epochs'] != 1 else ''}",
        f"optimizer {plan['optimizer']}"])


def for_stage(cfg, stage: str, run_dir, examples: int, lengths: list[int] | None = None,
              padding_free: bool = False) -> dict:
    """The stage's plan for its `examples` train examples (their token `lengths` for SFT; the data stage's fit of
    max_length read from the run), written to `<run>/<stage>/plan.json` by the first process."""
    fit = rundir.metrics(run_dir).get("data", {}).get("max_length")
    plan = resolve(cfg, stage, examples, lengths, padding_free, fit)
    if int(os.environ.get("RANK", "0")) == 0:
        write_atomic(rundir.stage_file(run_dir, stage, rundir.PLAN), json.dumps(plan, indent=2))
    return plan
