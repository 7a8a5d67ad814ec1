"""SFT stage: supervised fine-tuning with TRL's SFTTrainer on the train split (loss on the answer only; plain
text: continued pre-training, loss on every token)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from datasets import Dataset

from ftkit import data, launch, models, resume
from ftkit.io import write_atomic, write_progress


def to_dataset(rows: list[dict]) -> Dataset:
    """Rows -> a TRL dataset: conversational prompt-completion (loss on the answer only), or language modeling
    ("text", loss on every token; TRL appends EOS) for plain text."""
    if rows and "text" in rows[0]:
        return Dataset.from_list([{"text": r["text"]} for r in rows])
    return Dataset.from_list([{"prompt": data.messages(r),
                               "completion": [{"role": "assistant", "content": r["answer"]}]} for r in rows])


def training_args(cfg, section, output_dir: Path, trl_config_cls, tokens: int | None = None, **extra):
    """TrainingArguments fields shared by the SFT and RL stages, built from the recipe, with the fast defaults:
    bf16 where the hardware computes in it (`models.dtype_name`), gradient checkpointing only where memory needs
    it (`tokens`: the most a step holds), transformers' fused AdamW."""
    return trl_config_cls(
        output_dir=str(output_dir), max_steps=section.max_steps, learning_rate=section.learning_rate,
        logging_steps=section.logging_steps, seed=cfg.seed, data_seed=cfg.seed,
        save_strategy="steps" if section.save_steps else "no", save_steps=section.save_steps or None,
        save_total_limit=2, report_to="none", disable_tqdm=True, bf16=models.dtype_name(cfg.model) == "bfloat16",
        fp16=models.dtype_name(cfg.model) == "float16", gradient_checkpointing=models.gradient_checkpointing(cfg, tokens),
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available(), **extra)


def per_process(cfg, batch_size: int) -> int:
    """A step's batch shared out over the recipe's processes (validated to divide evenly)."""
    return batch_size // cfg.launch.num_processes


def fit(trainer, tokenizer, out: Path, cfg) -> tuple[dict, list[dict]]:
    """Train (from the last complete checkpoint of this stage with these settings, if there is one), save the
    adapter (or model) and the log history into the stage directory `out`, delete the checkpoints; return figures
    and history."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                write_progress(out.parent, out.name, state.global_step, state.max_steps, "steps")

    fingerprint = resume.fingerprint(cfg, out.parent, out.name)["fingerprint"]
    checkpoint = resume.resume_point(out / "checkpoints", fingerprint)
    trainer.add_callback(Progress())
    trainer.add_callback(resume.checkpoint_callback(fingerprint))
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - start
    history = trainer.state.log_history
    digests = weight_digests(trainer.model)
    if trainer.is_world_process_zero():
        models.save_trained(trainer.model, tokenizer, out)
        write_atomic(out / "log_history.json", json.dumps(history, indent=2))
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the result is saved; they were only for resuming
    figures = {"processes": trainer.args.world_size, **({"rank_weight_digests": digests} if len(digests) > 1 else {}),"steps": result.global_step, "train_seconds": round(seconds, 1),
               "resumed_from_step": int(checkpoint.name.split("-")[1]) if checkpoint else None,
               **real_tokens(history, seconds),
               "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
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
            "optimizer": str(getattr(args.optim, "value", args.optim)), "liger_kernels": args.use_liger_kernel}


def real_tokens(history: list[dict], seconds: float) -> dict:
    """Tokens trained on that were not padding (TRL's `num_tokens`, summed over processes; counted from this
    process's start when training resumed) and their rate."""
    counted = [h["num_tokens"] for h in history if "num_tokens" in h]
    if not counted:
        return {}
    return {"real_tokens": int(counted[-1]), "real_tokens_per_second": round(counted[-1] / max(seconds, 1e-9), 1)}


def weight_digests(model) -> list[str]:
    """A digest of the trained weights on every process (one entry with a single process): data-parallel ranks
    that end in sync have equal digests."""
    import hashlib

    import torch.distributed as dist

    digest = hashlib.sha256()
    for name, param in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    if not (dist.is_available() and dist.is_initialized()):
        return [digest.hexdigest()[:16]]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, digest.hexdigest()[:16])
    return gathered


def train(cfg, run_dir: str | Path) -> dict:
    """Train on the data stage's train split; save the adapter to `<run_dir>/sft/adapter` (in several processes
    through `accelerate launch` when the recipe's `launch.num_processes` asks for it)."""
    from trl import SFTConfig, SFTTrainer

    if launch.needed(cfg):
        return launch.train(cfg, run_dir, "sft")
    run_dir = Path(run_dir)
    out = run_dir / "sft"
    rows = data.load_split(run_dir, "train")
    dataset = to_dataset(rows)
    validation = (to_dataset(data.load_split(run_dir, "validation"))
                  if (run_dir / "data" / "validation.jsonl").is_file() else None)
    evaluation = ({"eval_strategy": "steps", "eval_steps": max(cfg.sft.logging_steps, cfg.sft.max_steps // 5),
                   "per_device_eval_batch_size": per_process(cfg, cfg.sft.batch_size)} if validation is not None else {})
    model, tokenizer = models.load(cfg.model)
    # padding-free: the data stage already dropped examples over max_length, so none is cut here
    padding_free = models.padding_free(cfg, model)
    tokens = models.step_tokens(cfg, [r["tokens"] for r in rows if "tokens" in r], padding_free)
    args = training_args(cfg, cfg.sft, out / "checkpoints", SFTConfig, tokens=tokens,
                         per_device_train_batch_size=per_process(cfg, cfg.sft.batch_size), lr_scheduler_type=cfg.sft.lr_scheduler,
                         warmup_steps=cfg.sft.warmup_ratio, padding_free=padding_free,
                         max_length=None if padding_free else cfg.sft.max_length,
                         **evaluation)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=validation,
                         processing_class=tokenizer, peft_config=models.lora_config(cfg.model))
    figures, history = fit(trainer, tokenizer, out, cfg)
    losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    return {**figures, "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "final_eval_loss": eval_losses[-1] if eval_losses else None}


def loss_curve(run_dir: str | Path, stage: str = "sft", key: str = "loss"):
    """Steps and values of `key` ("loss", or "eval_loss" on the validation split) from a stage's log history."""
    history = json.loads((Path(run_dir) / stage / "log_history.json").read_text())
    points = [(h["step"], h[key]) for h in history if key in h]
    return [p[0] for p in points], [p[1] for p in points]
