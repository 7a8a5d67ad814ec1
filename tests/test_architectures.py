"""The model families ftkit's recipes name, as tiny random models of the same classes: LoRA on the intended modules,
training changes the adapter, generation works, merging matches adapter + base; full fine-tuning; export."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftkit import cli, recipe
from ftkit.core import rundir
from ftkit.core.io import read_json
from ftkit.core.rows import messages
from ftkit.models import generation, loader
from ftkit.stages import data, sft
from ftkit.training import preflight
from tests.conftest import TOLERANCE, build_tokenizer, make_model_dir, recipe_file, tiny, tiny_sft

DECODER = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
TARGETS = {"gpt_neo": {"q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"},
           "llama": DECODER, "mistral": DECODER, "qwen2": DECODER, "gemma3": DECODER}
CLASSES = {"gpt_neo": "GPTNeoForCausalLM", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
           "qwen2": "Qwen2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}
BASE_TOKENIZER = {"gpt_neo", "gemma3"}  # no chat template, no pad token (GPT-Neo; Gemma 3 270M from its GGUF)


@pytest.mark.parametrize("arch", list(TARGETS))
def test_architecture_trains_generates_and_merges(tmp_path, arch):
    model_dir = make_model_dir(tmp_path, arch, base_tokenizer=arch in BASE_TOKENIZER)
    cfg, run_dir = recipe.load(recipe_file(tmp_path, tiny_sft(model_dir))), tmp_path / "run"
    tokenizer = loader.load_tokenizer(str(model_dir))
    if arch in BASE_TOKENIZER:
        assert tokenizer.chat_template == loader.DEFAULT_CHAT_TEMPLATE
        assert tokenizer.pad_token == tokenizer.eos_token and len(tokenizer) == len(build_tokenizer()), \
            "no token is added, so the embeddings keep their size"
    splits, figures = data.build_splits(cfg, tokenizer)
    data.save_splits(splits, run_dir, figures, tokenizer)
    assert figures["chat_template"] == ("ftkit's default" if arch in BASE_TOKENIZER else "the model's own")
    result = sft.train(cfg, run_dir)
    assert result["steps"] == 3

    adapter = run_dir / "sft" / "adapter"
    targeted = json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
    assert {name.split(".")[-1] for name in targeted} == TARGETS[arch]
    assert len(targeted) == 2 * len(TARGETS[arch]), "every linear layer of both blocks, not the output head"
    trained = load_file(adapter / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k), "lora_B starts at zero"

    from peft import PeftModel

    # merged against base + adapter unmerged in float32; in bfloat16, the same float32 reference within its rounding
    float32 = cfg.model.model_copy(update={"dtype": "float32"})
    base, _ = loader.load(float32)
    assert type(base).__name__ == CLASSES[arch]
    unmerged = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = tokenizer(["What is 12 plus 34?"], return_tensors="pt")
    with torch.no_grad():
        reference = unmerged(**ids).logits
        for dtype in ("float32", "bfloat16"):
            merged, tokenizer = loader.load(cfg.model.model_copy(update={"dtype": dtype}), tuned=adapter)
            assert merged.dtype == loader.DTYPES[dtype]
            torch.testing.assert_close(merged(**ids).logits.float(), reference, **TOLERANCE[dtype])
    outputs = generation.generate(merged, tokenizer, [messages(r) for r in splits["test"][:4]], 4, 5)
    assert len(outputs) == 4 and all(isinstance(o, str) for o in outputs)


def test_full_fine_tuning_saves_a_whole_model(tmp_path):
    model_dir = make_model_dir(tmp_path, "qwen2")
    cfg, run_dir = recipe.load(recipe_file(tmp_path, tiny_sft(model_dir, adapter="none", gradient_checkpointing=False))), tmp_path / "run"
    tokenizer = loader.load_tokenizer(str(model_dir))
    splits, figures = data.build_splits(cfg, tokenizer)
    data.save_splits(splits, run_dir, figures, tokenizer)
    result = sft.train(cfg, run_dir)
    assert result["trainable_parameters"] == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    saved = rundir.tuned_dir(run_dir, "sft")
    assert saved == run_dir / "sft" / "model" and not (run_dir / "sft" / "adapter").exists()
    before = load_file(model_dir / "model.safetensors")
    after = load_file(saved / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    model, _ = loader.load(cfg.model, tuned=saved)
    assert generation.generate(model, tokenizer, [messages(splits["test"][0])], 1, 3)[0] is not None


def test_estimate_counts_parameters_and_refuses_what_cannot_fit(tmp_path, tiny_model_dir):
    from transformers import LlamaConfig

    cfg = recipe.load(recipe_file(tmp_path, tiny_sft(tiny_model_dir)))
    figures = preflight.estimate(cfg)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert figures["parameters"] == sum(p.numel() for p in model.parameters())
    from peft import get_peft_model

    lora = get_peft_model(model, loader.lora_config(cfg.model))
    assert figures["trainable_parameters"] == sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert figures["fits"] == "yes" and preflight.preflight(cfg) == []
    # Llama 2 7B's shape (config only, nothing allocated): full fine-tuning in float32 needs ~100 GB for its state
    seven_b = tmp_path / "llama-2-7b-config"
    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                vocab_size=32000).save_pretrained(seven_b)
    big = recipe.load(recipe_file(tmp_path, tiny_sft(seven_b, adapter="none", dtype="float32")))
    assert preflight.estimate(big)["parameters"] == 6_738_415_616
    [problem] = preflight.preflight(big)
    assert "needs about 100.4 GB for weights, gradients and optimizer state alone" in problem
    assert "use adapter: lora or qlora, a smaller model" in problem


def test_qlora_on_a_cpu_fails_at_validation_with_the_fix(tmp_path, tiny_model_dir, capsys):
    path = recipe_file(tmp_path, {"name": "q", "model": {"id": str(tiny_model_dir), "adapter": "qlora"}}, file="q.yaml")
    recipe.load(path)  # the schema is fine: the same recipe runs on a GPU
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.adapter = 'qlora' needs a CUDA GPU and bitsandbytes" in err
    assert "on a CPU use model.adapter: lora (--set model.adapter=lora)" in err


def test_push_to_hub_needs_a_token_from_the_environment(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    cfg = recipe.build({"name": "p", "stages": ["data", "sft", "export"], "model": {"id": str(tiny_model_dir)},
                        "export": {"push_to_hub": "me/tiny"}})
    assert any("needs a Hugging Face token in the environment variable HF_TOKEN" in p
               for p in preflight.preflight(cfg, check_memory=False))


@pytest.mark.pipeline
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_loads_with_plain_transformers_and_reproduces_the_tuned_model(tmp_path, dtype, tiny_model_dir):
    """export/merged holds the weights eval measured (in bfloat16: the float32 merge rounded once), so plain
    transformers reproduces the eval stage's outputs exactly, in either dtype."""
    path = recipe_file(tmp_path, tiny(tiny_model_dir), stages=["data", "sft", "eval", "export"], model={"dtype": dtype}, file="tiny.yaml")
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0, read_json(run_dir / "status.json")
    exported = read_json(run_dir / "metrics.json")["export"]
    assert exported["model"] == "sft" and exported["check"]["same_as_eval"] == exported["check"]["prompts"] == 8
    assert exported["dtype"] == dtype and exported["check"]["dtype"] == dtype
    assert json.loads((run_dir / "export" / "merged" / "config.json").read_text())["dtype"] == dtype
    assert (run_dir / "export" / "adapter" / "adapter_model.safetensors").is_file()
    assert "8 of 8 outputs match the eval stage" in (run_dir / "report.html").read_text()
    # a colleague's side: plain transformers, no ftkit, no PEFT
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "export" / "merged")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "export" / "merged")
    predictions = rundir.load_predictions(run_dir, "sft")
    rows = rundir.load_split(run_dir, "test")
    for row, prediction in list(zip(rows, predictions))[:4]:
        text = tokenizer.apply_chat_template(messages(row), tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        out = merged.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() == \
            prediction["output"]
