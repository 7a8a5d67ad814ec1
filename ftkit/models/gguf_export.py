"""GGUF files of a merged model, for llama.cpp and Ollama, written with the `gguf` package (llama.cpp's own Python
library, from PyPI; ftkit already reads GGUF through it).

A file holds the weights, the architecture's hyperparameters, the tokenizer (its vocabulary, merges, token types and
special tokens, and which of llama.cpp's pre-tokenizers splits text as it does) and the chat template. Types:
  f16, bf16  every matrix in that type; norms and biases stay float32, as llama.cpp keeps them;
  q8_0       matrices in blocks of 32 weights (8-bit integers and a float16 scale a block, 8.5 bits a weight);
             a matrix whose rows do not split into blocks of 32 stays f16;
  q4_k_m, q5_k_m, q6_k  llama.cpp's k-quants, made by llama.cpp's own quantizer from an f16 file where its Python
             bindings are installed (the `gguf` extra); it chooses each tensor's type as its llama-quantize tool does.
Llama and Mistral rotate each attention head's two halves where llama.cpp rotates neighbouring pairs, so their query
and key rows are reordered as llama.cpp's converter does (transformers' GGUF loader reorders them back). Mistral is
written as llama.cpp's `llama`, as llama.cpp's converter writes it; transformers reads it back as a Llama model, the
same computation but for Mistral's sliding window (4,096 tokens in Mistral 7B v0.1; none from v0.2 on). Gemma 3's
norms scale by 1 + weight; GGUF stores 1 + weight, as llama.cpp's converter writes it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

# transformers' model_type -> GGUF's architecture
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3"}
SHIFTED_NORMS = {"gemma3_text"}  # norms that scale by 1 + weight: GGUF stores 1 + weight, as llama.cpp's converter
PERMUTED = {"llama", "mistral"}  # query/key rows reordered for llama.cpp's rotary layout
WRITTEN = ("f16", "bf16", "q8_0")  # written here with the gguf package
QUANTIZED = {"q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}  # llama_ftype: made from an f16 file by llama.cpp's quantizer
TYPES = (*WRITTEN, *QUANTIZED)
BLOCK = 32  # weights a q8_0 block


class Unsupported(ValueError):
    """The model (its architecture, rotary scaling or tokenizer) cannot be written as GGUF here."""


def refusal(config) -> str | None:
    """Why `config`'s model cannot be written as GGUF by ftkit, or None where it can."""
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        return (f"model_type {kind!r} cannot be written as GGUF by ftkit; supported: "
                f"{', '.join(ARCHITECTURES)} (SmolLM2, Llama 2 and 3, Mistral, Qwen2 and 2.5, Gemma 3 up to 12B)")
    rope = _global_rope(config)
    scaling = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if scaling not in ("default", None):
        return (f"rotary scaling {scaling!r} (config.json rope_scaling) is not written by ftkit's GGUF export: "
                "only models with plain rotary embeddings are")
    if kind == "gemma3_text":
        return _gemma3_refusal(config)
    return None


