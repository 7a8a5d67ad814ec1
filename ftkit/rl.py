"""RL stage: GRPO or RLOO (TRL) maximising the recipe's rewards, or DPO on preference pairs.

Starts from the SFT result when the recipe runs SFT (a LoRA adapter keeps training; the reference model, where one
is needed, is that SFT model: TRL keeps a frozen copy of the adapter, not a second model), else from the base model
with a fresh adapter (the reference is then the adapter-disabled base). Saves the adapter to `<run_dir>/rl/adapter`,
the log history and, for GRPO/RLOO, completions sampled at the first, middle and last step with each reward
(`rl/samples.jsonl`). In several processes, `accelerate launch ... -m ftkit.rl RUN_DIR` runs `train` in each.
"""

from __future__ import annotations

from pathlib import Path

from ftkit import launch, models, rewards, rundir
from ftkit.io import write_jsonl
from ftkit.recipe import data_problem
from ftkit.rows import DataError, kind, messages
from ftkit.tasks.common import completion_text
from ftkit.training import fit, per_process, to_dataset, training_args

DPO_BETA, GRPO_BETA = 0.1, 0.0


class SampleLog:
    """Completions and each reward's value at a few steps of training (first, middle, last), for the notebook and
    the report."""

    def __init__(self, max_steps: int, per_step: int = 4):
        self.steps = sorted({0, max_steps // 2, max_steps - 1})
        self.per_step = per_step
        self.records: dict[tuple[int, int], dict] = {}
        self._seen: set[tuple[int, str]] = set()

    def wrap(self, fn):
        def reward(completions, **columns):
            values = fn(completions, **columns)
            state = columns.get("trainer_state")
            step = state.global_step if state is not None else 0
            if step in self.steps and (step, fn.__name__) not in self._seen:  # the step's first batch only
                self._seen.add((step, fn.__name__))
                prompts = columns.get("prompts") or [""] * len(completions)
                spread = max(1, len(completions) // self.per_step)  # across prompts, not one prompt's group
                for i in range(0, min(self.per_step * spread, len(completions)), spread):
                    prompt = prompts[i][-1]["content"] if isinstance(prompts[i], list) else prompts[i]
                    record = self.records.setdefault((step, i), {"step": step, "prompt": prompt,
                                                                 "completion": completion_text(completions[i])})
                    record[fn.__name__] = values[i]
            return values

        reward.__name__ = fn.__name__
        return reward

    def save(self, path: Path, weights: dict[str, float]) -> None:
        rows = []
        for (_, _), record in sorted(self.records.items()):
            record["total"] = round(sum(record.get(name, 0.0) * w for name, w in weights.items()), 4)
            rows.append(record)
        write_jsonl(path, rows)


def _start(cfg, run_dir: Path):
    """(model, tokenizer, peft_config, start_from): the SFT result when the recipe runs SFT, else the base."""
    sft_model = rundir.tuned_dir(run_dir, "sft")
    if "sft" in cfg.stages and sft_model is None:
        raise FileNotFoundError(f"{rundir.stage_dir(run_dir, 'sft')} holds no adapter or model although the recipe "
                                "runs SFT: run the sft stage first")
    if "sft" in cfg.stages:
        model, tokenizer = models.load(cfg.model, tuned=sft_model, trainable=True)
        return model, tokenizer, None if sft_model.name == "adapter" else models.lora_config(cfg.model), "sft"
    model, tokenizer = models.load(cfg.model)
    return model, tokenizer, models.lora_config(cfg.model), "base"


def preference_dataset(rows: list[dict]):
    """Preference rows -> TRL's conversational preference format (prompt messages, chosen and rejected turns)."""
    from datasets import Dataset

    problem = data_problem(["rl"], "dpo", kind(rows))  # the data stage checked it; a notebook run by hand may not
    if problem:
        raise DataError(f"the train split: {problem}")
    return Dataset.from_list([{"prompt": messages(r), "chosen": [{"role": "assistant", "content": r["answer"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])


def train(cfg, run_dir: str | Path) -> dict:
    """Run the recipe's RL method on the train split; save the adapter (or model) to `<run_dir>/rl/`."""
    if launch.needed(cfg):
        return launch.train(cfg, run_dir, "rl")
    rows = rundir.load_split(run_dir, "train")
    if cfg.rl.method == "dpo":
        return _train_dpo(cfg, run_dir, rows)
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if cfg.rl.method == "grpo" else (RLOOConfig, RLOOTrainer)
    dataset = to_dataset(rows).remove_columns("completion").add_column("answer", [r["answer"] for r in rows])
    model, tokenizer, peft_config, start_from = _start(cfg, run_dir)
    functions, weights = rewards.build(cfg, run_dir)
    samples = SampleLog(cfg.rl.max_steps)
    vllm = {"use_vllm": True, "vllm_mode": "colocate"} if cfg.rl.use_vllm else {}
    args = training_args(cfg, cfg.rl, run_dir, "rl", config_cls,
                         per_device_train_batch_size=per_process(cfg, cfg.rl.batch_size),
                         num_generations=cfg.rl.num_generations,
                         beta=GRPO_BETA if cfg.rl.beta is None else cfg.rl.beta, temperature=cfg.rl.temperature,
                         max_completion_length=cfg.rl.max_completion_length, lr_scheduler_type="constant",
                         reward_weights=weights, **vllm)
    trainer = trainer_cls(model=model, reward_funcs=[samples.wrap(f) for f in functions], args=args,
                          train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    figures, history = fit(trainer, tokenizer, run_dir, "rl")
    if trainer.is_world_process_zero():
        samples.save(rundir.stage_file(run_dir, "rl", rundir.SAMPLES),
                     {f.__name__: w for f, w in zip(functions, weights)})
    rewards_seen = [h["reward"] for h in history if "reward" in h]
    return {"method": cfg.rl.method, "start_from": start_from, **figures,
            "rewards": {f.__name__: w for f, w in zip(functions, weights)},
            "first_reward": rewards_seen[0] if rewards_seen else None,
            "final_reward": rewards_seen[-1] if rewards_seen else None}


def _train_dpo(cfg, run_dir: str | Path, rows: list[dict]) -> dict:
    from trl import DPOConfig, DPOTrainer

    dataset = preference_dataset(rows)
    model, tokenizer, peft_config, start_from = _start(cfg, run_dir)
    args = training_args(cfg, cfg.rl, run_dir, "rl", DPOConfig,
                         per_device_train_batch_size=per_process(cfg, cfg.rl.batch_size),
                         beta=DPO_BETA if cfg.rl.beta is None else cfg.rl.beta, max_length=cfg.sft.max_length,
                         lr_scheduler_type="constant")
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    figures, history = fit(trainer, tokenizer, run_dir, "rl")
    logged = [h for h in history if "rewards/margins" in h]
    first, last = (logged[0], logged[-1]) if logged else ({}, {})
    return {"method": "dpo", "start_from": start_from, **figures,
            "first_margin": first.get("rewards/margins"), "final_margin": last.get("rewards/margins"),
            "first_accuracy": first.get("rewards/accuracies"), "final_accuracy": last.get("rewards/accuracies")}


if __name__ == "__main__":  # one of several processes started by `accelerate launch`
    launch.inside("rl", train)
