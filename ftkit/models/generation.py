"""Batched generation, shared by the eval and export stages: chat completions (or plain-text continuations) with
left padding, prompts sorted by length, greedy or sampled, cut at stop strings.
"""

from __future__ import annotations

import torch

from ftkit.core.rows import common_prefix

AUTO_BATCH_CAP = 128  # prompts a call at most: greedy replies to 200 addition questions (2 CPU cores, SmolLM2-135M)
# took 7.8 s in batches of 32, 7.3 in 64, 6.4 in 128 and 6.2 in one of 200


def auto_batch_size(model, tokens: int, rows_per_prompt: int = 1, logits_per_row: int = 1) -> int:
    """Prompts a call for `eval.batch_size: auto`: as many as a quarter of the free memory (the GPU's, or RAM) holds,
    at most AUTO_BATCH_CAP. A row costs its cache for `tokens` tokens (keys and values of every layer) and
    `logits_per_row` float32 rows of logits (with their softmax and the sampler's copy); a prompt, `rows_per_prompt`
    rows (its sampled replies)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(config, "num_attention_heads", 1) or 1
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    element = next(model.parameters()).element_size()
    cache = 2 * config.num_hidden_layers * kv_heads * head_dim * element * tokens
    row = cache + 3 * 4 * config.vocab_size * logits_per_row
    if model.device.type == "cuda":
        free = torch.cuda.mem_get_info(model.device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    return int(max(1, min(AUTO_BATCH_CAP, free / 4 // (row * rows_per_prompt))))


@torch.inference_mode()
def generate(model, tokenizer, conversations: list, batch_size: int | str, max_new_tokens: int,
             temperature: float = 0.0,
             samples: int = 1, stop: list[str] | tuple = (), progress=None, return_cut: bool = False,
             streamer=None):
    """Chat completions (plain-text continuations for string prompts), batched with left padding and prompts sorted
    by length to waste less padding. Greedy unless `temperature` > 0; with `samples` > 1 each output is a list of
    that many completions; `batch_size` "auto" sizes the batches by memory (`auto_batch_size`). A completion ends at
    the first of the `stop` strings (which is cut off). `progress(n)`
    is called after each batch with the number of prompts it finished. With `return_cut`, also whether each
    completion was cut at `max_new_tokens` (it had not ended: no end-of-sequence token, no stop string). A
    transformers `streamer` gets the tokens of a single prompt's reply as they come."""
    tokenizer.padding_side = "left"
    options = {"do_sample": temperature > 0, "num_return_sequences": samples}
    if temperature > 0:
        options.update(temperature=temperature, top_k=0, top_p=1.0)
    if stop:
        options.update(stop_strings=list(stop), tokenizer=tokenizer)
    if streamer is not None:
        if len(conversations) != 1 or samples != 1:
            raise ValueError("a streamer takes the reply to one prompt")
        options["streamer"] = streamer
    texts = [c if isinstance(c, str) else tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
             for c in conversations]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    if batch_size == "auto":
        longest = len(tokenizer(texts[order[-1]], add_special_tokens=False)["input_ids"]) if texts else 0
        batch_size = auto_batch_size(model, longest + max_new_tokens, samples)
    outputs: list = [None] * len(texts)
    cut: list = [None] * len(texts)
    ends = _end_ids(model, tokenizer)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        new = _new_tokens(model, tokenizer, [texts[i] for i in idx], samples, max_new_tokens, options, ends, stop)
        decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
        unended = (~torch.isin(new, ends.to(new.device)).any(dim=1)).tolist() if new.shape[1] >= max_new_tokens \
            else [False] * len(decoded)
        for k, i in enumerate(idx):
            rows = range(k * samples, (k + 1) * samples)
            texts_i = [cut_reply(decoded[r], stop) for r in rows]
            cut_i = [unended[r] and not any(marker in decoded[r] for marker in stop) for r in rows]
            outputs[i], cut[i] = (texts_i[0], cut_i[0]) if samples == 1 else (texts_i, cut_i)
        if progress is not None:
            progress(len(idx))
    return (outputs, cut) if return_cut else outputs


