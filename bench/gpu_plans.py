"""What each GPU recipe's training plan becomes on a 24 GB and an 80 GB card, by ftkit's memory estimate, with no GPU
and no hub: each model's config is written from its published sizes (config.json alone; the estimate builds the
model on the meta device), and FTKIT_PLAN_MEMORY_GB stands for the card. Prints one plan line per recipe, stage and
card; the recipes' headers quote them.

    python bench/gpu_plans.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# published sizes (each model's config.json on the hub)
CONFIGS = {
    "meta-llama/Llama-2-7b-hf": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
                                 "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                                 "vocab_size": 32000, "max_position_embeddings": 4096, "tie_word_embeddings": False},
    "mistralai/Mistral-7B-v0.1": {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                                  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                  "vocab_size": 32000, "max_position_embeddings": 32768, "sliding_window": 4096,
                                  "tie_word_embeddings": False},
    "EleutherAI/gpt-neo-1.3B": {"model_type": "gpt_neo", "hidden_size": 2048, "num_layers": 24, "num_heads": 16,
                                "vocab_size": 50257, "max_position_embeddings": 2048,
                                "attention_types": [[["global", "local"], 12]], "window_size": 256},
    "Qwen/Qwen2.5-0.5B-Instruct": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
                                   "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                                   "vocab_size": 151936, "max_position_embeddings": 32768,
                                   "tie_word_embeddings": True},
    "Qwen/Qwen2.5-1.5B-Instruct": {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
                                   "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                                   "vocab_size": 151936, "max_position_embeddings": 32768,
                                   "tie_word_embeddings": True},
}
RECIPES = ["llama-2-7b-qlora.yaml", "mistral-7b-qlora.yaml", "gpt-neo-1.3b-lora.yaml", "qwen2.5-0.5b-grpo.yaml",
           "qwen2.5-1.5b-gsm8k-grpo.yaml"]


def main() -> None:
    from ftkit import recipe
    from ftkit.training import plan, preflight

    folder = Path(tempfile.mkdtemp(prefix="ftkit-configs-"))
    for name in RECIPES:
        original = recipe.load(ROOT / "recipes" / name)
        model_dir = folder / original.model.id.replace("/", "--")
        model_dir.mkdir(exist_ok=True)
        (model_dir / "config.json").write_text(json.dumps(CONFIGS[original.model.id]))
        # a GPU computes in bfloat16 (dtype auto there); the model read from the config written above
        cfg = recipe.load(ROOT / "recipes" / name, [f"model.id={model_dir}", "model.dtype=bfloat16"])
        for card in ("24", "80"):
            os.environ[preflight.PLAN_MEMORY] = card
            for stage in [s for s in ("sft", "rl") if s in cfg.stages]:
                resolved = plan.resolve(cfg, stage)
                figures = preflight.estimate(cfg, plan.tokens_for(cfg, stage)(resolved["micro_batch_size"]))
                print(f"{name} {card} GB: {plan.describe(resolved)}; estimate {figures['estimated_gb']} GB "
                      f"({figures['fits']})", flush=True)


if __name__ == "__main__":
    main()
