"""Before anything loads: the model's size, what a recipe trains, a rough estimate of the memory training needs (and
so whether gradient checkpointing is needed), and what the recipe asks of this machine (a GPU, packages, a token) —
each problem found with its fix, before any stage runs.

Built from the model's config on the meta device: nothing is downloaded but config.json, nothing is allocated.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ftkit.core import machine
from ftkit.models import offline
from ftkit.models.loader import ModelNotFound, dtype_name

log = logging.getLogger(__name__)
GB = 1024 ** 3
# set to a number of GB, the estimate plans for a card of that size instead of this machine (ftkit validate on a
# laptop for the GPU a recipe will run on)
PLAN_MEMORY = "FTKIT_PLAN_MEMORY_GB"


def step_tokens(cfg, lengths: list[int], padding_free: bool, examples: int | None = None) -> int:
    """The most tokens one forward pass can hold on one process: `examples` of the longest examples (default: its
    whole share of the batch), padded to the longest unless padding-free (examples kept over max_length are cut to
    it)."""
    examples = examples or cfg.sft.batch_size // cfg.launch.num_processes
    longest = sorted((min(n, planned_length(cfg)) for n in lengths), reverse=True)[:examples]
    if not longest:
        return examples * planned_length(cfg)
    return sum(longest) if padding_free else examples * longest[0]


def planned_length(cfg) -> int:
    """sft.max_length as a number: the recipe's, or the data stage's fit of `auto`, else SFTConfig.ASSUMED_LENGTH."""
    return cfg.sft.max_length if cfg.sft.max_length != "auto" else cfg.sft.ASSUMED_LENGTH


def fit_length(cfg, lengths: list[int]) -> dict:
    """`sft.max_length: auto` fitted to the examples' token lengths as trained: the longest example, or the 99th
    percentile where the longest is over 1.5 times it (a few outliers, left to data.too_long), rounded up to a
    multiple of 8; then at most the model's context, and at most what one example per micro-batch fits in memory by
    `estimate` (halved until it fits, down to 64).

    >>> fit_length(None, [30, 31, 35] * 40)["chosen"], fit_length(None, [40] * 200 + [900])["chosen"]
    (40, 40)
    """
    ordered = sorted(lengths) or [512]
    longest, p99 = ordered[-1], ordered[math.floor(0.99 * (len(ordered) - 1))]  # the lower nearest rank
    outliers = longest > 1.5 * p99
    chosen = -(-(p99 if outliers else longest) // 8) * 8
    fit = {"chosen": chosen, "rule": "99th percentile" if outliers else "longest", "longest": longest, "p99": p99}
    try:
        config = _config(cfg.model) if cfg is not None else None
    except ModelNotFound:
        config = None
    context = getattr(config.get_text_config(), "max_position_embeddings", None) if config is not None else None
    if context and chosen > context:
        fit.update(chosen=context, capped_by=f"the model's context ({context})")
    if config is not None:
        fitting = fit["chosen"]
        while fitting > 64 and estimate(cfg, fitting)["fits"] != "yes":
            fitting //= 2
        if fitting < fit["chosen"] and estimate(cfg, fitting)["fits"] == "yes":
            fit.update(chosen=fitting, capped_by="memory: one example of it fits by the estimate")
    return fit


def micro_batch(cfg, section, tokens_for) -> int:
    """Examples one process puts through the model at once: the section's micro_batch_size, or for auto the
    largest that divides the process's share of the batch and fits by `estimate` (gradient checkpointing turned on
    first where that makes it fit); `tokens_for(n)`: the most tokens a pass of n examples holds. The whole share
    where the model's config cannot be read, 1 where nothing fits (preflight has refused what clearly cannot)."""
    share = section.batch_size // cfg.launch.num_processes
    if section.micro_batch_size != "auto":
        return section.micro_batch_size
    for size in (d for d in range(share, 0, -1) if share % d == 0):
        try:
            if estimate(cfg, tokens_for(size))["fits"] == "yes":
                return size
        except ModelNotFound:
            return share
    return 1


