"""Export the UNet to ONNX with the exact input/output contract of the Triton `unet` model, and build the
TensorRT engine that `denoise` runs in-process on GPU (PORTRAIT_UNET_BACKEND=tensorrt, portrait/models/unet_runner.py).

SDXL's UNet is 2.6 B parameters (10 GB in fp32): over protobuf's 2 GB limit, so its weights go to one
external data file beside the graph. The engine has fp32 I/O and runs fp16 inside, one optimization profile
per latent-size range, each for 1 to max_rows rows.

How fp16 gets in depends on the TensorRT major version (`engine_precision`, docs/gpu.md):
- 10.x: an fp32 ONNX and `BuilderFlag.FP16` (weak typing: TensorRT picks fp16 kernels where it likes);
- 11 and later: weak typing is gone (`BuilderFlag.FP16` removed, networks always strongly typed), so the ONNX
  itself carries fp16 (weights and compute; casts at the fp32 edges), as NVIDIA's diffusion demo exports it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

INPUT_NAMES = ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
OUTPUT_NAMES = ["noise_pred"]


class UNetForExport(torch.nn.Module):
    """The Triton contract: timestep arrives as [R, 1] (one per row), SDXL's added conditioning as tensors.

    I/O stays fp32 whatever the UNet's dtype: an fp16 UNet gets casts at the edges inside the graph, so a
    strongly typed engine runs fp16 while callers keep sending and receiving fp32."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.dtype = next(unet.parameters()).dtype

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
        dt = self.dtype
        out = self.unet(sample.to(dt), timestep.reshape(-1), encoder_hidden_states=encoder_hidden_states.to(dt),
                        added_cond_kwargs={"text_embeds": text_embeds.to(dt), "time_ids": time_ids.to(dt)},
                        return_dict=False)[0]
        return out.float()


def example_inputs(unet, rows: int = 2, latent: int = 16) -> tuple[torch.Tensor, ...]:
    cfg = unet.config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    g = torch.Generator().manual_seed(0)
    return (torch.randn(rows, cfg.in_channels, latent, latent, generator=g), torch.tensor([[999.0], [500.0]])[:rows],
            torch.randn(rows, 77, cfg.cross_attention_dim, generator=g), torch.randn(rows, pooled, generator=g),
            torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]]).expand(rows, 6).contiguous())


def export_unet_onnx(unet, path: Path, opset: int = 17, external_data: bool | None = None,
                     dtype: torch.dtype = torch.float32) -> Path:
    """Write an ONNX graph with dynamic rows and latent height/width; fp32 I/O, weights and compute in `dtype`.

    The latent sides of the traced graph must be multiples of the UNet's downsampling factor (4 for SDXL): tracing
    fixes diffusers' `forward_upsample_size` branch at the example's size (UNetDims.downsample; the engine's and
    `check_latent_size`'s rule). `external_data` (default: when the weights pass 1.5 GB) moves every initializer
    into `<name>.data` next to the graph, as ONNX must for SDXL; ONNX Runtime and TensorRT's parser read it there.
    The UNet is exported in place: with dtype=float16 it is left in fp16."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = sum(p.numel() * 4 for p in unet.parameters()) > 1.5 * 2**30
    rows = {0: "rows"}
    staging = Path(tempfile.mkdtemp(prefix="unet-onnx-", dir=path.parent)) if external_data else path.parent
    unet = unet.to(dtype=dtype).eval()
    device = next(unet.parameters()).device
    torch.onnx.export(
        UNetForExport(unet), tuple(t.to(device) for t in example_inputs(unet)), str(staging / path.name),
        dynamo=False, opset_version=opset,
        input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
        dynamic_axes={"sample": {0: "rows", 2: "height", 3: "width"}, "timestep": rows,
                      "encoder_hidden_states": rows, "text_embeds": rows, "time_ids": rows,
                      "noise_pred": {0: "rows", 2: "height", 3: "width"}},
    )
    if external_data:  # large exports come out with one file per tensor: gather them into one
        import onnx

        model = onnx.load(str(staging / path.name))
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        shutil.rmtree(staging, ignore_errors=True)
    return path


@dataclass(frozen=True)
class EngineProfile:
    """One TensorRT optimization profile: latent sides min..max (opt at `opt`), rows 1..max_rows."""

    min_latent: int
    opt_latent: int
    max_latent: int
    max_rows: int = 16
    opt_rows: int = 4


# 512..768 px and 768..1024 px (and portrait/landscape within each range): SDXL's working sizes
SDXL_PROFILES = (EngineProfile(64, 96, 96), EngineProfile(96, 128, 128))


def profile_shapes(profile: EngineProfile, cross_attention_dim: int, pooled_dim: int) -> dict[str, tuple]:
    """name -> (min, opt, max) shapes for TensorRT's IOptimizationProfile.set_shape."""
    def shapes(rows: int, latent: int) -> dict[str, tuple]:
        return {"sample": (rows, 4, latent, latent), "timestep": (rows, 1),
                "encoder_hidden_states": (rows, 77, cross_attention_dim), "text_embeds": (rows, pooled_dim),
                "time_ids": (rows, 6)}
    lo, opt, hi = shapes(1, profile.min_latent), shapes(profile.opt_rows, profile.opt_latent), \
        shapes(profile.max_rows, profile.max_latent)
    return {name: (lo[name], opt[name], hi[name]) for name in INPUT_NAMES}


