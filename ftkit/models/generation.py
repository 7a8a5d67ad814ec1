"""Batched generation, shared by the eval and export stages: chat completions (or plain-text continuations) with
left padding, prompts sorted by length, greedy or sampled, cut at stop strings.
"""

from __future__ import annotations

import torch


@torch.inference_mode()
def generate(model, tokenizer, conversations: list, batch_size: int, max_new_tokens: int, temperature: float = 0.0,
             samples: int = 1, stop: list[str] | tuple = (), progress=None, return_cut: bool = False):
    """Chat completions (plain-text continuations for string prompts), batched with left padding and prompts sorted
    by length to waste less padding. Greedy unless `temperature` > 0; with `samples` > 1 each output is a list of
    that many completions. A completion ends at the first of the `stop` strings (which is cut off). `progress(n)`
    is called after each batch with the number of prompts it finished. With `return_cut`, also whether each
    completion was cut at `max_new_tokens` (it had not ended: no end-of-sequence token, no stop string)."""
    tokenizer.padding_side = "left"
    options = {"do_sample": temperature > 0, "num_return_sequences": samples}
    if temperature > 0:
        options.update(temperature=temperature, top_k=0, top_p=1.0)
    if stop:
        options.update(stop_strings=list(stop), tokenizer=tokenizer)
    texts = [c if isinstance(c, str) else tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
             for c in conversations]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    outputs: list = [None] * len(texts)
    cut: list = [None] * len(texts)
    ends = _end_ids(model, tokenizer)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(model.device)
        generated = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                   **options)
        new = generated[:, batch["input_ids"].shape[1]:]
        decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
        unended = (~torch.isin(new, ends.to(new.device)).any(dim=1)).tolist() if new.shape[1] >= max_new_tokens \
            else [False] * len(decoded)
        for k, i in enumerate(idx):
            rows = range(k * samples, (k + 1) * samples)
            texts_i = [_cut(decoded[r], stop) for r in rows]
            cut_i = [unended[r] and not any(marker in decoded[r] for marker in stop) for r in rows]
            outputs[i], cut[i] = (texts_i[0], cut_i[0]) if samples == 1 else (texts_i, cut_i)
        if progress is not None:
            progress(len(idx))
    return (outputs, cut) if return_cut else outputs


def _end_ids(model, tokenizer) -> torch.Tensor:
    """The token ids that end a completion: the tokenizer's and the generation config's EOS, and padding."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return torch.tensor(sorted(i for i in ids if i is not None))


def _cut(text: str, stop) -> str:
    for marker in stop:
        text = text.split(marker, 1)[0]
    return text.strip()


def continuation_prompt(text: str) -> str:
    """The first half of a text's words (at most 64), which a model continues in the plain-text examples."""
    words = text.split()
    return " ".join(words[:max(1, min(len(words) // 2, 64))])