def gradient_checkpointing(cfg, tokens: int | None = None, figures: dict | None = None) -> bool:
    """model.gradient_checkpointing with auto resolved by `estimate` for a step of `tokens` (default: batch_size *
    max_length; `figures`: that estimate, already made); on where the config cannot be read and a GPU is in use."""
    if cfg.model.gradient_checkpointing != "auto":
        return cfg.model.gradient_checkpointing
    try:
        return (figures or estimate(cfg, tokens))["gradient_checkpointing"]
    except ModelNotFound:
        return torch.cuda.is_available()


def _config(model_cfg):
    """The model's config alone (no weights): from a local directory, the cache, the offline copy or the hub."""
    machine.settle_offline()
    candidates = [model_cfg.id]
    copy = offline.offline_copy_dir(model_cfg.id)
    if model_cfg.id in offline.OFFLINE and offline.is_checkpoint(copy):
        candidates.insert(0, str(copy))
    for candidate in candidates:
        try:
            return AutoConfig.from_pretrained(candidate, revision=model_cfg.revision,
                                              trust_remote_code=model_cfg.trust_remote_code)
        except Exception as exc:
            error = exc
    raise ModelNotFound(f"model.id = {model_cfg.id!r}: its config could not be read ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:160]})")


def _sizes(model_cfg, config) -> tuple[str, int, int, float, float]:
    """(architecture, parameters, trainable parameters, bytes of the weights, bytes of the gradients and AdamW
    state) of the model built from `config` on the meta device, as `estimate` counts them."""
    import torch.nn as nn

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
    return type(model).__name__, params, trainable, weight_bytes, state_bytes


def estimate(cfg, tokens: int | None = None) -> dict:
    """Parameters, trainable parameters and a rough estimate of the memory that training needs (GB), against the
    memory available (the GPU's, else the machine's free RAM). Built from the config on the meta device: nothing
    is downloaded but config.json and nothing is allocated.

    Memory = weights (4 bytes per parameter in float32, 2 in bf16/fp16, about 0.5 for QLoRA's 4-bit linears)
    + gradients and AdamW state of the trainable parameters (16 bytes each for a float32 adapter; the weight's
    size plus 8 for full fine-tuning) + activations of one batch of `sft.max_length` tokens (one hidden state per
    layer with gradient checkpointing, about 16 without) + float32 logits and their gradient, for a step of
    `tokens` (default: one process's share of batch_size x max_length; training passes its micro-batch's). With
    gradient_checkpointing auto, it is on only when the total without it would not fit. It is a rough guide
    (within about ±50%), used to refuse only what clearly cannot fit: weights, gradients and optimizer state alone
    above the memory available.
    """
    model_cfg = cfg.model
    config = _config(model_cfg)
    architecture, params, trainable, weight_bytes, state_bytes = _sizes(model_cfg, config)
    dtype_bytes = 4 if dtype_name(model_cfg) == "float32" else 2
    text = config.get_text_config()
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", 0)
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "num_layers", 0)
    share = (cfg.sft.batch_size if "sft" in cfg.stages else cfg.rl.batch_size) // cfg.launch.num_processes
    tokens = tokens or share * planned_length(cfg)  # one process's share of a step, all at once
    available, where = _available()
    if cfg.launch.shard != "none":  # each process holds its share of the weights, gradients and optimizer state
        weight_bytes, state_bytes = weight_bytes / cfg.launch.num_processes, state_bytes / cfg.launch.num_processes

    def total_with(checkpointing: bool) -> tuple[float, float]:
        per_layer = 1 if checkpointing else 16
        activations = tokens * hidden * layers * per_layer * max(dtype_bytes, 2) + tokens * text.vocab_size * 8
        return weight_bytes + state_bytes + activations, activations

    checkpointing = model_cfg.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = total_with(False)[0] >= 0.8 * available
    total, activation_bytes = total_with(checkpointing)
    return {"model": model_cfg.id, "architecture": architecture, "parameters": params,
            "trainable_parameters": trainable, "adapter": model_cfg.adapter, "dtype": dtype_name(model_cfg),
            "weights_gb": round(weight_bytes / GB, 2), "gradients_optimizer_gb": round(state_bytes / GB, 2),
            "activations_gb": round(activation_bytes / GB, 2), "gradient_checkpointing": checkpointing,
            "estimated_gb": round(total / GB, 2),
            "available_gb": round(available / GB, 2), "available_on": where,
            "fits": "yes" if total < 0.8 * available else ("no" if weight_bytes + state_bytes > available
                                                          else "tight")}


