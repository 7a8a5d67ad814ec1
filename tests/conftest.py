"""Shared fixtures: tiny randomly-initialized models (Llama by default; GPT-Neo, Mistral, Qwen2, Gemma 3) with a byte-level
BPE tokenizer, built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
# logits compared in a dtype: float32 holds to 1e-4; bfloat16 keeps 8 bits of mantissa, so a few of its steps
TOLERANCE = {"float32": {"rtol": 1e-4, "atol": 1e-4}, "bfloat16": {"rtol": 2e-2, "atol": 2e-2}}


def build_tokenizer():
    """A small byte-level BPE tokenizer trained on addition questions, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ftkit.scoring.tasks import Addition

    corpus = [f"user\n{e['prompt']}\nassistant\n{e['answer']}\n" for e in Addition().splits(300, 50, 0)["train"]]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<|pad|>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>", chat_template=CHAT_TEMPLATE)


def build_model(tokenizer, seed: int = 0, arch: str = "llama", tied: bool = True):
    """A tiny randomly-initialized causal LM of one of the architectures ftkit's recipes and offline models name.
    Tied (the default), its greedy replies repeat the prompt's last token, a newline: empty once stripped; untied,
    they are random text that rarely ends."""
    import torch
    import transformers

    sizes = {"vocab_size": len(tokenizer), "hidden_size": 32, "max_position_embeddings": 256,
             "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
             "eos_token_id": tokenizer.eos_token_id}
    decoder = {"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "tie_word_embeddings": tied}
    configs = {
        "llama": lambda: transformers.LlamaConfig(**sizes, **decoder),
        "mistral": lambda: transformers.MistralConfig(**sizes, **decoder, sliding_window=64),
        "qwen2": lambda: transformers.Qwen2Config(**sizes, **decoder),
        "gemma3": lambda: transformers.Gemma3TextConfig(**sizes, **decoder, head_dim=8, sliding_window=16),
        "gpt_neo": lambda: transformers.GPTNeoConfig(**sizes, num_layers=2, num_heads=4, intermediate_size=64,
                                                     attention_types=[[["global", "local"], 1]], window_size=16),
    }
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(configs[arch]())


def make_model_dir(tmp_path, arch, base_tokenizer=False, tied=True) -> Path:
    """A tiny model of `arch` saved with the test tokenizer (base_tokenizer: without chat template or pad token;
    tied: see build_model)."""
    tokenizer = build_tokenizer()
    path = tmp_path / arch
    build_model(tokenizer, arch=arch, tied=tied).save_pretrained(path)
    if base_tokenizer:  # like GPT-Neo, Llama 2 and Mistral base: no chat template, no pad token
        tokenizer.chat_template = None
        tokenizer.pad_token = None
    tokenizer.save_pretrained(path)
    return path


def recipe_file(tmp_path, *bases: dict, file: str = "r.yaml", **sections) -> Path:
    """Write a recipe to tmp_path/file and return its path: the bases, then the sections given by keyword, each
    merged into what came before (a section's keys into that section's, a top-level value replacing the one before).
    Without a base it is {"name": "r"} and the sections given; `tiny(model_dir)` is the fast run of a tiny model."""
    data: dict = {"name": "r"}
    for layer in (*bases, sections):
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
    path = tmp_path / file
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny(model_dir, **sections) -> dict:
    """A recipe of seconds on a tiny model: data -> sft -> rl -> eval on 48 addition questions (16 held out), three
    SFT steps, two GRPO steps, four-token replies."""
    return {"name": "tiny", "seed": 0, "stages": ["data", "sft", "rl", "eval"],
            "model": {"id": str(model_dir), "lora_r": 4, "lora_alpha": 8},
            "data": {"task": "addition", "train_size": 48, "test_size": 16},
            "sft": {"max_steps": 3, "batch_size": 8, "learning_rate": 1.0e-2, "logging_steps": 1},
            "rl": {"max_steps": 2, "batch_size": 4, "num_generations": 2, "learning_rate": 1.0e-3,
                   "logging_steps": 1, "max_completion_length": 4},
            "eval": {"batch_size": 8, "max_new_tokens": 4}, **sections}


def tiny_sft(model_dir, **model) -> dict:
    """Three fast SFT steps on a tiny model (data -> sft -> eval, eval's defaults), `model:` keys overridden."""
    return {"name": "arch", "stages": ["data", "sft", "eval"],
            "model": {"id": str(model_dir), "lora_r": 4, "lora_alpha": 8, **model},
            "data": {"train_size": 32, "test_size": 8},
            "sft": {"max_steps": 3, "batch_size": 8, "learning_rate": 1.0e-2, "logging_steps": 1}}


def pytest_configure(config):
    config.addinivalue_line("markers", "pipeline: executes stage notebooks (papermill, a kernel per stage): the slow "
                                       "lane, which `make test-fast` leaves out")


def pytest_collection_modifyitems(items):
    for item in items:  # a test that reads the shared full run is a pipeline test
        if "tiny_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pipeline)


@pytest.fixture(autouse=True)
def _notebooks_only_in_pipeline_tests(request, monkeypatch):
    """A test not marked `pipeline` that executes a notebook fails, so the fast lane stays fast: the runner records a
    notebook's error as the stage's failure, so the refusal is checked after the test too."""
    if request.node.get_closest_marker("pipeline") is not None:
        yield
        return
    import papermill

    refused = []

    def refuse(notebook, *args, **kwargs):
        refused.append(str(notebook))
        raise RuntimeError(f"{request.node.nodeid} executes {notebook}: mark it @pytest.mark.pipeline")

    monkeypatch.setattr(papermill, "execute_notebook", refuse)
    yield
    assert not refused, f"this test executes notebooks ({refused}): mark it @pytest.mark.pipeline"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """One full run (data -> sft -> rl -> eval) of the tiny model through the CLI, shared by the tests that read a
    complete run directory."""
    root = tmp_path_factory.mktemp("run")
    # sampled replies on 12 of the 16 test prompts
    recipe = recipe_file(root, tiny(tiny_model_dir, eval={"batch_size": 8, "max_new_tokens": 4, "sampled_size": 12}),
                         file="tiny.yaml")
    run_dir = root / "out"
    from ftkit import cli

    code = cli.main(["run", str(recipe), "--run-dir", str(run_dir)])
    return code, run_dir
