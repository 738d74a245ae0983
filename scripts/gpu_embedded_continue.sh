#!/usr/bin/env bash
# Second GPU session: continue stage 2 from the first session's export (init/tiny-cogvideox) with the
# object-weighted loss, then measure. Outputs under $1. bash scripts/gpu_embedded_continue.sh "$OUT"
set -u
OUT_DIR=${1:-gpu_out}
mkdir -p "$OUT_DIR" results
EXPORT=export/tiny-cogvideox
timeout ${TRAIN_TIMEOUT:-190} python3 scripts/train_tiny.py --device cuda --export $EXPORT --init-from init/tiny-cogvideox \
    --time-budget ${DIFFUSION_SECONDS:-140} --max-wall ${MAX_WALL:-175} --object-weight 4 --lr 3e-4 --text-lr 3e-4 \
    --warmup 50 --large-every 4 --ckpt-dir checkpoints/train_tiny_continue \
    --loss-log results/train_tiny_loss_continue.csv 2>&1 | grep -v "Warning\|warn(" | tee results/train_continue.log | grep -v "step [0-9]*[1-9]0/\|step [0-9]*[1-9]/"
cp $EXPORT/transformer/diffusion_pytorch_model.safetensors "$OUT_DIR/transformer.safetensors"
tar -cf "$OUT_DIR/pipe_rest.tar" --exclude=diffusion_pytorch_model.safetensors -C export tiny-cogvideox \
  && tar -rf "$OUT_DIR/pipe_rest.tar" -C export tiny-cogvideox/vae/diffusion_pytorch_model.safetensors
tar -cf "$OUT_DIR/results.tar" results
timeout 30 python3 scripts/attention_sparsity.py --model $EXPORT --size large --prompts 2 \
    --device cuda --out results 2>&1 | grep -v "it/s\|Loading"
tar -cf "$OUT_DIR/results.tar" results
timeout ${EVAL_DEFAULT_TIMEOUT:-110} python3 scripts/eval_embedded.py --model $EXPORT --size default --prompts 25 \
    --seeds 2 --device cuda --out results 2>&1 | grep -v "it/s\|Loading\|torchvision\|float32"
tar -cf "$OUT_DIR/results.tar" results
ls -la "$OUT_DIR"
