"""GGUF export (`export.gguf`): tiny models written as GGUF by ftkit, read back with transformers' own GGUF loader and
tokenizer, and compared with the model they were written from; the Ollama Modelfile; refusals at validation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftkit import cli, recipe
from ftkit.core.io import read_json
from ftkit.models import gguf_export, loader
from ftkit.scoring.tasks import Addition
from ftkit.training import preflight
from tests.conftest import build_model, build_tokenizer, make_model_dir, recipe_file, tiny

# f16 rounds each weight to 11 significant bits: measured 0.0013 standard deviations of the logits at most on these
# models; q8_0 (8-bit blocks of 32): 0.035.
LOGIT_TOLERANCE = {"f16": 0.01, "bf16": 0.05, "q8_0": 0.1}


def _conversations(n: int = 6) -> list[list[dict]]:
    rows = Addition().splits(n, 1, 3)["train"]
    return [[{"role": "user", "content": r["prompt"]}] for r in rows]


def _read_back(folder, name):
    """The GGUF file as a colleague opens it: transformers' GGUF loader and tokenizer, nothing from ftkit."""
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)


def _greedy(model, ids: list[int], tokens: int = 12, stop_at_end: bool = False) -> list[int]:
    """Greedy new tokens: `tokens` of them (an end token does not stop them unless `stop_at_end`)."""
    out = model.generate(torch.tensor([ids]), max_new_tokens=tokens, min_new_tokens=1 if stop_at_end else tokens,
                         do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_a_written_gguf_reads_back_with_the_same_tokens_logits_and_greedy_replies(tmp_path, arch, kind):
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, arch=arch, tied=arch != "qwen2")  # tied and untied heads both
    model.eval()
    written = gguf_export.write(model, tokenizer, tmp_path / "m.gguf", kind, "tiny")
    assert written["bytes"] == (tmp_path / "m.gguf").stat().st_size and written["pre_tokenizer"] == "gpt-2"
    matrices = sum(p.dim() == 2 for n, p in model.state_dict().items()
                   if not (model.config.tie_word_embeddings and n == "lm_head.weight"))
    assert written["tensor_types"][kind.upper()] == matrices  # every matrix in the chosen type, norms in float32
    back, own = _read_back(tmp_path, "m.gguf")
    assert type(back).__name__ == ("Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM")
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in _conversations()]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert own(texts, add_special_tokens=False)["input_ids"] == ids
    agreement = gguf_export.logit_agreement(model, back, ids)
    assert agreement["max_logit_diff_over_std"] < LOGIT_TOLERANCE[kind], agreement
    assert agreement["top1_same"] >= (1.0 if kind == "f16" else 0.95), agreement
    if kind == "f16":
        with torch.no_grad():
            assert all(_greedy(model, row) == _greedy(back, row) for row in ids)


@pytest.mark.parametrize("template", ["chatml", "ftkit-default"])
def test_the_chat_template_survives_the_trip(tmp_path, template):
    tokenizer = build_tokenizer()
    if template == "ftkit-default":  # a base model's tokenizer: ftkit's ### Role: headers and a BOS token
        tokenizer.chat_template = loader.DEFAULT_CHAT_TEMPLATE
    model = build_model(tokenizer, arch="llama")
    gguf_export.write(model, tokenizer, tmp_path / "m.gguf", "f16", "tiny")
    _, own = _read_back(tmp_path, "m.gguf")
    assert own.chat_template == tokenizer.chat_template
    conversation = [{"role": "system", "content": "Be brief."}, *_conversations(1)[0],
                    {"role": "assistant", "content": "42"}, {"role": "user", "content": "And 1 + 1?"}]
    assert own.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True) == \
        tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert (own.bos_token, own.eos_token, own.pad_token) == (tokenizer.bos_token, tokenizer.eos_token,
                                                             tokenizer.pad_token)


def test_the_modelfile_carries_the_template_in_go_the_system_prompt_and_the_stops():
    tokenizer = build_tokenizer()
    text = gguf_export.modelfile("run-sft-q8_0.gguf", tokenizer, "Be brief.", 0.0, 12, ["\n\n"])
    assert text.splitlines()[0] == "FROM ./run-sft-q8_0.gguf"
    assert f'TEMPLATE """{gguf_export.CHATML_GO}"""' in text and 'SYSTEM """Be brief."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "\\n\\n"' in text
    assert "PARAMETER temperature 0" in text and "PARAMETER num_predict 12" in text
    tokenizer.chat_template = loader.DEFAULT_CHAT_TEMPLATE
    template, implied, stops = gguf_export.ollama_template(tokenizer)
    assert template.startswith("<|im_start|>{{- range .Messages }}### ") and "<|im_end|>\n{{ end }}" in template
    assert implied is None and stops == ["<|im_end|>", "### User:"]
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    assert gguf_export.ollama_template(tokenizer)[0] is None  # not a format ftkit writes in Go: Ollama reads the GGUF's
    assert "no TEMPLATE" in gguf_export.modelfile("m.gguf", tokenizer, None, 0.7, 8, [])