def _global_rope(config) -> dict:
    """The rotary settings of the layers that attend over the whole sequence (Gemma 3 keeps one set per layer type)."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return rope.get("full_attention", rope) if isinstance(rope, dict) else {}


def _gemma3_refusal(config) -> str | None:
    """llama.cpp runs Gemma 3 with every sixth layer global and attention scaled by 1/sqrt(head_dim), as Gemma 3's
    270M to 12B models are; GGUF has no field for other choices (Gemma 3 27B scales by hidden size / heads)."""
    pattern = [("full_attention" if (i + 1) % 6 == 0 else "sliding_attention")
               for i in range(config.num_hidden_layers)]
    if list(getattr(config, "layer_types", pattern)) != pattern:
        return "Gemma 3 layers other than five local then one global cannot be written as GGUF by ftkit"
    if config.query_pre_attn_scalar != config.head_dim:
        return (f"Gemma 3 with query_pre_attn_scalar {config.query_pre_attn_scalar} (not head_dim "
                f"{config.head_dim}) cannot be written as GGUF by ftkit: llama.cpp scales by head_dim")
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "attn_logit_softcapping", None):
        return "Gemma 3 with logit soft-capping cannot be written as GGUF by ftkit"
    return None


def write(model, tokenizer, path: str | Path, kind: str, name: str) -> dict:
    """Write `model` (a merged causal LM) with `tokenizer` to `path` as GGUF of type `kind` (one of TYPES: the
    k-quants through llama.cpp's own quantizer, from an f16 file written first); returns what went in (tensors per
    type as the file holds them, the pre-tokenizer, the bytes written)."""
    if kind not in TYPES:
        raise Unsupported(f"GGUF type {kind!r}: choose from {', '.join(TYPES)}")
    reason = refusal(model.config)
    if reason:
        raise Unsupported(reason)
    path = Path(path)
    if kind in QUANTIZED:
        full = path.with_name(path.name + ".f16.partial")
        try:
            pre = _written(model, tokenizer, full, "f16", name)
            quantize(full, path, kind)
        finally:
            full.unlink(missing_ok=True)
    else:
        pre = _written(model, tokenizer, path, kind, name)
    return {"type": kind, "tensor_types": tensor_types(path), "pre_tokenizer": pre, "bytes": path.stat().st_size}


def _written(model, tokenizer, path: Path, kind: str, name: str) -> str:
    """Write the file with the gguf package; returns the pre-tokenizer's name."""
    import gguf

    config = model.config
    arch = ARCHITECTURES[config.model_type]
    writer = gguf.GGUFWriter(str(path), arch, use_temp_file=True)  # tensors spool to disk as they are added
    writer.add_name(name)
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _hyperparameters(writer, config)
    vocab = _vocabulary(tokenizer, config.vocab_size)
    _tokenizer_fields(writer, tokenizer, vocab)
    _tensors(writer, model, arch, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return vocab["pre"]


def tensor_types(path: str | Path) -> dict[str, int]:
    """How many of the file's tensors are stored in each GGML type."""
    import gguf

    return dict(Counter(t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors))


def has_quantizer() -> bool:
    """Whether llama.cpp's quantizer (its Python bindings, the `gguf` extra) is installed."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def quantize(source: Path, dest: Path, kind: str) -> None:
    """llama.cpp's own quantizer (`llama_model_quantize`, as its llama-quantize tool runs it): `source` (f16) to
    `dest` in `kind`, one of QUANTIZED."""
    import logging

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZED[kind]
    params.nthread = torch.get_num_threads()
    bindings = logging.getLogger("llama-cpp-python")  # their log callback prints a line a tensor below ERROR
    level, _ = bindings.level, bindings.setLevel(logging.ERROR)
    try:
        if llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not quantize {source.name} to {kind}")
    finally:
        bindings.setLevel(level)


def _hyperparameters(writer, config) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = _global_rope(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if config.model_type == "gemma3_text":
        writer.add_sliding_window(config.sliding_window)


def _tensors(writer, model, arch: str, kind: str) -> None:
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # transformers and llama.cpp take the embeddings for the head where the file has no output
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise Unsupported(f"no GGUF name for the tensor {hf_name} of a {config.model_type} model")
        data = tensor.detach().to("cpu", torch.float32).numpy()
        if config.model_type in PERMUTED and name.endswith(("attn_q.weight", "attn_k.weight")):
            data = rotary_order(data, heads if "attn_q" in name else kv_heads)
        if config.model_type in SHIFTED_NORMS and name.endswith("norm.weight"):
            data = data + 1.0
        data, qtype = _encoded(data, kind)
        writer.add_tensor(name, data, raw_dtype=qtype)


def rotary_order(weights: np.ndarray, heads: int) -> np.ndarray:
    """A query or key projection's rows reordered from each head's (first half, second half) pairing of rotary
    dimensions to llama.cpp's neighbouring pairs: within a head, row i of the first half and row i of the second
    half become rows 2i and 2i + 1.

    >>> rotary_order(np.arange(8).reshape(8, 1), 2).ravel().tolist()
    [0, 2, 1, 3, 4, 6, 5, 7]
    """
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _encoded(data: np.ndarray, kind: str):
    """(the tensor as the file stores it, its GGML type)."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if data.ndim < 2:
        return data.astype(np.float32), Q.F32
    if kind == "q8_0" and data.shape[-1] % BLOCK == 0:
        return gguf.quants.quantize(data, Q.Q8_0), Q.Q8_0
    if kind == "bf16":
        return gguf.quants.quantize(data, Q.BF16), Q.BF16
    return data.astype(np.float16), Q.F16


def _vocabulary(tokenizer, size: int) -> dict:
    """The tokenizer as GGUF states it: `gpt2` (byte-level BPE: SmolLM2, Llama 3, Qwen2) or `llama` (BPE over
    SentencePiece pieces with byte fallback: Llama 2, Mistral), every id up to the model's vocabulary size (rows
    beyond the tokenizer's are written as unused [PAD<i>] tokens, as llama.cpp's converter does)."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise Unsupported(f"a {model.get('type')} tokenizer cannot be written as GGUF by ftkit: only BPE ones "
                          "(byte-level, or SentencePiece pieces with byte fallback)")
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) + json.dumps(spec.get("decoder"))
    if not byte_level and not model.get("byte_fallback"):
        raise Unsupported("a BPE tokenizer that is neither byte-level nor falls back to bytes cannot be written as "
                          "GGUF by ftkit")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    T = gguf.TokenType
    for i in range(max(size, len(by_id))):
        token = by_id.get(i)
        tokens.append(token if token is not None else f"[PAD{i}]")
        types.append(T.UNUSED if token is None else (T.CONTROL if added[i].special else T.USER_DEFINED)
                     if i in added else T.BYTE if not byte_level and _is_byte_piece(token) else T.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"model": "gpt2" if byte_level else "llama", "tokens": tokens, "types": types, "merges": merges,
            "pre": pre_tokenizer_name(spec) if byte_level else "default",
            "space_prefix": '"Prepend"' in json.dumps(spec.get("normalizer")) or '"prepend_scheme": "always"' in
            json.dumps(spec.get("pre_tokenizer"))}  # Llama 2 puts "▁" before a text, Gemma does not


def _is_byte_piece(token: str) -> bool:
    return len(token) == 6 and token.startswith("<0x") and token.endswith(">")


def pre_tokenizer_name(spec: dict) -> str:
    """Which of llama.cpp's pre-tokenizers splits text as the tokenizer (`tokenizer.json` as a dict) does:
    GPT-2's rule, SmolLM's (digits one by one, then GPT-2's), or a regular expression that transformers' GGUF reader
    also knows by name (Llama 3, Qwen2, ...); "default" where none is recognised (llama.cpp then warns that its
    tokenization may differ)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    regex = next((s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"), None)
    return next((name for name, known in GGUF_PRE_TOKENIZER_SPLITS.items() if known == regex), "default")


def _tokenizer_fields(writer, tokenizer, vocab: dict) -> None:
    writer.add_tokenizer_model(vocab["model"])
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types([int(t) for t in vocab["types"]])
    if vocab["model"] == "llama":  # SentencePiece-style: llama.cpp merges by score, the later piece the lower
        writer.add_token_scores([0.0 if t != 1 else -float(i) for i, t in enumerate(vocab["types"])])
        writer.add_add_space_prefix(vocab["space_prefix"])
    if vocab["merges"]:
        writer.add_token_merges(vocab["merges"])
    for token, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                       ("pad", writer.add_pad_token_id), ("unk", writer.add_unk_token_id)):
        token_id = getattr(tokenizer, f"{token}_token_id", None)
        if token_id is not None:
            add(token_id)
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id])
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


# Ollama renders prompts with Go templates, not Jinja. For the chat formats below, the Modelfile carries the Go
# template that writes the same text as the model's Jinja template; `ollama_template` checks that on a probe
# conversation before using one. For any other template the Modelfile has none, and Ollama falls back on the GGUF's own
# chat template, which it can read for the formats it knows.
CHATML_GO = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
             "<|im_start|>assistant\n")
