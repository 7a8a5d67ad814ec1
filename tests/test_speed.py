"""Fast defaults: padding-free SFT trains exactly what padded batches train (same loss, same real tokens) on the
architectures ftkit names; bf16, gradient checkpointing and padding-free resolve from the hardware, the memory
estimate and the recipe."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from ftkit import recipe
from ftkit.models import loader
from ftkit.recipe import RecipeError
from ftkit.stages import data, sft
from ftkit.training import preflight
from tests.conftest import build_model, build_tokenizer, make_model_dir, recipe_file, tiny, tiny_sft


def sft_run(cfg, run_dir):
    tokenizer = loader.load_tokenizer(cfg.model.id)
    splits, figures = data.build_splits(cfg, tokenizer)
    data.save_splits(splits, run_dir, figures, tokenizer)
    return sft.train(cfg, run_dir)


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_padding_free_trains_what_padded_batches_train(tmp_path, arch):
    model_dir = make_model_dir(tmp_path, arch)
    results = {}
    for padding_free in (False, True):
        cfg = recipe.build({"name": "pf", "stages": ["data", "sft"],
                            "model": {"id": str(model_dir), "lora_r": 4, "lora_alpha": 8, "dtype": "float32"},
                            "data": {"train_size": 32, "test_size": 8},
                            "sft": {"max_steps": 3, "batch_size": 8, "learning_rate": 1.0e-2, "logging_steps": 1,
                                    "save_steps": 0, "padding_free": padding_free}})
        results[padding_free] = sft_run(cfg, tmp_path / f"run-{padding_free}")
    padded, packed = results[False], results[True]
    assert packed["settings"]["padding_free"] and not padded["settings"]["padding_free"]
    assert packed["real_tokens"] == padded["real_tokens"] > 0, "both count only the examples' own tokens"
    assert packed["first_loss"] == pytest.approx(padded["first_loss"], rel=1e-4)
    assert packed["final_loss"] == pytest.approx(padded["final_loss"], rel=1e-3)


def test_examples_in_one_row_do_not_see_each_other(tiny_model_dir):
    """What padding-free relies on: with restarting position_ids, the second example's logits are the ones it has
    alone (with no cache, as in training: transformers looks for restarts only then)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert loader.packs_examples(model)
    first, second = torch.tensor([[5, 9, 14, 3, 7]]), torch.tensor([[11, 4, 8]])
    row = torch.cat([first, second], dim=1)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]])
    with torch.no_grad():
        together = model(input_ids=row, position_ids=positions, use_cache=False).logits[:, 5:]
        alone = model(input_ids=second).logits
        unmasked = model(input_ids=row).logits[:, 5:]
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unmasked, alone, atol=1e-5), "without restarts the second example sees the first"


def test_auto_settings_follow_the_recipe_and_the_machine(tiny_model_dir, monkeypatch, tmp_path):
    import psutil

    cfg = recipe.load(recipe_file(tmp_path, tiny_sft(tiny_model_dir)))
    assert cfg.model.gradient_checkpointing == "auto" and cfg.sft.padding_free == "auto"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not loader.padding_free(cfg, model), "sdpa: a masked row costs more than the padding it removes"
    monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2")
    assert loader.padding_free(cfg, model), "flash attention's variable-length kernels"
    truncating = recipe.load(recipe_file(tmp_path, tiny_sft(tiny_model_dir)))
    truncating.data.too_long = "truncate"
    assert not loader.padding_free(truncating, model), "truncation needs padded batches"
    monkeypatch.undo()
    assert preflight.step_tokens(cfg, [10, 50, 20, 40, 30] * 2, padding_free=False) == 8 * 50
    assert preflight.step_tokens(cfg, [10, 50, 20, 40, 30] * 2, padding_free=True) == 2 * (50 + 40 + 30) + 20 + 20
    neo = AutoModelForCausalLM.from_config(build_model(build_tokenizer(), arch="gpt_neo").config)
    assert not loader.packs_examples(neo), "GPT-Neo's eager attention has a fixed-size causal buffer"
    asked = recipe.load(recipe_file(tmp_path, tiny_sft(tiny_model_dir)))
    asked.sft.padding_free = True
    with pytest.raises(ValueError, match="sft.padding_free true: GPTNeoForCausalLM"):
        loader.padding_free(asked, neo)

    assert preflight.gradient_checkpointing(cfg) is False, "a tiny model fits: no recomputation"
    real = psutil.virtual_memory()

    class Scarce:
        available = 1_000_000  # 1 MB free: activations without checkpointing would not fit
        total = real.total

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Scarce)
    assert preflight.gradient_checkpointing(cfg) is True
    assert preflight.estimate(cfg)["gradient_checkpointing"] is True
    assert preflight.gradient_checkpointing(cfg, tokens=1) is False, "one token's activations fit even there"
    monkeypatch.undo()

    from ftkit.core import machine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(machine, "read_cpuinfo", lambda: "flags\t: avx2 avx512f amx_bf16\n")
    assert loader.dtype_name(cfg.model) == "bfloat16"
    monkeypatch.setattr(machine, "read_cpuinfo", lambda: "flags\t: avx2\n")
    assert loader.dtype_name(cfg.model) == "float32"
    monkeypatch.undo()
    explicit = recipe.load(recipe_file(tmp_path, tiny_sft(tiny_model_dir, dtype="float32", gradient_checkpointing=True)))
    assert loader.dtype_name(explicit.model) == "float32" and preflight.gradient_checkpointing(explicit) is True


def test_padding_free_cannot_truncate(tiny_model_dir, tmp_path):
    path = recipe_file(tmp_path, tiny(tiny_model_dir), data={"too_long": "truncate"}, sft={"padding_free": True}, file="tiny.yaml")
    with pytest.raises(RecipeError) as error:
        recipe.load(path)
    assert "sft.padding_free true" in str(error.value) and "data.too_long: drop" in str(error.value)