def _new_tokens(model, tokenizer, texts: list[str], samples: int, max_new_tokens: int, options: dict,
                ends: torch.Tensor, stop) -> torch.Tensor:
    """The new tokens of one batch's replies (`samples` rows a prompt, in order), padded."""
    batch = _encoded(model, tokenizer, texts, max_new_tokens)
    expanded = _prefilled_once(model, batch, samples) if samples > 1 else None
    if expanded is None and samples > 1 and _cache_key(batch):  # num_return_sequences cannot repeat a cache
        batch = _encoded(model, tokenizer, texts, max_new_tokens, share=False)
    if expanded or samples == 1:
        return _leaving(model, tokenizer, expanded or batch, max_new_tokens, {**options, "num_return_sequences": 1},
                        ends, stop)
    return model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                          **options)[:, batch["input_ids"].shape[1]:]


CHUNK = 8  # new tokens a generate call: between calls, the rows that ended leave the batch


def _leaving(model, tokenizer, inputs: dict, max_new_tokens: int, options: dict, ends: torch.Tensor,
             stop) -> torch.Tensor:
    """The new tokens of each row (padded), generated CHUNK at a time: rows that ended (an end token, a stop string)
    leave the batch and its cache between calls, the others go on from the cache. `generate` keeps every row of a
    batch until the last one ends, and replies differ in length (worked solutions: 22 tokens on average, 48 at most),
    so most of that work was for replies already over. Greedy replies are those of one call; where the model returns
    no cache that can drop rows, or a streamer is given, one call."""
    ids, mask, key = inputs["input_ids"], inputs["attention_mask"], _cache_key(inputs)
    cache, rows = inputs.get(key), list(range(len(ids)))
    pieces: list[list[torch.Tensor]] = [[] for _ in rows]
    done, ends = 0, ends.to(ids.device)
    step = max_new_tokens if "streamer" in options else CHUNK
    while rows and done < max_new_tokens:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=min(step, max_new_tokens - done),
                             pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True,
                             **({key: cache} if cache is not None else {}), **options)
        new = out.sequences[:, ids.shape[1]:]
        for k, row in enumerate(rows):
            pieces[row].append(new[k])
        done += new.shape[1]
        key, cache = returned_cache(out)
        if done >= max_new_tokens or cache is None or not hasattr(cache, "batch_select_indices"):
            break
        so_far = [torch.cat(pieces[row]) for row in rows]
        keep = [k for k, tokens in enumerate(so_far) if not torch.isin(tokens, ends).any() and not any(
            marker in tokenizer.decode(tokens, skip_special_tokens=True) for marker in stop)]
        if len(keep) < len(rows):
            cache.batch_select_indices(torch.tensor(keep, dtype=torch.long, device=ids.device))
        ids = out.sequences[keep]
        mask = torch.cat([mask, torch.ones_like(new)], dim=1)[keep]
        rows = [rows[k] for k in keep]
    replies = [torch.cat(p) for p in pieces]
    longest = max(len(r) for r in replies)
    pad = tokenizer.pad_token_id
    return torch.stack([torch.cat([r, r.new_full((longest - len(r),), pad)]) for r in replies])


MIN_SHARED = 8  # tokens: a shorter common prefix is not worth its own forward pass