HEADERS_GO = ("{{- range .Messages }}### {{ if eq .Role \"user\" }}User{{ else if eq .Role \"assistant\" }}Assistant"
              "{{ else if eq .Role \"system\" }}System{{ else }}{{ .Role }}{{ end }}:\n{{ .Content }}EOS\n{{ end }}"
              "### Assistant:\n")
PROBE = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3 + 3?"}]


def _chatml(turns: list[dict]) -> str:
    return "".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in turns) + "<|im_start|>assistant\n"


def _headers(turns: list[dict], eos: str) -> str:
    return "".join(f"### {t['role'].capitalize()}:\n{t['content']}{eos}\n" for t in turns) + "### Assistant:\n"


def ollama_template(tokenizer) -> tuple[str | None, str | None, list[str]]:
    """(Go template, the system prompt the Jinja template adds when a conversation has none, stop strings) for the
    tokenizer's chat template; (None, None, [eos]) where its format is not one whose Go form ftkit writes."""
    def render(turns):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    text, eos = render(PROBE), tokenizer.eos_token or ""
    bos = tokenizer.bos_token or ""
    unprompted = render(PROBE[1:])
    if text == _chatml(PROBE):
        implied = None
        if unprompted.startswith("<|im_start|>system\n") and unprompted != _chatml(PROBE[1:]):
            implied = unprompted.removeprefix("<|im_start|>system\n").split("<|im_end|>", 1)[0]
        return CHATML_GO, implied, ["<|im_end|>"]
    for lead in dict.fromkeys([bos, ""]):
        if text == lead + _headers(PROBE, eos):
            return lead + HEADERS_GO.replace("EOS", eos), None, [eos, "### User:"]
    return None, None, [eos] if eos else []


