"""What a model's log-likelihoods say without generating: the loss of reference answers given their prompts (through
the chat template, as SFT trains them), of held-out preference pairs' two answers, of each class name as the whole
reply, and the perplexity of plain texts."""

from __future__ import annotations

import numpy as np
import torch

from ftkit.core.rows import messages, trained_text


@torch.inference_mode()
def token_losses(model, tokenizer, texts: list[str], batch_size: int, max_length: int,
                 skip: list[int] | None = None) -> np.ndarray:
    """(summed negative log-likelihood, scored tokens) of each text, leaving out its first `skip[i]` tokens (the
    prompt, when scoring reference answers)."""
    tokenizer.padding_side = "right"
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length, add_special_tokens=False).to(model.device)
        logits = model(**batch).logits[:, :-1].float()
        targets, mask = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].clone()
        for row, k in enumerate((skip or [0] * len(texts))[start:start + batch_size]):
            mask[row, :max(k - 1, 0)] = 0  # position j predicts token j + 1
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        out += zip((nll * mask).sum(1).tolist(), mask.sum(1).tolist())
    return np.asarray(out, dtype=float)


def answer_losses(model, tokenizer, rows: list[dict], batch_size: int, max_length: int) -> np.ndarray:
    """Loss of each reference answer given its prompt, through the chat template, as SFT trains it."""
    prompts = [tokenizer.apply_chat_template(messages(r), tokenize=False, add_generation_prompt=True) for r in rows]
    skip = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    return token_losses(model, tokenizer, [trained_text(r, tokenizer) for r in rows], batch_size, max_length, skip)


def preference_log_likelihoods(model, tokenizer, rows: list[dict], batch_size: int, max_length: int) -> np.ndarray:
    """Summed log-likelihood of each held-out pair's chosen and rejected answer given its prompt: shape (n, 2)."""
    chosen = answer_losses(model, tokenizer, rows, batch_size, max_length)[:, 0]
    rejected = answer_losses(model, tokenizer, [{**r, "answer": r["rejected"]} for r in rows], batch_size,
                             max_length)[:, 0]
    return -np.stack([chosen, rejected], axis=1)


def class_log_likelihoods(model, tokenizer, rows: list[dict], names: list[str], batch_size: int,
                          max_length: int) -> np.ndarray:
    """Summed log-likelihood of each class name as the whole reply to each row (its end-of-turn token included),
    through the chat template: shape (n, classes)."""
    return -np.stack([answer_losses(model, tokenizer, [{**r, "answer": n} for r in rows], batch_size, max_length)[:, 0]
                      for n in names], axis=1)