def test_rotary_rows_are_reordered_as_transformers_reorders_them_back():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weights = torch.randn(4 * 8, 16).numpy()  # 4 heads of 8 dimensions
    ordered = gguf_export.rotary_order(weights, 4)
    undone = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 4}).process(
        ordered, "blk.0.attn_q.weight").weights
    assert (undone == weights).all() and not (ordered == weights).all()


@pytest.mark.parametrize("arch", ["gpt_neo", "gemma3"])
def test_an_architecture_ftkit_cannot_write_is_refused_at_validation(tmp_path, arch, capsys):
    """GPT-Neo has no GGUF form; a Gemma 3 whose attention scale is not 1/sqrt(head_dim) (the tiny one: head_dim 8,
    query_pre_attn_scalar 256) would run differently in llama.cpp."""
    model_dir = make_model_dir(tmp_path, arch)
    path = recipe_file(tmp_path, tiny(model_dir), stages=["data", "sft", "export"], export={"gguf": ["f16", "q8_0"]})
    [problem] = preflight.preflight(recipe.load(path), check_memory=False)
    if arch == "gpt_neo":
        assert problem.startswith("export.gguf = ['f16', 'q8_0']: model_type 'gpt_neo' cannot be written as GGUF")
        assert "supported: llama, mistral, qwen2, gemma3_text" in problem
    else:
        assert "Gemma 3 with query_pre_attn_scalar 256 (not head_dim 8) cannot be written as GGUF" in problem
    assert "remove export.gguf" in problem
    assert cli.main(["validate", str(path)]) != 0
    assert "cannot be written as GGUF" in capsys.readouterr().err


def test_gemma3_round_trips_with_its_shifted_norms_and_sliding_window(tmp_path):
    """Gemma 3's shape (head_dim 256 = query_pre_attn_scalar, five local layers then a global one, norms scaling by
    1 + weight) on prompts longer than its 16-token window: transformers reads the file back, and llama.cpp where
    installed gives the same greedy tokens."""
    import transformers

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=7, num_attention_heads=4,
        num_key_value_heads=2, head_dim=256, query_pre_attn_scalar=256, sliding_window=16,
        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norms away from their initial zeros, so that a missing shift shows
        for name, weight in model.named_parameters():
            if "norm" in name:
                weight.add_(torch.randn_like(weight) * 0.3)
    gguf_export.write(model, tokenizer, tmp_path / "m.gguf", "f16", "tiny")
    back, _ = _read_back(tmp_path, "m.gguf")
    assert type(back).__name__ == "Gemma3ForCausalLM" and back.config.sliding_window == 16
    assert back.config.layer_types == model.config.layer_types
    system = [{"role": "system", "content": "Add the two numbers, check the sum twice, then answer with the number."}]
    texts = [tokenizer.apply_chat_template(system + c, tokenize=False, add_generation_prompt=True)
             for c in _conversations(4)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert min(map(len, ids)) > 16
    agreement = gguf_export.logit_agreement(model, back, ids)
    assert agreement["max_logit_diff_over_std"] < LOGIT_TOLERANCE["f16"] and agreement["top1_same"] >= 0.98
    pytest.importorskip("llama_cpp")
    ran = gguf_export.llama_cpp_replies(tmp_path / "m.gguf", texts, ids, 8)
    with torch.no_grad():
        expected = [_greedy(model, row, 8, stop_at_end=True) for row in ids]
    assert ran["tokenized_alike"] == len(ids)
    assert ran["replies"] == [e[:-1] if e[-1] == tokenizer.eos_token_id else e for e in expected]


def test_gguf_types_are_checked_in_the_recipe(tmp_path):
    with pytest.raises(recipe.RecipeError, match="export.gguf"):
        recipe.build({"name": "g", "export": {"gguf": ["q4_0"]}})


@pytest.mark.pipeline
def test_the_export_stage_writes_gguf_files_checked_against_the_merge(tmp_path, tiny_model_dir):
    path = recipe_file(tmp_path, tiny(tiny_model_dir), stages=["data", "sft", "eval", "export"],
                       export={"gguf": ["f16", "q8_0"]}, file="tiny.yaml")
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(path), "--run-dir", str(run_dir)]) == 0, read_json(run_dir / "status.json")
    exported = read_json(run_dir / "metrics.json")["export"]
    assert set(exported["gguf"]) == {"f16", "q8_0"}
    for kind, written in exported["gguf"].items():
        assert (run_dir / written["file"]).is_file() and (run_dir / written["modelfile"]).is_file()
    check = exported["gguf_check"]
    n = check["prompts"]
    assert n == 16 and check["f16"]["greedy_same"] == check["f16"]["tokenizer_same"] == n
    assert check["f16"]["chat_template_same"] and check["f16"]["task"] == check["merged"]["task"]
    assert exported["gguf"]["q8_0"]["mb"] < exported["gguf"]["f16"]["mb"]
    report = (run_dir / "report.html").read_text()
    assert "GGUF files" in report and "tiny-sft-q8_0.gguf" in report


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_cpp_reads_the_file_and_answers_as_transformers_does(tmp_path, arch):
    """Where llama.cpp's bindings are installed (the `gguf` extra): llama.cpp itself tokenizes the prompts as the
    model's tokenizer does and gives the same greedy replies as the model the file was written from."""
    pytest.importorskip("llama_cpp")
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, arch=arch, tied=False)  # untied: replies are text, not the prompt's last token
    model.eval()
    gguf_export.write(model, tokenizer, tmp_path / "m.gguf", "f16", "tiny")
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in _conversations()]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    ran = gguf_export.llama_cpp_replies(tmp_path / "m.gguf", texts, ids, 8)
    assert ran["tokenized_alike"] == len(texts)
    with torch.no_grad():
        expected = [_greedy(model, row, 8, stop_at_end=True) for row in ids]
    assert ran["replies"] == [e[:-1] if e[-1] == tokenizer.eos_token_id else e for e in expected]