def modelfile(gguf_name: str, tokenizer, system: str | None, temperature: float, max_new_tokens: int,
              stop: list[str]) -> str:
    """An Ollama Modelfile for the GGUF file `gguf_name` beside it: the chat template in Go's form, the system prompt,
    the stop strings and the run's generation settings (`ollama create NAME -f Modelfile`)."""
    template, implied, stops = ollama_template(tokenizer)
    lines = [f"FROM ./{gguf_name}"]
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        lines.append("# no TEMPLATE: the chat template is not one ftkit writes in Go's form; Ollama uses the GGUF's")
    if system or implied:
        lines.append(f'SYSTEM """{system or implied}"""')
    for marker in dict.fromkeys([*stops, *stop]):
        lines.append(f"PARAMETER stop {json.dumps(marker)}")
    lines += [f"PARAMETER temperature {temperature:g}", f"PARAMETER num_predict {max_new_tokens}"]
    return "\n".join(lines) + "\n"


@torch.inference_mode()
def logit_agreement(reference, model, ids: list[list[int]]) -> dict:
    """Both models' float32 logits over the same token ids (each sequence on its own, no padding): the largest
    absolute difference, that difference over the reference logits' standard deviation, and the share of positions
    where both rank the same token first."""
    worst, spread, same, positions = 0.0, [], 0, 0
    for row in ids:
        tokens = torch.tensor([row], device=reference.device)
        a = reference(input_ids=tokens).logits.float()[0]
        b = model(input_ids=tokens.to(model.device)).logits.float()[0].to(a.device)
        worst = max(worst, float((a - b).abs().max()))
        spread.append(float(a.std()))
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        positions += len(row)
    return {"max_logit_diff": round(worst, 5), "max_logit_diff_over_std": round(worst / float(np.mean(spread)), 5),
            "top1_same": round(same / max(positions, 1), 4)}


def llama_cpp_replies(path: str | Path, texts: list[str], ids: list[list[int]], max_new_tokens: int) -> dict | None:
    """The GGUF file run by llama.cpp itself, where its Python bindings are installed (`pip install -e '.[gguf]'`:
    llama-cpp-python, built from source): how many of the rendered prompts `texts` llama.cpp tokenizes to `ids` (the
    merged model's tokens), and the token ids of its greedy replies to `ids`, up to an end-of-generation token (for
    the caller to decode and cut as eval does). None without it."""
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(map(len, ids)) + max_new_tokens + 8,
                          n_gpu_layers=-1, n_threads=torch.get_num_threads(), seed=0, verbose=False)  # GPU if built so
    alike = sum(llm.tokenize(t.encode(), add_bos=False, special=True) == row for t, row in zip(texts, ids))
    replies = []
    for row in ids:
        reply = []
        for token in llm.generate(row, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(reply) == max_new_tokens:
                break
            reply.append(token)
        replies.append(reply)
    del llm
    return {"tokenized_alike": alike, "replies": replies}
