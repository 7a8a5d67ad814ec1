#!/usr/bin/env bash
# GPU check, for a machine with one H100/H200 (or another CUDA GPU with bf16):
#   1. LoRA SFT of a 0.5B-1.5B model in bf16 on variable-length chat data: ftkit's defaults, ftkit with
#      padding-free batches, plain TRL defaults and TRL without gradient checkpointing, each with real tokens/s,
#      MFU (6 * N * tokens/s / the GPU's peak bf16 FLOP/s) and peak memory (bench/sft_throughput.py);
#   2. ftkit's other stages on the GPU in bf16: data, SFT, GRPO and batched eval (bench/gpu_check.py);
#   3. the same with launch.shard: fsdp (FSDP2 through accelerate, over every visible GPU): sharded loading,
#      training, gathering the shards to save, and eval loading and merging what was saved.
#
#   bash bench/gpu_check.sh [MODEL]
# MODEL: a hub id or a local directory (default Qwen/Qwen2.5-1.5B-Instruct), or shape:qwen2.5-1.5b /
# shape:qwen2.5-0.5b for randomly-initialised weights of that architecture where the hub is out of reach
# (throughput does not depend on the weights; TOKENIZER=<id or dir> names the tokenizer, default ftkit's).
# STEPS (40) and BATCH (32) size the SFT runs.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-Qwen/Qwen2.5-1.5B-Instruct}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU here: nothing to check')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
TOK=()
[ -n "${TOKENIZER:-}" ] && TOK=(--tokenizer "$TOKENIZER")
echo "== SFT throughput: ftkit defaults vs TRL defaults"
"$PYTHON" bench/sft_throughput.py --model "$MODEL" "${TOK[@]}" --data chat --examples 4000 --max-length 1024 \
    --steps "${STEPS:-40}" --batch-size "${BATCH:-32}" --skip trl-fp32 \
    --variant ftkit-padding-free:sft.padding_free=true --trl-variant trl-nogc:gradient_checkpointing=false \
    ${JSON:+--json "$JSON"}
echo "== ftkit stages in bf16: data, SFT, GRPO, eval"
"$PYTHON" bench/gpu_check.py --model "$MODEL" "${TOK[@]}"
echo "== ftkit stages with the model sharded by FSDP2 (launch.shard: fsdp)"
"$PYTHON" bench/gpu_check.py --model "$MODEL" "${TOK[@]}" --shard fsdp --processes "$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')" \
    --sft-steps 10 --rl-steps 2
