"""The TensorRT path without a GPU or TensorRT: the API choices for TensorRT 10 and 11 through a stand-in `tensorrt`
module, the predictor's contexts, checked return values and warm-up shapes, and the sizes an engine refuses."""

import dataclasses
import types

import numpy as np
import pytest
import torch

from portrait.errors import InvalidInput
from portrait.models.checkpoint import read_sdxl_info
from portrait.models.export import SDXL_PROFILES, build_unet_engine, engine_precision, export_unet_onnx, onnx_float_types, profile_shapes
from portrait.models.unet_runner import LatentRange, TensorRTPredictor, UNetDims, check_unet_inputs, warm_up, warm_up_shapes
from portrait.serving.denoise_job import denoise_loop


class Recorder:
    def __init__(self):
        self.calls = []


def fake_tensorrt(version: str, log: Recorder, parse_ok=True, accept_shapes=True) -> types.SimpleNamespace:
    """Just enough of the tensorrt module for the build and the predictor, recording what is asked of it."""
    major = int(version.split(".")[0])
    builder_flags = {"TF32": 6} if major >= 11 else {"FP16": 0, "TF32": 6}  # 11 removed FP16 (docs/gpu.md)
    trt = types.SimpleNamespace(__version__=version)
    trt.BuilderFlag = types.SimpleNamespace(**builder_flags)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(NONE=0, AMPERE_PLUS=1, SAME_COMPUTE_CAPABILITY=2)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(STATIC=0, ON_PROFILE_CHANGE=1, USER_MANAGED=2)

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.hardware_compatibility_level = [], [], 0

        def set_flag(self, flag):
            self.flags.append(flag)

        def set_memory_pool_limit(self, pool, size):
            pass

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

    class Profile(dict):
        def set_shape(self, name, lo, opt, hi):
            self[name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            log.calls.append(("create_network", flags))
            return object()

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            log.calls.append(("build", list(config.flags), config.hardware_compatibility_level, len(config.profiles)))
            return b"engine"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return parse_ok

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes = engine, {}

        def set_optimization_profile_async(self, index, stream):
            self.profile = index
            return True

        def set_input_shape(self, name, shape):
            log.calls.append(("shape", self.profile, name, tuple(shape)))
            lo, _, hi = self.engine.profiles[self.profile]
            if name == "sample" and not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = tuple(shape)
            return accept_shapes

        def set_tensor_address(self, name, address):
            return True

        def get_tensor_shape(self, name):
            return self.shapes["sample"]

        def execute_async_v3(self, stream):
            log.calls.append(("execute", self.profile, self.shapes["sample"]))
            return True

    class Engine:
        profiles = [tuple(profile_shapes(p, 96, 64)["sample"]) for p in SDXL_PROFILES]
        num_optimization_profiles = len(profiles)

        def create_execution_context(self, strategy=0):
            log.calls.append(("context", strategy))
            return Context(self)

        def get_tensor_profile_shape(self, name, index):
            return self.profiles[index]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine()

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt


def tiny_onnx(path, dtype) -> str:
    """A one-node graph whose single initializer has `dtype` (what the precision check reads)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1,), dtype), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT, [1])],
                              [weight])
    onnx.save(helper.make_model(graph), str(path))
    return str(path)


@pytest.mark.parametrize("version,strongly_typed,fp16_flag,onnx_dtype", [
    ("10.7.0", False, True, torch.float32), ("10.13.3", False, True, torch.float32),
    ("11.0.0", True, False, torch.float16), ("11.4.1", True, False, torch.float16),
])
def test_engine_precision_by_tensorrt_version(version, strongly_typed, fp16_flag, onnx_dtype):
    p = engine_precision(fake_tensorrt(version, Recorder()))
    assert (p.strongly_typed, p.fp16_flag, p.onnx_dtype) == (strongly_typed, fp16_flag, onnx_dtype)


def test_tensorrt_below_10_is_refused():
    with pytest.raises(RuntimeError, match="10.x or later"):
        engine_precision(fake_tensorrt("8.6.1", Recorder()))


def test_tensorrt_10_build_sets_the_fp16_flag_and_hardware_compatibility(tmp_path):
    log = Recorder()
    trt = fake_tensorrt("10.7.0", log)
    build_unet_engine(tiny_onnx(tmp_path / "u.onnx", np.float32), tmp_path / "u.plan", trt=trt,
                      hardware_compatibility="AMPERE_PLUS")
    assert ("create_network", 0) in log.calls  # weakly typed; EXPLICIT_BATCH is gone in 10
    [build] = [c for c in log.calls if c[0] == "build"]
    assert build == ("build", [trt.BuilderFlag.FP16], trt.HardwareCompatibilityLevel.AMPERE_PLUS, 2)
    assert (tmp_path / "u.plan").read_bytes() == b"engine"


def test_tensorrt_11_build_is_strongly_typed_without_the_removed_flag(tmp_path):
    log = Recorder()
    trt = fake_tensorrt("11.0.0", log)  # no BuilderFlag.FP16: touching it raises AttributeError
    build_unet_engine(tiny_onnx(tmp_path / "u.onnx", np.float16), tmp_path / "u.plan", trt=trt)
    assert ("create_network", 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) in log.calls
    [build] = [c for c in log.calls if c[0] == "build"]
    assert build[1] == [] and build[2] == 0  # no builder precision flag at all; by default this GPU family only
    with pytest.raises(RuntimeError, match="float16"):  # an fp32 graph would give an fp32 engine
        build_unet_engine(tiny_onnx(tmp_path / "f.onnx", np.float32), tmp_path / "f.plan", trt=trt)


def test_fp16_onnx_export_keeps_fp32_io(sdxl_dir, tmp_path):
    """What TensorRT 11 builds from: fp16 weights, fp32 inputs and output (the predictor's contract)."""
    import onnx

    from portrait.models.sdxl import load_unet

    path = export_unet_onnx(load_unet(sdxl_dir), tmp_path / "unet.onnx", dtype=torch.float16)
    assert onnx_float_types(path) == {"FLOAT16"} or "FLOAT16" in onnx_float_types(path)
    model = onnx.load(str(path), load_external_data=False)
    io = [*model.graph.input, *model.graph.output]
    assert {t.type.tensor_type.elem_type for t in io} == {onnx.TensorProto.FLOAT}


@pytest.fixture(scope="module")
def dims(sdxl_dir):
    return UNetDims.read(sdxl_dir)


def trt_predictor(dims, tmp_path, log, **kw):
    (tmp_path / "u.plan").write_bytes(b"engine")
    return TensorRTPredictor(tmp_path / "u.plan", dims, "cpu", trt=fake_tensorrt("10.7.0", log, **kw))


def test_predictor_contexts_and_latent_sizes_come_from_the_engine(dims, tmp_path):
    log = Recorder()
    predictor = trt_predictor(dims, tmp_path, log)
    assert [c for c in log.calls if c[0] == "context"] == [("context", 1)] * 2  # ON_PROFILE_CHANGE, one per profile
    assert predictor.dims.latent_ranges == (LatentRange(64, 96, 96, 16, dims.downsample),
                                            LatentRange(96, 128, 128, 16, dims.downsample))


def test_warm_up_runs_at_the_engines_profile_shapes(dims, tmp_path):
    """The GPU image's default backend: a warm-up at latent 8 is outside every profile and the server never gets ready."""
    log = Recorder()
    predictor = trt_predictor(dims, tmp_path, log)
    warm_up(predictor, predictor.dims)
    executed = [c[1:] for c in log.calls if c[0] == "execute"]
    assert executed == [(0, (1, 4, 96, 96)), (0, (16, 4, 96, 96)), (1, (1, 4, 128, 128)), (1, (16, 4, 128, 128))]
    assert warm_up_shapes(dims) == [(1, 8)]  # the torch predictor: any size, one small forward


def test_refused_shapes_and_too_many_rows(dims, tmp_path):
    log = Recorder()
    predictor = trt_predictor(dims, tmp_path, log, accept_shapes=False)
    call = dict(rows=2, side=64)
    with pytest.raises(RuntimeError, match="refused input shape"):  # set_input_shape's False is not ignored
        predictor(make_call(dims, **call))
    log = Recorder()
    predictor = trt_predictor(dims, tmp_path, log)
    out = predictor(make_call(dims, rows=20, side=64))  # more rows than the profile takes: two chunks
    assert out.shape == (20, 4, 64, 64)
    assert [c[2][0] for c in log.calls if c[0] == "execute"] == [16, 4]


def make_call(dims, rows, side):
    from portrait.diffusion.loop import UNetCall

    return UNetCall(torch.zeros(rows, dims.in_channels, side, side), torch.full((rows,), 999.0),
                    torch.zeros(rows, 77, dims.cross_attention_dim), torch.zeros(rows, dims.pooled_dim),
                    torch.zeros(rows, dims.time_ids), 0, 1)


def request(dims, height, width):
    d, p = dims.cross_attention_dim, dims.pooled_dim
    arrays = {"seeds": np.arange(1, dtype=np.int64), "prompt_embeds": np.zeros((1, 77, d), np.float32),
              "pooled_prompt_embeds": np.zeros((1, p), np.float32),
              "negative_prompt_embeds": np.zeros((1, 77, d), np.float32),
              "negative_pooled_prompt_embeds": np.zeros((1, p), np.float32)}
    return arrays, {"height": height, "width": width, "steps": 2, "guidance_scale": 5.0, "guidance_cutoff": 0.2}


@pytest.mark.parametrize("height,width,field,text", [
    (832, 1216, "width", "1216 px cannot run here"),  # a portrait-mode size past the profile maximum (latent 152 > 128)
    (1216, 832, "height", "outside the TensorRT engine's profiles"),
    (1000, 1024, "height", "not a multiple of 4"),  # latent 125: the traced graph's upsample branch needs multiples of 4
    (512, 1024, "width", "no profile of the TensorRT engine takes latent height 64 with width 128"),
    (256, 256, "height", "outside"),
])
def test_sizes_the_engine_cannot_run_are_refused_by_field(sdxl_dir, dims, height, width, field, text):
    engine_dims = dataclasses.replace(dims, latent_ranges=(LatentRange(64, 96, 96, 16, 4), LatentRange(96, 128, 128, 16, 4)))
    info = read_sdxl_info(sdxl_dir)
    with pytest.raises(InvalidInput) as caught:
        denoise_loop(*request(dims, height, width), info, engine_dims)
    assert caught.value.field == field and text in str(caught.value), str(caught.value)
    for ok in ((1024, 1024), (768, 768), (1024, 768), (512, 512), (768, 1024)):
        assert next(denoise_loop(*request(dims, *ok), info, engine_dims)).sample.shape[2:] == (ok[0] // 8, ok[1] // 8)
    assert next(denoise_loop(*request(dims, height, width), info, dims)) is not None  # torch: any size
    sample = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(InvalidInput, match="sample"):  # the `unet` model's own check, same rule
        check_unet_inputs(engine_dims, sample, np.full((1, 1), 1.0, np.float32), np.zeros((1, 77, dims.cross_attention_dim), np.float32),
                          np.zeros((1, dims.pooled_dim), np.float32), np.zeros((1, 6), np.float32))