def test_k_quants_are_made_by_llama_cpp_and_read_back(tmp_path):
    """q4_k_m through llama.cpp's own quantizer (the `gguf` extra): it mixes 4- and 6-bit blocks as its llama-quantize
    does, and transformers reads the file back. Rows of 256 weights, the k-quants' block."""
    pytest.importorskip("llama_cpp")
    import transformers

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config).eval()
    written = gguf_export.write(model, tokenizer, tmp_path / "m.gguf", "q4_k_m", "tiny")
    assert written["tensor_types"]["Q4_K"] > written["tensor_types"].get("Q6_K", 0) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # the f16 file it was made from is gone
    back, own = _read_back(tmp_path, "m.gguf")
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in _conversations()]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert own(texts, add_special_tokens=False)["input_ids"] == ids
    assert gguf_export.logit_agreement(model, back, ids)["max_logit_diff_over_std"] < 1.0


def test_k_quants_without_llama_cpp_are_refused_at_validation(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(gguf_export, "has_quantizer", lambda: False)
    path = recipe_file(tmp_path, tiny(tiny_model_dir), stages=["data", "sft", "export"],
                       export={"gguf": ["q8_0", "q4_k_m"]})
    [problem] = preflight.preflight(recipe.load(path), check_memory=False)
    assert problem.startswith("export.gguf = ['q8_0', 'q4_k_m']: q4_k_m needs llama.cpp's quantizer")
    assert "pip install -e '.[gguf]'" in problem and "choose from f16, bf16, q8_0" in problem


def _sentencepiece_style_tokenizer():
    """A tokenizer as Llama 2's and Mistral's tokenizer.json are: BPE over "▁"-marked pieces, ids 3-258 the byte
    pieces that unknown characters fall back to, BOS added; trained on addition questions."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    marked = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.normalizer, raw.pre_tokenizer = marked, pre_tokenizers.Split("▁", behavior="merged_with_next")
    specials = ["<unk>", "<s>", "</s>"]
    raw.train_from_iterator([f"{r['prompt']} {r['answer']}" for r in Addition().splits(300, 1, 0)["train"]],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    learned = raw.get_vocab()
    order = specials + [f"<0x{i:02X}>" for i in range(256)] + sorted(set(learned) - set(specials), key=learned.get)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in
              __import__("json").loads(raw.to_str())["model"]["merges"]]
    spm = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(order)}, merges=merges, unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    spm.normalizer = marked
    spm.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    spm.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=spm, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>", chat_template=loader.DEFAULT_CHAT_TEMPLATE)


def test_a_sentencepiece_style_vocabulary_is_written_as_llama_cpp_reads_it(tmp_path):
    """llama.cpp tokenizes as the model's tokenizer does: the "▁" it puts before a text, after a special token too,
    pieces with byte fallback, runs of spaces. transformers' GGUF reader rebuilds such a vocabulary for plain text
    only: after a special token and before runs of spaces it drops a "▁" (measured here), which the export's check
    reports as prompts not tokenized alike."""
    tokenizer = _sentencepiece_style_tokenizer()
    model = build_model(tokenizer, arch="llama", tied=False)
    written = gguf_export.write(model, tokenizer, tmp_path / "m.gguf", "f16", "tiny")
    assert written["pre_tokenizer"] == "default"  # llama.cpp's SentencePiece path splits on its own
    plain = "What is 12 + 35? é"  # "é": no piece for it, two byte pieces
    own = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert own(plain)["input_ids"] == tokenizer(plain)["input_ids"] and own.bos_token == "<s>"
    llama_cpp = pytest.importorskip("llama_cpp")
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in _conversations()]
    texts += [plain, "  two  spaces"]
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), verbose=False)
    assert [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts] == \
        tokenizer(texts, add_special_tokens=False)["input_ids"]
    del llm