def optimizer_package(name: str) -> str | None:
    """The package (import name) a transformers optimizer needs beyond torch, or None.

    >>> optimizer_package("paged_adamw_8bit"), optimizer_package("adamw_torch_8bit"), optimizer_package("adafactor")
    ('bitsandbytes', 'torchao', None)
    """
    if name.startswith("adamw_torch_") and name.endswith("bit"):
        return "torchao"
    if "bnb" in name or name.startswith(("paged_", "lion_")) or name in ("adamw_8bit", "ademamix_8bit", "ademamix"):
        return "bitsandbytes"
    prefixes = {"galore_": "galore_torch", "apollo_": "apollo_torch", "schedule_free_": "schedulefree",
                "grokadamw": "grokadamw", "lomo": "lomo_optim", "adalomo": "lomo_optim"}
    return next((package for prefix, package in prefixes.items() if name.startswith(prefix)), None)


def _available() -> tuple[float, str]:
    """Memory training may take, in bytes, and where: a card of FTKIT_PLAN_MEMORY_GB, the GPU's, or free RAM."""
    if os.environ.get(PLAN_MEMORY):  # planning for another machine: a card of this many GB
        return float(os.environ[PLAN_MEMORY]) * GB, f"a {os.environ[PLAN_MEMORY]} GB card ({PLAN_MEMORY})"
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, torch.cuda.get_device_name(0)
    import psutil

    return psutil.virtual_memory().available, "free RAM (no CUDA GPU)"


def _launch_problems(cfg, cuda: bool) -> list[str]:
    """Sharding that cannot run as asked: FSDP on a machine without CUDA GPUs (accelerate turns it on for GPUs only;
    DeepSpeed runs on CPUs too), ZeRO-3 without DeepSpeed installed, a 4-bit base, the prompt filter."""
    problems, model_cfg, shard = [], cfg.model, cfg.launch.shard
    sharding = _sharding(cfg.launch.config_file)
    if sharding == "FSDP" and not cuda and (cfg.launch.num_processes > 1 or cfg.launch.num_machines > 1):
        problems.append(f"launch.config_file = {cfg.launch.config_file!r} asks for FSDP, which accelerate runs on "
                        "GPUs only: on this machine (no CUDA GPU) it would train every process with the whole model, "
                        "as plain data parallel; run it on GPUs, or leave launch.config_file out for data parallel")
    if shard == "fsdp" and not cuda:
        problems.append("launch.shard = 'fsdp' shards the model over CUDA GPUs, and this machine has none (accelerate "
                        "runs FSDP on GPUs only); set launch.shard: zero3 (DeepSpeed runs on CPUs) or none here")
    if shard == "zero3" and importlib.util.find_spec("deepspeed") is None:
        problems.append("launch.shard = 'zero3' needs DeepSpeed, which is not installed: pip install deepspeed "
                        "(or pip install -e '.[deepspeed]'), or set launch.shard: fsdp")
    if shard != "none" and "rl" in cfg.stages and cfg.rl.method in ("grpo", "rloo") and cfg.rl.filter_prompts:
        problems.append(f"launch.shard = {shard!r} with rl.filter_prompts: the prompt filter samples from the whole "
                        "model in every process, which sharding is there to avoid; set rl.filter_prompts: false, or "
                        "shard: none where one GPU holds the model")
    if shard != "none" and model_cfg.adapter == "qlora":
        problems.append(f"launch.shard = {shard!r} with model.adapter = 'qlora': sharding a 4-bit base is not "
                        "supported by ftkit yet; use adapter: lora with sharding, or qlora on one GPU per process")
    return problems


