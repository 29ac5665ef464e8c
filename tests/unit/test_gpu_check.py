"""scripts/gpu_check's CPU fallback (--smoke) and the pieces of the TensorRT path that run without a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from portrait.models.export import INPUT_NAMES, SDXL_PROFILES, UNetForExport, example_inputs, export_unet_onnx, profile_shapes

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check"), "--smoke", "--device", "cpu",
                           "--concurrency", "1", "2", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["device"] == "cpu" and len(report["precision"]) == 2
    assert [r["concurrent_requests"] for r in report["scheduler"]] == [1, 2]
    two = report["scheduler"][1]
    assert two["forwards"] <= two["steps"] + 1  # the two requests share forwards (the second may join one tick late)
    assert "tensorrt" in report["tensorrt"]  # says whether TensorRT was importable


def test_gpu_check_imports_no_diffusers_at_start_up():
    """The lent GPU machine has no diffusers: the script must get as far as saying so."""
    code = ("import sys, runpy; sys.modules['diffusers'] = None; sys.argv = ['gpu_check', '--smoke', '--device', 'cpu']\n"
            f"runpy.run_path({str(ROOT / 'scripts' / 'gpu_check')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "diffusers is not importable" in done.stderr + done.stdout


def test_onnx_export_with_external_data(sdxl_dir, tmp_path):
    from portrait.models.sdxl import load_unet

    unet = load_unet(sdxl_dir)
    path = export_unet_onnx(unet, tmp_path / "unet.onnx", external_data=True)
    assert (tmp_path / "unet.onnx.data").stat().st_size > path.stat().st_size  # the weights live beside the graph
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx", "unet.onnx.data"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = example_inputs(unet, rows=2, latent=12)
    expected = UNetForExport(unet)(*inputs).detach().numpy()
    got = session.run(None, {n: t.numpy() for n, t in zip(INPUT_NAMES, inputs)})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_engine_profiles_cover_sdxl_sizes_and_rows():
    low, high = (profile_shapes(p, 2048, 1280) for p in SDXL_PROFILES)
    assert low["sample"][0] == (1, 4, 64, 64) and high["sample"][2] == (16, 4, 128, 128)
    assert high["encoder_hidden_states"][2] == (16, 77, 2048) and high["text_embeds"][1] == (4, 1280)
    assert all(len(v) == 3 for v in high.values()) and set(high) == set(INPUT_NAMES)
    assert torch.Size(high["time_ids"][2]) == torch.Size([16, 6])
