"""RL stage: GRPO or RLOO (TRL) maximising the recipe's rewards, or DPO on preference pairs.

Starts from the SFT result when the recipe runs SFT (a LoRA adapter keeps training; the reference model, where one
is needed, is that SFT model: TRL keeps a frozen copy of the adapter, not a second model), else from the base model
with a fresh adapter (the reference is then the adapter-disabled base). Saves the adapter to `<run_dir>/rl/adapter`,
the log history and, for GRPO/RLOO, completions sampled at the first, middle and last step with each reward
(`rl/samples.jsonl`). In several processes, `accelerate launch ... -m ftkit.stages.rl RUN_DIR` runs `train` in each.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ftkit.core import rundir, timing
from ftkit.core.io import write_jsonl
from ftkit.core.rows import DataError, kind, messages, reward_columns, with_lengths
from ftkit.models import loader
from ftkit.models.generation import generate
from ftkit.recipe import data_problem, fitted
from ftkit.scoring import rewards
from ftkit.scoring.tasks.common import completion_text
from ftkit.training import launch
from ftkit.training import plan as training_plan
from ftkit.training.trainer import backing_off, fit, training_args

log = logging.getLogger(__name__)


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


def _start(cfg, run_dir: Path, copied: bool = False):
    """(model, tokenizer, peft_config, start_from): the SFT result when the recipe runs SFT, else the base.
    `copied`: the trainer copies the weights when it is built (DPO's and KTO's reference adapter), so every process
    reads them, sharded or not (`loader.load`'s `shapes_only`)."""
    sft_model = rundir.tuned_dir(run_dir, "sft")
    if "sft" in cfg.stages and sft_model is None:
        raise FileNotFoundError(f"{rundir.stage_dir(run_dir, 'sft')} holds no adapter or model although the recipe "
                                "runs SFT: run the sft stage first")
    if "sft" in cfg.stages:
        model, tokenizer = loader.load(cfg.model, tuned=sft_model, trainable=True, shapes_only=not copied)
        return model, tokenizer, None if sft_model.name == "adapter" else loader.lora_config(cfg.model), "sft"
    model, tokenizer = loader.load(cfg.model, shapes_only=not copied)
    return model, tokenizer, loader.lora_config(cfg.model), "base"


def preference_dataset(rows: list[dict]):
    """Preference rows -> TRL's conversational preference format (prompt messages, chosen and rejected turns)."""
    from datasets import Dataset

    problem = data_problem(["rl"], "dpo", kind(rows))  # the data stage checked it; a notebook run by hand may not
    if problem:
        raise DataError(f"the train split: {problem}")
    return Dataset.from_list([{"prompt": messages(r), "chosen": [{"role": "assistant", "content": r["answer"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])


def prompt_dataset(rows: list[dict]):
    """The prompts GRPO/RLOO sample from, as chat messages, with the columns their rewards read
    (`rows.reward_columns`: the reference answer where there is one, and data.keep_columns)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": messages(r), **columns} for r, columns in zip(rows, reward_columns(rows))])


def train(cfg, run_dir: str | Path) -> dict:
    """Run the recipe's RL method on the train split; save the adapter (or model) to `<run_dir>/rl/`."""
    if launch.needed(cfg):
        return launch.train(cfg, run_dir, "rl")
    # sft.max_length: auto as the data stage chose it; a smaller micro-batch after an out-of-memory error
    return backing_off(fitted(cfg, run_dir), "rl", run_dir, lambda cfg: _train(cfg, run_dir))


def _train(cfg, run_dir: str | Path) -> dict:
    rows = rundir.load_split(run_dir, "train")
    if cfg.rl.method == "dpo":
        return _train_dpo(cfg, run_dir, rows)
    if cfg.rl.method == "kto":
        return _train_kto(cfg, run_dir, rows)
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    config_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if cfg.rl.method == "grpo" else (RLOOConfig, RLOOTrainer)
    functions, weights = rewards.build(cfg, run_dir, rows)
    filtered = None
    if cfg.rl.filter_prompts:  # sampled from the starting model merged: several times faster than through the adapter
        start = rundir.tuned_dir(run_dir, "sft") if "sft" in cfg.stages else None
        sampler, tokenizer = loader.load(cfg.model, tuned=start, use="generation")
        cfg = with_lengths(cfg, rows, tokenizer)
        filtered = informative_prompts(cfg, sampler, tokenizer, rows, functions, weights)
        rows = filtered.pop("rows")
        del sampler
    model, tokenizer, peft_config, start_from = _start(cfg, run_dir)
    cfg = with_lengths(cfg, rows, tokenizer)  # after filtering only where it was resolved before: the whole train split
    dataset = prompt_dataset(rows)
    per_step = cfg.rl.batch_size // cfg.rl.num_generations
    samples = SampleLog(cfg.rl.steps(len(rows), per_step))
    vllm = {"use_vllm": True, "vllm_mode": "colocate"} if cfg.rl.use_vllm else {}
    grpo = {k: getattr(cfg.rl, k) for k in ("loss_type", "scale_rewards") if getattr(cfg.rl, k) is not None}
    plan = training_plan.for_stage(cfg, "rl", run_dir, len(rows))
    args = training_args(cfg, cfg.rl, run_dir, "rl", config_cls, plan, num_generations=cfg.rl.num_generations,
                         beta=cfg.rl.kl_beta, temperature=cfg.rl.temperature,
                         max_completion_length=cfg.rl.max_completion_length, lr_scheduler_type="constant",
                         reward_weights=weights, **grpo, **vllm)
    trainer = trainer_cls(model=model, reward_funcs=[timing.timed("rewards", samples.wrap(f)) for f in functions],
                          args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)
    figures, history = fit(trainer, tokenizer, run_dir, "rl")
    if trainer.is_world_process_zero():
        samples.save(rundir.stage_file(run_dir, "rl", rundir.SAMPLES),
                     {f.__name__: w for f, w in zip(functions, weights)})
    rewards_seen = [h["reward"] for h in history if "reward" in h]
    return {"method": cfg.rl.method, "start_from": start_from, **figures, "plan": plan,
            "prompts_per_step": per_step, "max_completion_length": cfg.rl.max_completion_length,
            "rewards": {f.__name__: w for f, w in zip(functions, weights)},
            "first_reward": rewards_seen[0] if rewards_seen else None,
            "final_reward": rewards_seen[-1] if rewards_seen else None,
            "signal": {**signal(history), **{f"{name}_seconds_per_step": round(figures["seconds_per_step"].get(name, 0.0), 2)
                                             for name in ("generation", "update")}},
            **({"prompt_filter": filtered} if filtered is not None else {})}


def signal(history: list[dict]) -> dict:
    """How much learning signal the steps carried, from TRL's log: the share of prompts whose completions all got the
    same reward (their advantage, and so their gradient, is zero), the reward's spread within a step, and the share
    of completions cut at max_completion_length.

    >>> signal([{"step": 1, "frac_reward_zero_std": 1.0, "reward_std": 0.0}, {"step": 2, "frac_reward_zero_std": 0.5}])
    {'logged_steps': 2, 'zero_spread_share': 0.75, 'steps_mostly_without_signal': 2, 'steps_without_signal': 1}
    """
    def mean(key):
        values = [h[key] for h in history if key in h and "step" in h]
        return round(sum(values) / len(values), 4) if values else None

    zero = [h["frac_reward_zero_std"] for h in history if "frac_reward_zero_std" in h]
    out = {"logged_steps": len(zero), "zero_spread_share": mean("frac_reward_zero_std"),
           "steps_mostly_without_signal": sum(z >= 0.5 for z in zero),
           "steps_without_signal": sum(z >= 1.0 for z in zero)}
    for key, name in (("completions/clipped_ratio", "clipped_share"), ("completions/mean_length", "mean_length")):
        if mean(key) is not None:
            out[name] = mean(key)
    return out


@timing.timed("filtering prompts")
def informative_prompts(cfg, model, tokenizer, rows: list[dict], functions, weights) -> dict:
    """Before training: sample `num_generations` completions for a pool of train prompts with the starting model
    (RL's own sampling settings), score them with the recipe's rewards, and keep the prompts whose completions got
    different rewards; the others (always or never solved) would give no gradient. The pool is 1.5 times the
    prompts training will draw (the sampling costs 1.5x RL's own), in a seeded order. With `filter_prompts: hard`,
    only the prompts the model mostly fails (mean reward in the lower half of its completions' range; pass rate at
    most 1/2 for a pass/fail reward) are kept, from a pool of 6 times. Returns the kept rows ("rows") and what was
    counted.

    Training then cycles through the kept prompts; the model changes as it trains, so a kept prompt may come to be
    solved every time (TRL's frac_reward_zero_std shows how often)."""
    import random

    start = time.perf_counter()
    per_step = cfg.rl.batch_size // cfg.rl.num_generations
    needed = cfg.rl.steps(len(rows), per_step) * per_step
    order = list(range(len(rows)))
    random.Random(cfg.seed).shuffle(order)
    hard = cfg.rl.filter_prompts == "hard"
    pool = [rows[i] for i in order[:min(len(rows), 6 * needed if hard else -(-3 * needed // 2))]]
    k = cfg.rl.num_generations
    outputs = generate(model, tokenizer, [messages(r) for r in pool], cfg.eval.batch_size,
                       cfg.rl.max_completion_length, temperature=cfg.rl.temperature, samples=k)
    kept, no_spread = [], {}
    for row, texts in zip(pool, outputs):
        totals, _ = rewards.score_replies(functions, weights, [row] * k, texts)
        if max(totals) > min(totals):
            if not hard or sum(totals) / k <= (max(totals) + min(totals)) / 2:
                kept.append(row)
            else:
                no_spread["mostly solved"] = no_spread.get("mostly solved", 0) + 1
        else:
            key = f"{totals[0]:g}"
            no_spread[key] = no_spread.get(key, 0) + 1
    figures = {"pool": len(pool), "samples_per_prompt": k, "kept": len(kept), "no_spread": no_spread,
               "mode": "hard" if hard else "spread",
               "seconds": round(time.perf_counter() - start, 1)}
    if len(kept) < cfg.rl.batch_size // k:
        log.warning("only %d of %d prompts gave different rewards; training on the whole pool", len(kept), len(pool))
        kept, figures["fell_back_to_pool"] = pool, True
    return {**figures, "rows": kept}


def _train_offline(cfg, run_dir: str | Path, dataset, config_cls, trainer_cls) -> tuple[dict, dict, dict]:
    """DPO or KTO on a fixed dataset from the starting model, the reference being that model: (figures, first and
    last logged entries with a margin)."""
    model, tokenizer, peft_config, start_from = _start(cfg, run_dir, copied=True)
    plan = training_plan.for_stage(cfg, "rl", run_dir, len(dataset))  # a pass holds chosen and rejected (KTO: KL pair)
    args = training_args(cfg, cfg.rl, run_dir, "rl", config_cls, plan, beta=cfg.rl.kl_beta,
                         max_length=cfg.sft.max_length, lr_scheduler_type="constant")
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config)
    figures, history = fit(trainer, tokenizer, run_dir, "rl")
    logged = [h for h in history if "rewards/margins" in h]
    first, last = (logged[0], logged[-1]) if logged else ({}, {})
    return {"method": cfg.rl.method, "start_from": start_from, **figures, "plan": plan,
            "first_margin": first.get("rewards/margins"), "final_margin": last.get("rewards/margins")}, first, last


def _train_dpo(cfg, run_dir: str | Path, rows: list[dict]) -> dict:
    from trl import DPOConfig, DPOTrainer

    figures, first, last = _train_offline(cfg, run_dir, preference_dataset(rows), DPOConfig, DPOTrainer)
    return {**figures, "first_accuracy": first.get("rewards/accuracies"),
            "final_accuracy": last.get("rewards/accuracies")}


def feedback_dataset(rows: list[dict]):
    """Feedback rows (or preference pairs, unpaired: the chosen answer desirable, the rejected one not) -> TRL's
    conversational unpaired-preference format (prompt messages, completion turn, label)."""
    from datasets import Dataset

    problem = data_problem(["rl"], "kto", kind(rows))
    if problem:
        raise DataError(f"the train split: {problem}")
    labelled = []
    for row in rows:
        if "label" in row:
            labelled.append((row, row["answer"], bool(row["label"])))
        else:
            labelled += [(row, row["answer"], True), (row, row["rejected"], False)]
    return Dataset.from_list([{"prompt": messages(row), "completion": [{"role": "assistant", "content": answer}],
                               "label": label} for row, answer, label in labelled])


def _train_kto(cfg, run_dir: str | Path, rows: list[dict]) -> dict:
    from trl import KTOConfig, KTOTrainer

    dataset = feedback_dataset(rows)
    figures, _, _ = _train_offline(cfg, run_dir, dataset, KTOConfig, KTOTrainer)
    desirable = sum(dataset["label"])
    return {**figures, "desirable": desirable, "undesirable": len(dataset) - desirable}


if __name__ == "__main__":  # one of several processes started by `accelerate launch`
    launch.inside("rl", train)
