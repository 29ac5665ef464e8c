"""The pieces of the GPU path that run without a GPU: the UNet's ONNX export and the `unet` override.

The TensorRT build itself (scripts/build_unet_trt.sh) needs a GPU and trtexec and is not run here.
"""

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from portrait.models.export import INPUT_NAMES, UNetForExport, example_inputs, export_unet_onnx
from portrait.models.sdxl import load_unet
from portrait.serving.server import ENSEMBLES, MODEL_REPOSITORY, model_repositories
from portrait.settings import get_settings


@pytest.fixture(scope="module")
def unet(sdxl_dir):
    return load_unet(sdxl_dir)


def test_onnx_export_matches_torch_at_other_shapes(unet, tmp_path):
    path = export_unet_onnx(unet, tmp_path / "unet.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == INPUT_NAMES
    wrapper = UNetForExport(unet)
    for rows, latent in ((1, 8), (3, 24)):  # not the export's example shape: the axes are dynamic
        inputs = example_inputs(unet, rows=min(rows, 2), latent=latent)
        inputs = tuple(torch.cat([t] * 2)[:rows] for t in inputs)
        expected = wrapper(*inputs).detach().numpy()
        got = session.run(None, {n: t.numpy() for n, t in zip(INPUT_NAMES, inputs)})[0]
        assert got.shape == expected.shape == (rows, 4, latent, latent)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_unet_override_replaces_only_the_unet(tmp_path):
    plan_dir = tmp_path / "trt_unet"
    plan_dir.mkdir()
    (plan_dir / "config.pbtxt").write_text('name: "unet"\nplatform: "tensorrt_plan"\n')
    settings = dataclasses.replace(get_settings(), unet_dir=plan_dir)
    merged, ensembles = model_repositories(settings, tmp_path / "repo")
    assert ensembles == ENSEMBLES and (ENSEMBLES / "portrait" / "config.pbtxt").is_file()  # the second repository
    assert (merged / "unet").resolve() == plan_dir.resolve()
    assert (merged / "stage1").resolve() == (MODEL_REPOSITORY / "stage1").resolve()
    assert sorted(p.name for p in merged.iterdir()) == sorted(p.name for p in MODEL_REPOSITORY.iterdir() if p.is_dir())


def test_the_unet_moves_to_its_device_and_dtype_in_one_pass(sdxl_dir, monkeypatch):
    """`.to(device)` then `.to(float16)` put the whole fp32 UNet on the GPU first: 9.65 GiB peak and 9.94 GiB left
    reserved for SDXL on an H200, against 4.88 / 5.03 GiB in one pass (docs/memory.md, scripts/gpu_load_peak). No
    GPU here, so the calls are what is checked: a move that casts (fp16 standing in for the GPU's dtype) is one call."""
    from diffusers import UNet2DConditionModel

    import portrait.models.sdxl as sdxl

    moves = []
    real_to = UNet2DConditionModel.to

    def recording_to(self, *args, **kwargs):
        moves.append((args, kwargs))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "to", recording_to)
    assert next(load_unet(sdxl_dir, "cpu").parameters()).dtype == torch.float32
    assert moves == [(("cpu",), {})]  # nothing to cast: no dtype (diffusers warns about any dtype given to `.to`)
    moves.clear()
    monkeypatch.setattr(sdxl, "torch_dtype", lambda device: torch.float16)
    assert next(load_unet(sdxl_dir, "cpu").parameters()).dtype == torch.float16
    assert moves == [((), {"device": "cpu", "dtype": torch.float16})]
