"""The GPU image's versions agree (Triton base CUDA, torch's CUDA build, TensorRT's cu wheel), and the engine is built
by that image's own TensorRT where the GPU overlay looks for it (issue 25 item 6; docs/gpu.md)."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# facts, with where they were read (docs/gpu.md): NVIDIA's Triton release notes ("Release 25.10 is based on CUDA
# 13.0.2"; 25.01 on 12.8), PyPI's torch wheels' metadata (2.11.0 and 2.13.0 require nvidia-*-cu13 packages)
TRITON_CUDA = {"25.01": 12, "25.08": 13, "25.10": 13}
TORCH_PYPI_CUDA = {"2.11.0": 13, "2.13.0": 13}


def test_base_image_torch_and_tensorrt_share_one_cuda_major():
    gpu = (ROOT / "infra" / "Containerfile.gpu").read_text()
    base = re.search(r"^ARG BASE=nvcr.io/nvidia/tritonserver:(\d\d\.\d\d)-py3$", gpu, re.M).group(1)
    trt_cuda, trt_version = re.search(r'"tensorrt-cu(\d+)==([\d.]+)"', gpu).groups()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_version = next(d.split("==")[1] for d in deps if d.startswith("torch=="))
    assert TRITON_CUDA[base] == TORCH_PYPI_CUDA[torch_version] == int(trt_cuda), (base, torch_version, trt_cuda)
    assert int(trt_version.split(".")[0]) >= 10  # export.engine_precision refuses older ones
    # the image's build refuses a torch or TensorRT other than these
    major_minor = ".".join(trt_version.split(".")[:2])
    assert f"startswith('{major_minor}.')" in gpu and f"startswith('{TORCH_PYPI_CUDA[torch_version]}.')" in gpu


def test_engine_build_uses_the_images_tensorrt_and_the_overlays_layout():
    script = (ROOT / "scripts" / "build_unet_trt.sh").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert "trtexec" not in code and "export_unet_onnx.py" in code and "--engine" in code
    assert '"$engines/$cc/unet.plan"' in code and "get_device_capability" in code
    overlay = (ROOT / "infra" / "k8s" / "components" / "gpu" / "kustomization.yaml").read_text()
    assert "/models/engines/$cc/unet.plan" in overlay and "sm%d%d" in overlay and "sm%d%d" in code
