#!/usr/bin/env bash
# One GPU session (H200) that trains the embedded model and measures it; outputs under $1 (default: gpu_out).
# Used for the shipped weights: bash scripts/gpu_embedded.sh "$OUT"
set -u
OUT_DIR=${1:-gpu_out}
mkdir -p "$OUT_DIR" results
EXPORT=export/tiny-cogvideox
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__, torch.cuda.get_device_name())"
timeout ${TRAIN_TIMEOUT:-420} python3 scripts/train_tiny.py --device cuda --export $EXPORT \
    --vae-time-budget ${VAE_SECONDS:-50} --time-budget ${DIFFUSION_SECONDS:-270} --max-wall ${MAX_WALL:-390} \
    --loss-log results/train_tiny_loss.csv 2>&1 | grep -v "Warning\|warn(" | tee results/train.log | grep -v "step [0-9]*[1-9]/\|vae step" 
cp $EXPORT/transformer/diffusion_pytorch_model.safetensors "$OUT_DIR/transformer.safetensors"
tar -cf "$OUT_DIR/pipe_rest.tar" --exclude=diffusion_pytorch_model.safetensors -C export tiny-cogvideox \
  && tar -rf "$OUT_DIR/pipe_rest.tar" -C export tiny-cogvideox/vae/diffusion_pytorch_model.safetensors
tar -cf "$OUT_DIR/results.tar" results
timeout ${SPARSITY_TIMEOUT:-50} python3 scripts/attention_sparsity.py --model $EXPORT --size large --prompts 2 \
    --device cuda --out results 2>&1 | grep -v "it/s\|Loading"
timeout 25 python3 scripts/attention_sparsity.py --model $EXPORT --size large --prompts 1 --random \
    --device cuda --out results 2>&1 | grep -v "it/s\|Loading" | tail -14
tar -cf "$OUT_DIR/results.tar" results
timeout ${EVAL_DEFAULT_TIMEOUT:-70} python3 scripts/eval_embedded.py --model $EXPORT --size default --prompts 25 \
    --seeds 2 --device cuda --out results 2>&1 | grep -v "it/s\|Loading\|torchvision"
tar -cf "$OUT_DIR/results.tar" results
timeout ${EVAL_LARGE_TIMEOUT:-50} python3 scripts/eval_embedded.py --model $EXPORT --size large --prompts 8 \
    --seeds 1 --device cuda --out results 2>&1 | grep -v "it/s\|Loading\|torchvision"
tar -cf "$OUT_DIR/results.tar" results
ls -la "$OUT_DIR"
