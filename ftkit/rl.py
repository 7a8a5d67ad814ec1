"""RL stage: GRPO or RLOO (TRL) maximising the recipe's rewards, or DPO on preference pairs.

Starts from the SFT result when the recipe runs SFT (a LoRA adapter keeps training; the reference model, where one
is needed, is that SFT model: TRL keeps a frozen copy of the adapter, not a second model), else from the base model
with a fresh adapter (the reference is then the adapter-disabled base).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ftkit import data, launch, models, rewards
from ftkit.io import write_atomic
from ftkit.sft import fit, per_process, to_dataset, training_args
from ftkit.tasks.common import completion_text

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
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _start(cfg, run_dir: Path):
    """(model, tokenizer, peft_config, start_from): the SFT result when the recipe runs SFT, else the base."""
    sft_model = models.tuned_dir(run_dir, "sft")
    if "sft" in cfg.stages and sft_model is None:
        raise FileNotFoundError(f"{run_dir / 'sft'} holds no adapter or model although the recipe runs SFT: run the "
                                "sft stage first")
    if "sft" in cfg.stages:
        model, tokenizer = models.load(cfg.model, tuned=sft_model, trainable=True)
        return model, tokenizer, None if sft_model.name == "adapter" else models.lora_config(cfg.model), "sft"
    model, tokenizer = models.load(cfg.model)
    return model, tokenizer, models.lora_config(cfg.model), "base"


def preference_dataset(rows: list[dict]):
    """Preference rows -> TRL's conversational preference format (prompt messages, chosen and rejected turns)."""
    from datasets import Dataset

    missing = [i for i, r in enumerate(rows) if not r.get("rejected")]
    if missing:
        raise ValueError(f"rl.method dpo needs a rejected answer on every train row; row {missing[0]} has none: use "
                         "data with prompt/chosen/rejected columns (data.format: preference)")
    return Dataset.from_list([{"prompt": data.messages(r), "chosen": [{"role": "assistant", "content": r["answer"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])


def train(cfg, run_dir: str | Path) -> dict:
    """Run the recipe's RL method on the train split; save the adapter (or model) to `<run_dir>/rl/`."""
    if launch.needed(cfg):
        return launch.train(cfg, run_dir, "rl")
    run_dir = Path(run_dir)
    out = run_dir / "rl"
    rows = data.load_split(run_dir, "train")
    if cfg.rl.method == "dpo":
        return _train_dpo(cfg, run_dir, out, rows)
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if cfg.rl.method == "grpo" else (RLOOConfig, RLOOTrainer)
    dataset = to_dataset(rows).remove_columns("completion").add_column("answer", [r["answer"] for r in rows])
    model, tokenizer, peft_config, start_from = _start(cfg, run_dir)
    functions, weights = rewards.build(cfg, run_dir)
    samples = SampleLog(cfg.rl.max_steps)
    vllm = {"use_vllm": True, "vllm_mode": "colocate"} if cfg.rl.use_vllm else {}
    args = training_args(cfg, cfg.rl, out / "checkpoints", config_cls,
                         per_device_train_batch_size=per_process(cfg, cfg.rl.batch_size), num_generations=cfg.rl.num_generations,
                         beta=GRPO_BETA if cfg.rl.beta is None else cfg.rl.beta, temperature=cfg.rl.temperature,
                         max_completion_length=cfg.rl.max_completion_length, lr_scheduler_type="constant",
                         reward_weights=weights, **vllm)
    trainer = trainer_cls(model=model, reward_funcs=[samples.wrap(f) for f in functions], args=args,
                          train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    figures, history = fit(trainer, tokenizer, out, cfg)
    if trainer.is_world_process_zero():
        samples.save(out / "samples.jsonl", {f.__name__: w for f, w in zip(functions, weights)})
    rewards_seen = [h["reward"] for h in history if "reward" in h]
    return {"method": cfg.rl.method, "start_from": start_from, **figures,
            "rewards": {f.__name__: w for f, w in zip(functions, weights)},
            "first_reward": rewards_seen[0] if rewards_seen else None,
            "final_reward": rewards_seen[-1] if rewards_seen else None}


def _train_dpo(cfg, run_dir: Path, out: Path, rows: list[dict]) -> dict:
    from trl import DPOConfig, DPOTrainer

    dataset = preference_dataset(rows)
    model, tokenizer, peft_config, start_from = _start(cfg, run_dir)
    args = training_args(cfg, cfg.rl, out / "checkpoints", DPOConfig,
                         per_device_train_batch_size=per_process(cfg, cfg.rl.batch_size),
                         beta=DPO_BETA if cfg.rl.beta is None else cfg.rl.beta, max_length=cfg.sft.max_length,
                         lr_scheduler_type="constant")
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    figures, history = fit(trainer, tokenizer, out, cfg)
    logged = [h for h in history if "rewards/margins" in h]
    first, last = (logged[0], logged[-1]) if logged else ({}, {})
    return {"method": "dpo", "start_from": start_from, **figures,
            "first_margin": first.get("rewards/margins"), "final_margin": last.get("rewards/margins"),
            "first_accuracy": first.get("rewards/accuracies"), "final_accuracy": last.get("rewards/accuracies")}


CURVES = {"grpo": ["reward", "rewards/*", "kl", "completions/mean_length", "loss"],
          "rloo": ["reward", "rewards/*", "kl", "completions/mean_length", "loss"],
          "dpo": ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "loss"]}


def curves(run_dir: str | Path) -> dict[str, tuple[list, list]]:
    """Every logged RL series worth plotting: name -> (steps, values). GRPO/RLOO: total reward, each reward
    function, KL to the reference, completion length, loss; DPO: chosen/rejected rewards, margin, accuracy, loss."""
    history = json.loads((Path(run_dir) / "rl" / "log_history.json").read_text())
    method = "dpo" if any("rewards/margins" in h for h in history) else "grpo"
    series = defaultdict(lambda: ([], []))
    for entry in history:
        for key, value in entry.items():
            wanted = key in CURVES[method] or (method != "dpo" and key.startswith("rewards/") and key.endswith("/mean"))
            if wanted and isinstance(value, (int, float)) and "step" in entry:
                series[key][0].append(entry["step"])
                series[key][1].append(value)
    return {k: series[k] for k in sorted(series, key=lambda k: (k != "reward", k))}


def reward_curve(run_dir: str | Path):
    """Steps, reward means and reward stds from the RL stage's saved log history."""
    history = json.loads((Path(run_dir) / "rl" / "log_history.json").read_text())
    points = [(h["step"], h["reward"], h.get("reward_std", 0.0)) for h in history if "reward" in h]
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def samples(run_dir: str | Path):
    """The sampled completions with their rewards (a DataFrame; empty for DPO)."""
    import pandas as pd

    path = Path(run_dir) / "rl" / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return pd.DataFrame(rows)