@dataclass(frozen=True)
class EnginePrecision:
    """How an fp16 engine is asked of this TensorRT: the ONNX's dtype, the network flags, the builder flag."""

    tensorrt: str  # the version it was decided for
    strongly_typed: bool  # the ONNX carries fp16 and TensorRT keeps every type as given
    onnx_dtype: torch.dtype
    fp16_flag: bool  # BuilderFlag.FP16 (10.x only)


def tensorrt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def engine_precision(trt) -> EnginePrecision:
    """TensorRT 10.x: fp32 ONNX + BuilderFlag.FP16. 11 and later (or any build without BuilderFlag.FP16): fp16 ONNX,
    strongly typed. Below 10 is refused: the runtime calls (set_input_shape, execute_async_v3 ...) are 10's."""
    major = tensorrt_major(trt)
    if major < 10:
        raise RuntimeError(f"TensorRT {trt.__version__} is too old: 10.x or later is needed (docs/gpu.md)")
    if major == 10 and hasattr(trt.BuilderFlag, "FP16"):
        return EnginePrecision(trt.__version__, strongly_typed=False, onnx_dtype=torch.float32, fp16_flag=True)
    return EnginePrecision(trt.__version__, strongly_typed=True, onnx_dtype=torch.float16, fp16_flag=False)


def onnx_float_types(onnx_path: Path) -> set[str]:
    """The element types of the graph's float initializers ('FLOAT', 'FLOAT16' ...), read without the weights."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    names = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "FLOAT16", onnx.TensorProto.BFLOAT16: "BFLOAT16"}
    return {names[t.data_type] for t in model.graph.initializer if t.data_type in names}


# the hardware-compatibility level of the engines we build: None = this GPU family only, at full speed. The GPU
# overlay loads one engine per family (/models/engines/sm<major><minor>/unet.plan, scripts/build_unet_trt.sh);
# "AMPERE_PLUS" makes one file that loads on every family from Ampere on, at some cost in speed (docs/gpu.md)
HARDWARE_COMPATIBILITY: str | None = None


def build_unet_engine(onnx_path: Path, engine_path: Path, cross_attention_dim: int = 2048, pooled_dim: int = 1280,
                      profiles: tuple[EngineProfile, ...] = SDXL_PROFILES, workspace_gib: float = 8.0,
                      hardware_compatibility: str | None = HARDWARE_COMPATIBILITY, trt=None) -> Path:
    """An fp16 TensorRT engine from an ONNX exported with `engine_precision(trt).onnx_dtype` (GPU machine only).

    `hardware_compatibility` ("AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY" or None) is TensorRT's
    HardwareCompatibilityLevel: with AMPERE_PLUS the engine loads on any GPU from Ampere on, at some cost in speed;
    with None it loads only on the GPU family it was built on. Either way only the TensorRT version that built it
    can load it (docs/gpu.md). `trt`: the tensorrt module (a stand-in in tests)."""
    if trt is None:
        import tensorrt as trt

    precision = engine_precision(trt)
    if precision.strongly_typed:  # a strongly typed build of an fp32 graph would be an fp32 engine: refuse it
        try:
            found = onnx_float_types(onnx_path)
        except ImportError:
            found = set()
        if "FLOAT" in found and "FLOAT16" not in found:
            raise RuntimeError(f"{onnx_path} holds fp32 weights, and TensorRT {trt.__version__} builds strongly typed: "
                               "export it with dtype=torch.float16 (build_engine_from_unet does)")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if precision.strongly_typed and typed is not None:  # 10.x needs the flag; 11 is strongly typed anyway
        flags |= 1 << int(typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads <name>.data beside the graph
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if precision.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if hardware_compatibility is not None:
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, hardware_compatibility)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    for p in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes(p, cross_attention_dim, pooled_dim).items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the UNet engine (see the log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    return engine_path


def build_engine_from_unet(unet, engine_path: Path, work_dir: Path, cross_attention_dim: int, pooled_dim: int,
                           profiles: tuple[EngineProfile, ...] = SDXL_PROFILES, external_data: bool | None = None,
                           hardware_compatibility: str | None = HARDWARE_COMPATIBILITY, trt=None) -> Path:
    """Export the ONNX this TensorRT wants (fp32 for 10.x, fp16 for 11+) into work_dir, then build the engine."""
    if trt is None:
        import tensorrt as trt

    precision = engine_precision(trt)
    onnx_path = export_unet_onnx(unet, Path(work_dir) / "unet.onnx", external_data=external_data,
                                 dtype=precision.onnx_dtype)
    return build_unet_engine(onnx_path, engine_path, cross_attention_dim, pooled_dim, profiles,
                             hardware_compatibility=hardware_compatibility, trt=trt)