def _encoded(model, tokenizer, texts: list[str], max_new_tokens: int, share: bool = True) -> dict:
    """The batch's inputs, left-padded. Where the prompts begin with the same tokens (a system prompt, few-shot
    examples, a task's wording: at least MIN_SHARED of them), that prefix is encoded once and its cache repeated for
    every prompt; the padding then sits between the shared prefix and each prompt's own tokens (masked, and positions
    follow the mask as for left padding). Not where the model attends within a window that the prompts and replies
    outgrow (the window counts the padding in the middle), nor without a cache the model can take: plain left
    padding then."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    window = attention_window(model)
    fits = window is None or max(map(len, ids)) + max_new_tokens <= window
    shared = min(common_prefix(ids), min(map(len, ids)) - 1) if share and fits and len(ids) > 1 else 0
    cache = prefix_cache(model, ids[0][:shared], len(ids)) if shared >= MIN_SHARED else None
    shared = shared if cache else 0
    width, pad = max(map(len, ids)), tokenizer.pad_token_id
    rows = [r[:shared] + [pad] * (width - len(r)) + r[shared:] for r in ids]
    mask = [[1] * shared + [0] * (width - len(r)) + [1] * (len(r) - shared) for r in ids]
    batch = {"input_ids": torch.tensor(rows, device=model.device),
             "attention_mask": torch.tensor(mask, device=model.device)}
    return {**batch, **cache} if cache else batch


def attention_window(model) -> int | None:
    """The smallest window of the model's local (sliding-window) attention layers, or None where every layer sees the
    whole sequence (Qwen2 names a window that `use_sliding_window: false` turns off)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    windows = []
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True) is not False:
        windows.append(config.sliding_window)
    if getattr(config, "window_size", None) and "local" in str(getattr(config, "attention_layers", "")):
        windows.append(config.window_size)  # GPT-Neo
    return min(windows, default=None)


def prefix_cache(model, prefix: list[int], rows: int) -> dict | None:
    """{cache argument name: the cache of `prefix` encoded once, repeated for `rows` prompts}, or None where the
    model's forward returns no cache that can be repeated."""
    out = model(input_ids=torch.tensor([prefix], device=model.device), use_cache=True)
    name, cache = returned_cache(out)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(rows)
    return {name: cache}


def _prefilled_once(model, batch: dict, samples: int) -> dict | None:
    """The inputs of `samples` completions per prompt with the prompts encoded once: their cache (all but the last
    token; after the shared prefix's cache where `batch` has one) computed for the batch, then repeated for each
    sample. `num_return_sequences` repeats the prompts before encoding them, so `samples` times the prompt's work:
    with short replies that was most of the time (4 sampled replies to 200 addition questions took 3.9x the greedy
    ones). Positions follow the attention mask, as `generate` sets them for left-padded prompts. None (generate as
    usual) for one-token prompts, or where the model's forward does not take position ids or returns no cache that
    can be repeated."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    known = _cache_key(batch)
    done = batch[known].get_seq_length() if known else 0
    if ids.shape[1] - done < 2:
        return None
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    try:
        out = model(input_ids=ids[:, done:-1], attention_mask=mask[:, :-1], position_ids=positions[:, done:-1],
                    use_cache=True, **({known: batch[known]} if known else {}))
    except TypeError:
        return None
    name, cache = returned_cache(out)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(samples)
    return {"input_ids": ids.repeat_interleave(samples, dim=0),
            "attention_mask": mask.repeat_interleave(samples, dim=0), name: cache}


def returned_cache(out) -> tuple[str, object]:
    """(the name generate and forward take it by, the cache) of a model output: transformers 5.x renames
    `past_key_values` to `cache`. The cache is None where the model returned none."""
    name = "cache" if getattr(out, "cache", None) is not None else "past_key_values"
    return name, getattr(out, name, None)


def _cache_key(inputs: dict) -> str | None:
    return next((k for k in ("cache", "past_key_values") if k in inputs), None)


def _end_ids(model, tokenizer) -> torch.Tensor:
    """The token ids that end a completion: the tokenizer's and the generation config's EOS, and padding."""
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return torch.tensor(sorted(i for i in ids if i is not None))


def cut_reply(text: str, stop) -> str:
    """A reply as eval keeps it: up to the first stop string, stripped."""
    for marker in stop:
        text = text.split(marker, 1)[0]
    return text.strip()


def continuation_prompt(text: str) -> str:
    """The first half of a text's words (at most 64), which a model continues in the plain-text examples."""
    words = text.split()
    return " ".join(words[:max(1, min(len(words) // 2, 64))])
