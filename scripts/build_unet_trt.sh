#!/usr/bin/env bash
# Build the TensorRT plan for the `unet` model on a GPU machine with TensorRT (trtexec) installed:
#   scripts/build_unet_trt.sh [ONNX] [OUT_DIR]
# ONNX defaults to out/onnx/unet.onnx (scripts/export_unet_onnx.py); OUT_DIR to infra/gpu/unet.
# fp16 inside, fp32 at the edges (the Triton contract); profile: 1..16 rows, latents 96..128.
set -euo pipefail
onnx=${1:-out/onnx/unet.onnx}
out=${2:-infra/gpu/unet}
mkdir -p "$out/1"
shape() { echo "sample:$1x4x$2x$2,timestep:$1x1,encoder_hidden_states:$1x77x2048,text_embeds:$1x1280,time_ids:$1x6"; }
trtexec --onnx="$onnx" --saveEngine="$out/1/model.plan" --fp16 \
  --minShapes="$(shape 1 96)" --optShapes="$(shape 4 128)" --maxShapes="$(shape 16 128)"
echo "$out/1/model.plan"
