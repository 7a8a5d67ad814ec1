"""What the SFT and RL stages share: TRL's training arguments built from the recipe with ftkit's fast defaults, the
training loop around `trainer.train` (checkpoints that resume after a crash, progress, the saved result, the figures)
and the data conversion to TRL's formats.

Checkpoints: SFT and RL save one every `save_steps` steps (transformers' own format: adapter or model, optimizer,
scheduler, RNG states, trainer state with the data position). Once a checkpoint is fully written a marker naming the
step and the stage's fingerprint (recorded by `ftkit run` in status.json) is added; a training stage started again
resumes from the newest checkpoint whose marker has its fingerprint. A checkpoint without one (killed mid-save) or
made with other settings is deleted, never loaded. A notebook run by hand (no fingerprint recorded) starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import torch
from datasets import Dataset

from ftkit.core import rundir, timing
from ftkit.core.io import read_json, write_atomic
from ftkit.core.rows import labelled
from ftkit.models import loader
from ftkit.recipe import trackers
from ftkit.training.plan import section_of

log = logging.getLogger(__name__)


def to_dataset(rows: list[dict], tokenizer) -> Dataset:
    """Rows -> a TRL dataset: conversations tokenized with their labels (-100 on everything but the assistant turns,
    `rows.labelled`: every assistant turn is trained, the earlier ones too), or language modeling ("text", loss on
    every token; TRL appends EOS) for plain text."""
    if rows and "text" in rows[0]:
        return Dataset.from_list([{"text": r["text"]} for r in rows])
    examples = []
    for row in rows:
        ids, trained = labelled(row, tokenizer)
        examples.append({"input_ids": ids, "labels": [t if flag else -100 for t, flag in zip(ids, trained)]})
    return Dataset.from_list(examples)


def score_completions_only() -> bool:
    """Make TRL's fused LM head (SFT, GRPO, RLOO, DPO, KTO) score only the positions that carry a label, on every
    device.

    TRL projects through the head only the labelled positions (the completion) where its Triton kernels run, and every
    position elsewhere, the prompt included, so that a compiled graph keeps its shapes (Neuron). On a CPU nothing is
    compiled, and scoring the prompt was waste: 40% of the quickstart's GRPO update (2.9 s a step against 1.6 s with
    completions only, SmolLM2-135M, 16 completions of ~8 tokens after ~35-token prompts). The log-probabilities of
    the completion tokens are the same either way (tests/test_rl.py); the prompt's positions are zeros in both.
    Returns whether the change applies (False where TRL no longer makes the choice this way)."""
    from trl.trainer import utils as trl_utils

    choice = getattr(trl_utils, "_use_triton", None)
    if choice is None:
        return False
    if not getattr(choice, "ftkit_cpu_compact", False):
        def compact(device: torch.device) -> bool:
            return device.type == "cpu" or choice(device)

        compact.ftkit_cpu_compact, compact.ftkit_original = True, choice
        trl_utils._use_triton = compact
    return True


def training_args(cfg, section, run_dir: str | Path, stage: str, trl_config_cls, plan: dict, **extra):
    """TrainingArguments fields shared by the SFT and RL stages: what shapes training from the stage's resolved
    `plan` alone (dtype, micro-batch and accumulation, gradient checkpointing; `training.plan`), the optimizer's
    settings and checkpoints from the recipe's section. The recipe's `trainer_args` come last (validation refused the
    keys that ftkit sets)."""
    dtype = plan["dtype"]
    report_to = trackers(cfg.report_to)
    if "tensorboard" in report_to:  # transformers' TensorBoard callback reads its folder from here
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(rundir.tensorboard_dir(run_dir, stage))
    length = {"max_steps": plan["steps"]} if section.max_steps else {"num_train_epochs": section.epochs}
    return trl_config_cls(
        output_dir=str(rundir.checkpoints_dir(run_dir, stage)), **length,
        per_device_train_batch_size=plan["micro_batch_size"],
        gradient_accumulation_steps=plan["gradient_accumulation_steps"],
        learning_rate=section.learning_rate, weight_decay=section.weight_decay, max_grad_norm=section.max_grad_norm,
        optim=section.optimizer, logging_steps=section.logging_steps, seed=cfg.seed, data_seed=cfg.seed,
        save_strategy="steps" if section.save_steps else "no", save_steps=section.save_steps or None,
        save_total_limit=2, report_to=report_to or "none", run_name=f"{cfg.name}/{Path(run_dir).name}/{stage}",
        disable_tqdm=True, bf16=dtype == "bfloat16", fp16=dtype == "float16",
        gradient_checkpointing=plan["gradient_checkpointing"], dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(), ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available(), **{**extra, **section.trainer_args})


def backing_off(cfg, stage: str, run_dir: str | Path, train_once) -> dict:
    """`train_once(cfg)`, and where it runs out of GPU memory with `micro_batch_size: auto` in a single process,
    again with a smaller micro-batch (the largest divisor of the batch at most half the last; gradient accumulation
    makes up the rest, so the batch and the training stay the same), from the last checkpoint, down to 1. It says so
    in the log, and the figures (`out_of_memory_backoff`) and the plan record it."""
    import gc

    auto = section_of(cfg, stage).micro_batch_size == "auto"
    tried = []
    while True:
        micro = None
        try:
            figures = train_once(cfg)
        except torch.OutOfMemoryError:
            micro = read_json(rundir.stage_file(run_dir, stage, rundir.PLAN), {}).get("micro_batch_size", 1)
            if not auto or micro <= 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise
        if micro is None:
            break
        share = per_process(cfg, section_of(cfg, stage).batch_size)
        smaller = max(d for d in range(1, micro // 2 + 1) if share % d == 0)
        log.warning("%s: out of memory with a micro-batch of %d; training again from the last checkpoint with %d "
                    "(gradient accumulation %d, the same batch)", stage, micro, smaller, share // smaller)
        tried.append(micro)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        cfg = cfg.model_copy(deep=True)
        section_of(cfg, stage).micro_batch_size = smaller
    if tried:
        plan = figures["plan"]
        plan["why"]["micro_batch_size"] = (f"auto: {tried[0]} by the estimate, then {plan['micro_batch_size']} after "
                                           f"{len(tried)} out-of-memory error{'s' if len(tried) > 1 else ''}")
        figures["out_of_memory_backoff"] = [*tried, plan["micro_batch_size"]]
        write_atomic(rundir.stage_file(run_dir, stage, rundir.PLAN), json.dumps(plan, indent=2))
    return figures


def per_process(cfg, batch_size: int) -> int:
    """A step's batch shared out over the recipe's processes (validated to divide evenly)."""
    return batch_size // cfg.launch.num_processes


# the trainers' methods timed as phases of their own; the rest of `train` counts as the update
TIMED = (("_generate", "generation"), ("_save_checkpoint", "checkpointing"), ("evaluate", "validation loss"))


def fit(trainer, tokenizer, run_dir: str | Path, stage: str) -> tuple[dict, list[dict]]:
    """Train (from the last complete checkpoint of this stage with these settings, if there is one), save the
    adapter (or model) and the log history into the stage's directory, delete the checkpoints; return figures and
    history."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                rundir.write_progress(run_dir, stage, state.global_step, state.max_steps, "steps")

    fingerprint = rundir.running_fingerprint(run_dir, stage)
    checkpoint = resume_point(rundir.checkpoints_dir(run_dir, stage), fingerprint)
    trainer.add_callback(Progress())
    trainer.add_callback(checkpoint_callback(fingerprint))
    score_completions_only()
    for method, name in TIMED:  # each a phase of its own in the stage's time (ftkit.core.timing)
        if hasattr(trainer, method):
            setattr(trainer, method, timing.timed(name, getattr(trainer, method)))
    loaded = held_parameters(trainer.model)
    start = time.perf_counter()
    with timing.spent() as phases, timing.phase("update"):
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - start
    steps_run = max(1, result.global_step - (int(checkpoint.name.split("-")[1]) if checkpoint else 0))
    history = trainer.state.log_history
    digests = weight_digests(trainer.model)
    held = {"loaded": loaded, "trained": held_parameters(trainer.model)}
    gathered = gathered_state_dict(trainer)
    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model) if gathered is not None else trainer.model
        loader.save_trained(model, tokenizer, run_dir, stage, state_dict=gathered)
        write_atomic(rundir.stage_file(run_dir, stage, rundir.LOG_HISTORY), json.dumps(history, indent=2))
        shutil.rmtree(rundir.checkpoints_dir(run_dir, stage), ignore_errors=True)  # only for resuming
    figures = {"processes": trainer.args.world_size,
               **({"rank_weight_digests": digests, "rank_parameters": held} if len(digests) > 1 else {}),
               "distributed": trainer.accelerator.distributed_type.value,  # what ran: NO, MULTI_CPU, MULTI_GPU, FSDP
               "steps": result.global_step, "epochs": round(trainer.state.epoch or 0.0, 3),
               "train_seconds": round(seconds, 1),
               "seconds_per_step": {name: round(value / steps_run, 3) for name, value in phases.items()},
               "resumed_from_step": int(checkpoint.name.split("-")[1]) if checkpoint else None,
               **real_tokens(history, seconds),
               "trainable_parameters": sum(getattr(p, "ds_numel", p.numel())  # a ZeRO-3 parameter's is its whole
                                           for p in trainer.model.parameters() if p.requires_grad),
               "device": str(next(trainer.model.parameters()).device), "torch_threads": torch.get_num_threads(),
               "settings": settings(trainer)}
    return figures, history