def _sharding(config_file: str | None) -> str | None:
    r""""FSDP" or "DeepSpeed" where an accelerate config file asks for it, else None.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "fsdp.yaml"
    >>> _ = path.write_text("distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n")
    >>> _sharding(str(path)), _sharding(None)
    ('FSDP', None)
    """
    import yaml

    if not config_file or not os.path.isfile(config_file):
        return None
    with open(config_file) as stream:
        settings = yaml.safe_load(stream) or {}
    kind = str(settings.get("distributed_type", "")).upper()
    return {"FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}.get(kind)


def _shard_hint(cfg, held_gb: float, available_gb: float) -> str:
    """The processes that sharding with FSDP would need for the weights and state to take at most 80% of a GPU.

    >>> from types import SimpleNamespace as NS
    >>> _shard_hint(NS(launch=NS(shard="none", num_processes=1)), 130.0, 80.0)
    'shard it over GPUs (launch.shard: fsdp with launch.num_processes: 3, about 43.3 GB each), '
    """
    processes = cfg.launch.num_processes if cfg.launch.shard != "none" else 1
    needed = max(2, math.ceil(held_gb * processes / (0.8 * available_gb)))
    return (f"shard it over GPUs (launch.shard: fsdp with launch.num_processes: {needed}, about "
            f"{held_gb * processes / needed:.1f} GB each), ")


def describe(figures: dict) -> str:
    """One line for the command line: size, trained parameters and memory, from `estimate`."""
    return (f"{figures['model']}: {figures['parameters'] / 1e6:,.0f}M parameters, "
            f"{figures['trainable_parameters'] / 1e6:,.1f}M trained ({figures['adapter']}, {figures['dtype']}); "
            f"training needs about {figures['estimated_gb']} GB, {figures['available_on']} has "
            f"{figures['available_gb']} GB")


def _gguf_problems(cfg) -> list[str]:
    """export.gguf for a model that ftkit cannot write as GGUF (its architecture, rotary scaling): refused before
    any training. A model whose config cannot be read here is left to the loader's own message."""
    from ftkit.models.gguf_export import QUANTIZED, WRITTEN, has_quantizer, refusal

    if not (cfg.export.gguf and "export" in cfg.stages):
        return []
    problems = []
    needs = [k for k in cfg.export.gguf if k in QUANTIZED]
    if needs and not has_quantizer():
        problems.append(f"export.gguf = {list(cfg.export.gguf)}: {', '.join(needs)} needs llama.cpp's quantizer, "
                        "which is not installed here; pip install -e '.[gguf]' (builds llama-cpp-python from source, "
                        f"about 5 minutes), or choose from {', '.join(WRITTEN)}")
    try:
        reason = refusal(_config(cfg.model))
    except ModelNotFound:
        return problems
    return problems + ([f"export.gguf = {list(cfg.export.gguf)}: {reason}; remove export.gguf (export/merged/ is "
                        "still written, and llama.cpp's own convert_hf_to_gguf.py may convert it)"] if reason else [])


def preflight(cfg, check_memory: bool = True, figures: dict | None = None) -> list[str]:
    """What the recipe needs from this machine and would only find out at load or train time: each problem with
    the fix. Empty when the recipe can run here. `figures`: an `estimate` already made."""
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
    for name in ("sft", "rl"):
        package = optimizer_package(getattr(cfg, name).optimizer)
        if name in cfg.stages and package and not importlib.util.find_spec(package):
            problems.append(f"{name}.optimizer = {getattr(cfg, name).optimizer!r} needs the {package} package, which "
                            f"is not installed here; pip install {package}, or use adamw_torch_fused")
    problems += _launch_problems(cfg, cuda)
    export = getattr(cfg, "export", None)
    if export is not None and export.push_to_hub and "export" in cfg.stages and not os.environ.get("HF_TOKEN"):
        problems.append(f"export.push_to_hub = {export.push_to_hub!r} needs a Hugging Face token in the environment "
                        "variable HF_TOKEN (it is read from there only and never written anywhere); set it, or "
                        "set export.push_to_hub: null")
    problems += _gguf_problems(cfg)
    if check_memory and {"sft", "rl"} & set(cfg.stages) and not problems:
        try:
            figures = figures or estimate(cfg)
        except ModelNotFound as exc:
            log.info("memory estimate skipped: %s", exc)
        else:
            if figures["fits"] == "no":
                held = figures["weights_gb"] + figures["gradients_optimizer_gb"]
                each = "each process " if cfg.launch.shard != "none" else ""
                problems.append(
                    f"model.id = {model_cfg.id!r} with adapter {model_cfg.adapter!r} in {figures['dtype']} needs about "
                    f"{held:.1f} GB {each}for weights, gradients and optimizer state alone, and "
                    f"{figures['available_on']} has {figures['available_gb']:.1f} GB; use adapter: lora or qlora, a "
                    f"smaller model, {_shard_hint(cfg, held, figures['available_gb'])}or a machine with more memory")
    return problems
