#!/usr/bin/env bash
# Build the UNet's TensorRT engine for THIS GPU's family with THIS environment's tensorrt Python module, where the GPU
# overlay (infra/k8s/components/gpu) looks for it:
#   scripts/build_unet_trt.sh [ENGINES_DIR]      ->  ENGINES_DIR/sm<major><minor>/unet.plan   (default /models/engines)
# Run it inside the GPU image (infra/Containerfile.gpu), once on a GPU of each family the node tiers admit: an engine
# loads only on its GPU family and only under the TensorRT version that built it, so it is built by the same
# `tensorrt` module `denoise` loads it with (not a trtexec of another version). Profiles: latents 64..96 and
# 96..128 (512..1024 px), 1..PORTRAIT_MAX_ROWS rows; the fp16 recipe follows the TensorRT version (docs/gpu.md).
# Extra arguments go to scripts/export_unet_onnx.py (e.g. --hardware-compatible for one Ampere-and-later engine).
set -euo pipefail
engines=${1:-/models/engines}
shift || true
cc=$(python -c "import torch; print('sm%d%d' % torch.cuda.get_device_capability())")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python "$(dirname "$0")/export_unet_onnx.py" --out "$work/unet.onnx" --engine "$engines/$cc/unet.plan" "$@"