def settings(trainer) -> dict:
    """The speed-related training settings in force (recipe defaults resolved): the frozen weights' dtype, the
    autocast dtype, gradient checkpointing, padding-free batches, the optimizer, Liger kernels."""
    args = trainer.args
    frozen = next((p.dtype for p in trainer.model.parameters() if not p.requires_grad), None)
    return {"weights": str(frozen or next(trainer.model.parameters()).dtype).replace("torch.", ""),
            "dtype": "bfloat16" if args.bf16 else "float16" if args.fp16 else "float32",
            "gradient_checkpointing": args.gradient_checkpointing, "padding_free": getattr(args, "padding_free", False),
            "optimizer": str(getattr(args.optim, "value", args.optim)), "liger_kernels": args.use_liger_kernel,
            "batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            "micro_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps}


def real_tokens(history: list[dict], seconds: float) -> dict:
    """Tokens trained on that were not padding (TRL's `num_tokens`, summed over processes; counted from this
    process's start when training resumed) and their rate."""
    counted = [h["num_tokens"] for h in history if "num_tokens" in h]
    if not counted:
        return {}
    return {"real_tokens": int(counted[-1]), "real_tokens_per_second": round(counted[-1] / max(seconds, 1e-9), 1)}


def held_parameters(model) -> list[int]:
    """The parameters (elements) each process holds in memory: all of them without sharding; under FSDP2 its shard of
    each (and none of a weight left on the meta device, as the processes other than the first load the model)."""
    import torch.distributed as dist

    held = sum(_local(p).numel() for p in model.parameters() if not p.is_meta)
    if not (dist.is_available() and dist.is_initialized()):
        return [held]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, held)
    return gathered


