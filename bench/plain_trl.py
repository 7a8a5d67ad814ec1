"""The quickstart as a plain script: the same data, LoRA SFT, GRPO and evaluation with TRL, PEFT and transformers
directly, as a user would write it without ftkit. bench/overhead.py times it against `ftkit run`.

    python bench/plain_trl.py RECIPE OUT_DIR

Reads the settings from the recipe (the quickstart's) so both sides do the same work: the same examples (the
task's generator makes them), steps, batch sizes, learning rates, checkpoints every save_steps, and the same
evaluation of base, SFT and RL: greedy answers to the test, generalization and perturbed prompts, and the loss of
each reference answer, in the recipe's dtype (`auto`: bfloat16 where the CPU or GPU computes in it, as ftkit resolves
it; a plain script would set `bf16=True` and load the model in bfloat16 there). Prints the time of each phase and the
accuracies as JSON.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import torch
import yaml
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from ftkit.models.loader import DTYPES, dtype_name, resolve  # where the default model's offline copy is; dtype auto
from ftkit.recipe import ModelConfig
from ftkit.scoring.robustness import perturb  # the perturbed prompts (data only)
from ftkit.scoring.tasks import Addition  # the same questions

NUMBER = re.compile(r"-?\d+")


def correct(output: str, answer: str) -> float:
    found = NUMBER.search(output)
    return float(found is not None and found.group() == answer)


def chat(row):
    return [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["prompt"]}]


def reward(completions, answer, **_):
    return [correct(c[0]["content"], a) for c, a in zip(completions, answer)]


def generate(model, tokenizer, rows, batch_size, max_new_tokens):
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(chat(r), tokenize=False, add_generation_prompt=True) for r in rows]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    outputs = [None] * len(texts)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            for k, text in zip(idx, tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:],
                                                           skip_special_tokens=True)):
                outputs[k] = text
    return outputs


def answer_loss(model, tokenizer, rows, batch_size):
    tokenizer.padding_side = "right"
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            prompts = [tokenizer.apply_chat_template(chat(r), tokenize=False, add_generation_prompt=True) for r in part]
            full = [tokenizer.apply_chat_template(chat(r) + [{"role": "assistant", "content": r["answer"]}],
                                                  tokenize=False) for r in part]
            batch = tokenizer(full, return_tensors="pt", padding=True, add_special_tokens=False)
            labels = batch["input_ids"].clone()
            labels[batch["attention_mask"] == 0] = -100
            for i, p in enumerate(tokenizer(prompts, add_special_tokens=False)["input_ids"]):
                labels[i, :len(p)] = -100
            logits = model(**batch).logits[:, :-1]
            target = labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="sum",
                                                       ignore_index=-100)
            total, count = total + losses.item(), count + int((target != -100).sum())
    return total / max(count, 1)


def main() -> int:
    recipe_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = yaml.safe_load(recipe_path.read_text())
    seed, m, d, s, r, e = cfg["seed"], cfg["model"], cfg["data"], cfg["sft"], cfg["rl"], cfg["eval"]
    times, figures = {}, {}

    start = time.perf_counter()
    task = Addition()
    splits = task.splits(d["train_size"], d["test_size"], seed)
    train, test = splits["train"], splits["test"]
    if d.get("teacher_errors"):  # the recipe's careless teacher: the same wrong demonstrations; the reward checks the sum
        train, _ = task.careless(train, d["teacher_errors"], seed)
    shifted = task.shifted(100, seed)
    perturbed = [perturb(test[:50], kind, seed, task) for kind in ("typo", "case", "whitespace", "reword")]
    sft_data = Dataset.from_list([{"prompt": chat(x), "completion": [{"role": "assistant", "content": x["answer"]}]}
                                  for x in train])
    rl_data = Dataset.from_list([{"prompt": chat(x), "answer": x.get("verified", x["answer"])} for x in train])
    path = resolve(m["id"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    lora = LoraConfig(r=m["lora_r"], lora_alpha=m["lora_alpha"], target_modules="all-linear", task_type="CAUSAL_LM")
    dtype = DTYPES[dtype_name(ModelConfig(**m))]
    common = {"use_cpu": not torch.cuda.is_available(), "bf16": dtype == torch.bfloat16, "gradient_checkpointing": False,
              "report_to": "none", "disable_tqdm": True, "seed": seed, "data_seed": seed, "save_total_limit": 2}
    times["data"] = time.perf_counter() - start

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    trainer = SFTTrainer(model=model, train_dataset=sft_data, processing_class=tokenizer, peft_config=lora,
                         args=SFTConfig(output_dir=str(out / "sft"), max_steps=s["max_steps"],
                                        per_device_train_batch_size=s["batch_size"], learning_rate=s["learning_rate"],
                                        lr_scheduler_type=s["lr_scheduler"], logging_steps=5,
                                        save_steps=s["save_steps"], max_length=128, **common))
    trainer.train()
    trainer.save_model(str(out / "sft" / "adapter"))
    times["sft"] = time.perf_counter() - start

    start = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model = PeftModel.from_pretrained(base, str(out / "sft" / "adapter"), is_trainable=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], train_dataset=rl_data, processing_class=tokenizer,
                          args=GRPOConfig(output_dir=str(out / "rl"), max_steps=r["max_steps"],
                                          per_device_train_batch_size=r["batch_size"],
                                          num_generations=r["num_generations"], learning_rate=r["learning_rate"],
                                          beta=r["beta"], max_completion_length=r["max_completion_length"],
                                          temperature=1.0, lr_scheduler_type="constant", logging_steps=2,
                                          save_steps=r["save_steps"], **common))
    trainer.train()
    trainer.save_model(str(out / "rl" / "adapter"))
    times["rl"] = time.perf_counter() - start

    start = time.perf_counter()
    for name in e["models"]:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if name != "base":
            model = PeftModel.from_pretrained(model, str(out / name / "adapter")).merge_and_unload()
        scores = {}
        for label, rows in [("test", test), ("generalization", shifted)] + [(f"perturbed{i}", p)
                                                                           for i, p in enumerate(perturbed)]:
            outputs = generate(model, tokenizer, rows, e["batch_size"], e["max_new_tokens"])
            scores[label] = sum(correct(o, x["answer"]) for o, x in zip(outputs, rows)) / len(rows)
        scores["answer_loss"] = answer_loss(model, tokenizer, test, e["batch_size"])
        figures[name] = scores
    times["eval"] = time.perf_counter() - start
    print(json.dumps({"seconds": {k: round(v, 1) for k, v in times.items()}, "results": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
