"""RL stage: GRPO with TRL's GRPOTrainer, maximising the task's reward (which reuses its scorer).

Starts from the SFT adapter when the SFT stage ran in this run directory, else from the base model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ftkit import data, models, tasks
from ftkit.sft import fit, to_dataset, training_args


def checked_reward(fn, name: str):
    """Wrap a TRL reward so that a wrong length or a NaN stops training with a message naming it."""

    def reward(completions, **columns):
        values = fn(completions, **columns)
        if len(values) != len(completions):
            raise ValueError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
        bad = [v for v in values if v is None or (isinstance(v, float) and math.isnan(v))]
        if bad:
            raise ValueError(f"reward {name!r} returned {bad[0]!r}; a reward must be a number for every completion")
        return values

    reward.__name__ = name
    return reward


def train(cfg, run_dir: str | Path) -> dict:
    """Run GRPO on the train split; save the adapter to `<run_dir>/rl/adapter`."""
    from trl import GRPOConfig, GRPOTrainer

    run_dir = Path(run_dir)
    out = run_dir / "rl"
    task = tasks.for_data(cfg.data)
    rows = data.load_split(run_dir, "train")
    dataset = to_dataset(rows).remove_columns("completion").add_column("answer", [r["answer"] for r in rows])
    sft_model = models.tuned_dir(run_dir, "sft")
    if "sft" in cfg.stages and sft_model is None:
        raise FileNotFoundError(f"{run_dir / 'sft'} holds no adapter or model although the recipe runs SFT: run the "
                                "sft stage first")
    start_from = "sft" if "sft" in cfg.stages else "base"
    if start_from == "sft":
        model, tokenizer = models.load(cfg.model, tuned=sft_model, trainable=True)
        peft_config = None if sft_model.name == "adapter" else models.lora_config(cfg.model)
    else:
        model, tokenizer = models.load(cfg.model)
        peft_config = models.lora_config(cfg.model)
    args = training_args(cfg, cfg.rl, out / "checkpoints", GRPOConfig,
                         per_device_train_batch_size=cfg.rl.batch_size, num_generations=cfg.rl.num_generations,
                         beta=cfg.rl.beta, temperature=cfg.rl.temperature,
                         max_completion_length=cfg.rl.max_completion_length, lr_scheduler_type="constant")
    reward = checked_reward(task.reward, f"{task.name}_reward")
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config)
    figures, history = fit(trainer, tokenizer, out)
    rewards = [h["reward"] for h in history if "reward" in h]
    return {"method": cfg.rl.method, "start_from": start_from, **figures,
            "first_reward": rewards[0] if rewards else None, "final_reward": rewards[-1] if rewards else None}


def reward_curve(run_dir: str | Path):
    """Steps, reward means and reward stds from the RL stage's saved log history."""
    history = json.loads((Path(run_dir) / "rl" / "log_history.json").read_text())
    points = [(h["step"], h["reward"], h.get("reward_std", 0.0)) for h in history if "reward" in h]
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
