"""What a model's log-likelihoods say without generating: the loss of reference answers given their prompts (through
the chat template, as SFT trains them), of held-out preference pairs' two answers, of each class name as the whole
reply, and the perplexity of plain texts."""

from __future__ import annotations

import numpy as np
import torch

from ftkit.core import timing
from ftkit.core.rows import common_prefix, messages, trained_text
from ftkit.models.generation import MIN_SHARED, attention_window, auto_batch_size, prefix_cache


@torch.inference_mode()
@timing.timed("likelihoods")
def token_losses(model, tokenizer, texts: list[str], batch_size: int | str, max_length: int,
                 skip: list[int] | None = None) -> np.ndarray:
    """(summed negative log-likelihood, scored tokens) of each text, leaving out its first `skip[i]` tokens (the
    prompt, when scoring reference answers).

    Texts go through in batches of similar prompt length, and the model projects onto the vocabulary only the
    positions from the batch's shortest prompt on (`logits_to_keep`, where the model takes it): for short answers
    after long prompts most of the head's work, and of the float32 logits, was for prompt positions never scored."""
    tokenizer.padding_side = "right"
    model.eval()
    skip = skip or [0] * len(texts)
    if batch_size == "auto":  # every position's logits at worst, and the activations of a pass (as a cache would be)
        batch_size = auto_batch_size(model, max_length, logits_per_row=max_length)
    keeps = getattr(model, "_supports_logits_to_keep", lambda: False)()
    order = sorted(range(len(texts)), key=lambda i: (skip[i], len(texts[i])))
    out: list = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length, add_special_tokens=False).to(model.device)
        length = batch["input_ids"].shape[1]
        first = max(0, min(min(max(skip[i] - 1, 0) for i in idx), length - 2))  # position j predicts token j + 1
        logits = _scored_logits(model, batch, first, keeps)
        targets, mask = batch["input_ids"][:, first + 1:], batch["attention_mask"][:, first + 1:].clone()
        for row, i in enumerate(idx):
            mask[row, :max(skip[i] - 1 - first, 0)] = 0
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        for i, loss, count in zip(idx, (nll * mask).sum(1).tolist(), mask.sum(1).tolist()):
            out[i] = (loss, count)
    return np.asarray(out, dtype=float).reshape(len(texts), 2)


def _scored_logits(model, batch, first: int, keeps: bool) -> torch.Tensor:
    """float32 logits of positions `first` to the last but one. The tokens that every row begins with (up to
    `first`: a system prompt, the template's wording; at least MIN_SHARED of them) are encoded once and their cache
    repeated for every row, where the model's attention sees the whole sequence and it returns a cache."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    length, shared = ids.shape[1], 0
    if len(ids) > 1 and attention_window(model) is None:
        shared = min(first, common_prefix(ids.tolist()))
    cache = prefix_cache(model, ids[0, :shared].tolist(), len(ids)) if shared >= MIN_SHARED else None
    if cache is None:
        shared, cache = 0, {}
    positions = torch.arange(first - shared, length - 1 - shared, device=model.device)
    if keeps:
        return model(input_ids=ids[:, shared:], attention_mask=mask, logits_to_keep=positions, **cache).logits.float()
    return model(input_ids=ids[:, shared:], attention_mask=mask, **cache).logits[:, positions].float()


@timing.timed("likelihoods")
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
