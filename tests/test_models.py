"""Model resolution and loading, including the GGUF -> safetensors path of the offline default model."""

import json
import os

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from ftkit import recipe
from ftkit.models import loader, offline
from ftkit.recipe import ModelConfig
from tests.conftest import CHAT_TEMPLATE, SPECIALS, TOLERANCE, build_model, build_tokenizer, recipe_file


def write_gguf(model, tokenizer, path):
    """Write a float32 llama GGUF the way llama.cpp's converter lays it out (q/k rows permuted)."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(sorted(vocab, key=vocab.get))
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL
                            for t in sorted(vocab, key=vocab.get)])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        array = tensor.float().numpy()
        heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
        for proj, n_head in heads.items():
            if f"{proj}.weight" in name:
                array = array.reshape(n_head, 2, array.shape[0] // n_head // 2, -1).swapaxes(1, 2).reshape(array.shape)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_checkpoint_converts_to_an_identical_plain_model(tmp_path):
    tokenizer = build_tokenizer()
    original = build_model(tokenizer, seed=1).eval()
    write_gguf(original, tokenizer, tmp_path / "tiny.gguf")
    dest = offline.convert_gguf(tmp_path, "tiny.gguf", tmp_path / "plain")
    assert (dest / "model.safetensors").is_file() and (dest / "config.json").is_file()

    model, loaded_tok = loader.load(ModelConfig(id=str(dest), dtype="float32"))  # the conversion is float32-exact
    text = loaded_tok.apply_chat_template([{"role": "user", "content": "What is 12 plus 30?"}], tokenize=False,
                                          add_generation_prompt=True)
    assert loaded_tok(text)["input_ids"] == tokenizer(text)["input_ids"]
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=1e-4, atol=1e-4)
    # the converted copy is a plain model: it saves and trains (no GGUF quantization marker)
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path / "resaved")


def test_resolve_prefers_a_local_directory(tiny_model_dir):
    assert loader.resolve(str(tiny_model_dir)) == str(tiny_model_dir)


def test_resolve_reports_every_place_it_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(loader.ModelNotFound) as info:
        loader.resolve(str(tmp_path / "missing-model"))
    text = str(info.value)
    assert "local directory" in text and "Hugging Face cache" in text and "Hugging Face hub" in text
    assert "Fix:" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(loader.ModelNotFound, match="no config.json in it"):
        loader.resolve(str(empty))


def test_default_model_uses_the_offline_copy_when_present(tmp_path, monkeypatch, tiny_model_dir):
    import shutil

    monkeypatch.setenv("FTKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(tiny_model_dir, offline.offline_copy_dir())
    assert loader.resolve(recipe.DEFAULT_MODEL) == str(offline.offline_copy_dir())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lora_adapter_round_trip(tmp_path, tiny_model_dir, dtype):
    """Saved, reloaded and merged, an adapter gives the logits it gave in training (float32), or in bfloat16 exactly
    the float32 merge rounded once: the weights eval and export use."""
    from peft import get_peft_model

    cfg = ModelConfig(id=str(tiny_model_dir), lora_r=4, lora_alpha=8, dtype="float32")
    model, tokenizer = loader.load(cfg)
    peft_model = get_peft_model(model, loader.lora_config(cfg))
    targets = {n.split(".")[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = peft_model(ids).logits
    adapter = loader.save_trained(peft_model, tokenizer, tmp_path, "sft")
    assert adapter == tmp_path / "sft" / "adapter"
    merged, _ = loader.load(cfg.model_copy(update={"dtype": dtype}), tuned=adapter)
    assert merged.dtype == loader.DTYPES[dtype]
    torch.testing.assert_close(merged(ids).logits.float(), expected, **TOLERANCE[dtype])
    assert not (tmp_path / "sft" / ".adapter.partial").exists()
    if dtype != "float32":
        exact = loader.load(cfg, tuned=adapter)[0].state_dict()
        assert all(torch.equal(p, exact[n].to(p.dtype)) for n, p in merged.named_parameters()), \
            "every weight is the float32 merge cast once"
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=loader.DTYPES[dtype])
        naive = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        assert any(not torch.equal(p, exact[n].to(p.dtype)) for n, p in naive.named_parameters()), \
            "merging into half-precision weights rounds twice: the test would not see the difference otherwise"


def test_bfloat16_follows_the_cpu(monkeypatch, tmp_path):
    """dtype auto: bfloat16 with AMX, float32 without bfloat16 arithmetic, and with AVX-512-BF16 alone whichever the
    cached measurement found faster, for training and for generation apart (every branch, on any machine)."""
    from ftkit.core import machine
    from ftkit.models import dtypes

    monkeypatch.setenv("FTKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls = []
    measured = {"training": {"float32": 1.0, "bfloat16": 0.5}, "generation": {"float32": 1.0, "bfloat16": 2.5}}
    monkeypatch.setattr(dtypes, "benchmark", lambda: calls.append(1) or measured)
    auto = ModelConfig()
    for cpuinfo, training, generation in ((EPYC_AVX2, "float32", "float32"), (XEON_AMX, "bfloat16", "bfloat16"),
                                          (EPYC_AVX512_BF16, "bfloat16", "float32"), ("", "float32", "float32")):
        monkeypatch.setattr(machine, "read_cpuinfo", lambda text=cpuinfo: text)
        assert loader.dtype_name(auto) == training, cpuinfo[:60]
        assert loader.dtype_name(auto, "generation") == generation, cpuinfo[:60]
        assert loader.dtype_name(ModelConfig(dtype="float32")) == "float32", "an explicit dtype is kept"
    assert len(calls) == 1, "measured once, then read from the cache"
    cached = json.loads((tmp_path / dtypes.CACHE_NAME).read_text())
    assert list(cached.values()) == [measured] and "AMD EPYC" in next(iter(cached))
    monkeypatch.setattr(machine, "read_cpuinfo", lambda: EPYC_AVX512_BF16)
    described = dtypes.describe()
    assert described["generation"]["dtype"] == "float32" and "0.40x" in described["generation"]["reason"]
    assert described["training"]["dtype"] == "bfloat16" and described["measured_seconds"] == measured
    measured["training"]["bfloat16"] = 0.95  # 1.05x: inside the margin, the tie goes to float32
    (tmp_path / dtypes.CACHE_NAME).unlink()
    assert loader.dtype_name(auto) == "float32"
    monkeypatch.setattr(machine, "read_cpuinfo", lambda: XEON_AMX)
    info = machine.cpu()
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+" and info["bf16"]
    assert info["flags"] == ["avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2"]
    assert "computes in bfloat16" in machine.describe_cpu(info)
    monkeypatch.setattr(machine, "read_cpuinfo", lambda: EPYC_AVX2)
    assert machine.cpu()["flags"] == ["avx2"] and "bfloat16 is emulated" in machine.describe_cpu()



def test_the_dtype_benchmark_times_both_dtypes_for_both_uses():
    """The micro-benchmark behind dtype auto runs here for real: seconds for each use in each dtype."""
    from ftkit.models import dtypes

    measured = dtypes.benchmark()
    assert sorted(measured) == ["generation", "training"]
    assert all(sorted(m) == ["bfloat16", "float32"] and all(0 < s < 60 for s in m.values()) for m in measured.values())


def test_hub_out_of_reach_is_said_once_and_nothing_retries(tmp_path, monkeypatch, capfd):
    """Where the hub cannot be reached, validation does not spend half a minute retrying: one line, then offline."""
    import subprocess
    import sys
    import time

    path = recipe_file(tmp_path, model={"id": "meta-llama/Llama-2-7b-hf"}, file="hub.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))  # nothing listens on port 9
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ftkit", "validate", str(path)], env=env, capture_output=True,
                          text=True, timeout=120)
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert output.count("cannot be reached from here: working offline") == 1, output
    assert "Retrying" not in output and seconds < 20, (seconds, output)
    assert "memory estimate skipped: model.id = 'meta-llama/Llama-2-7b-hf'" in output


# /proc/cpuinfo of the kinds of machine this project runs on (the lines ftkit reads)
EPYC_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse sse2 avx f16c avx2 fma bmi2\n"
EPYC_AVX512_BF16 = ("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 avx512f avx512bw avx_vnni "
                    "avx512_bf16 avx512_vnni\n")
XEON_AMX = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx avx2 avx512f "
            "avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8\n")