def gathered_state_dict(trainer) -> dict | None:
    """The whole model's state dict gathered from the processes' FSDP2 shards or ZeRO-3 partitions (every process
    takes part), or None where training was not sharded."""
    if trainer.is_fsdp_enabled:
        return trainer.accelerator.get_state_dict(trainer.model)
    if zero3(trainer):  # through DeepSpeed's engine
        return trainer.accelerator.get_state_dict(trainer.model_wrapped)
    return None


def zero3(trainer) -> bool:
    """True where DeepSpeed ZeRO-3 partitions the model's parameters."""
    plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
    return plugin is not None and plugin.zero_stage == 3


def _whole(param):
    """The whole parameter on every process (one at a time, so that a sharded model is never whole anywhere):
    gathered from its FSDP2 shards or its ZeRO-3 partitions."""
    if hasattr(param, "full_tensor"):
        return param.full_tensor()
    if hasattr(param, "ds_tensor"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param]):
            return param.data.clone()
    return param


def _local(param):
    """What of a parameter this process holds: its FSDP2 shard (a DTensor's local part), its DeepSpeed ZeRO-3
    partition, or the whole of it."""
    if hasattr(param, "to_local"):
        return param.to_local()
    return getattr(param, "ds_tensor", param)


def weight_digests(model) -> list[str]:
    """A digest of the trained weights on every process (one entry with a single process): data-parallel ranks
    that end in sync have equal digests."""
    import torch.distributed as dist

    digest = hashlib.sha256()
    for name, param in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        digest.update(name.encode())
        digest.update(_whole(param).detach().float().cpu().numpy().tobytes())
    if not (dist.is_available() and dist.is_initialized()):
        return [digest.hexdigest()[:16]]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, digest.hexdigest()[:16])
    return gathered


# ---------------------------------------------------------------- checkpoints

_STEP = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_callback(stage_fingerprint: str | None):
    """A Trainer callback that marks a checkpoint complete once transformers has written all of it."""
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                write_atomic(folder / rundir.CHECKPOINT_MARKER, json.dumps({"step": state.global_step,
                                                                            "fingerprint": stage_fingerprint}))

    return MarkComplete()


def resume_point(checkpoints: str | Path, stage_fingerprint: str | None) -> Path | None:
    """The newest complete checkpoint made with this fingerprint; incomplete ones and ones made with other settings
    (or any, without a fingerprint) are deleted (logged), so that they can be neither loaded nor rotated in place of
    a good one."""
    found = sorted((int(m.group(1)), p) for p in Path(checkpoints).glob("checkpoint-*")
                   if p.is_dir() and (m := _STEP.match(p.name)))
    best = None
    for step, folder in found:
        marker = read_json(folder / rundir.CHECKPOINT_MARKER)
        if marker is None:
            log.warning("checkpoint %s is incomplete (no %s: the run stopped while saving it); deleted, not loaded",
                        folder, rundir.CHECKPOINT_MARKER)
            shutil.rmtree(folder, ignore_errors=True)  # every process of a launch checks; one deletes
        elif stage_fingerprint is None or marker.get("fingerprint") != stage_fingerprint:
            log.warning("checkpoint %s was made with other settings; deleted, not loaded", folder)
            shutil.rmtree(folder, ignore_errors=True)
        else:
            best = folder
    return best
