"""Export the UNet to ONNX with the exact input/output contract of the Triton `unet` model, and build the
TensorRT engine that `denoise` runs in-process on GPU (PORTRAIT_UNET_BACKEND=tensorrt, portrait/models/unet_runner.py).

SDXL's UNet is 2.6 B parameters (10 GB in fp32): over protobuf's 2 GB limit, so its weights go to one
external data file beside the graph. The engine is fp16 inside with fp32 I/O, one optimization profile
per latent-size range, each for 1 to max_rows rows.
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
    """The Triton contract: timestep arrives as [R, 1] (one per row), SDXL's added conditioning as tensors."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
        return self.unet(sample, timestep.reshape(-1), encoder_hidden_states=encoder_hidden_states,
                         added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}, return_dict=False)[0]


def example_inputs(unet, rows: int = 2, latent: int = 16) -> tuple[torch.Tensor, ...]:
    cfg = unet.config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    g = torch.Generator().manual_seed(0)
    return (torch.randn(rows, cfg.in_channels, latent, latent, generator=g), torch.tensor([[999.0], [500.0]])[:rows],
            torch.randn(rows, 77, cfg.cross_attention_dim, generator=g), torch.randn(rows, pooled, generator=g),
            torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]]).expand(rows, 6).contiguous())


def export_unet_onnx(unet, path: Path, opset: int = 17, external_data: bool | None = None) -> Path:
    """Write an ONNX graph with dynamic rows and latent height/width (fp32 I/O; TensorRT may run fp16 inside).

    `external_data` (default: when the weights pass 1.5 GB) moves every initializer into `<name>.data` next to
    the graph, as ONNX must for SDXL; ONNX Runtime and TensorRT's parser read it from there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = sum(p.numel() * 4 for p in unet.parameters()) > 1.5 * 2**30
    rows = {0: "rows"}
    staging = Path(tempfile.mkdtemp(prefix="unet-onnx-", dir=path.parent)) if external_data else path.parent
    torch.onnx.export(
        UNetForExport(unet.float().eval()), example_inputs(unet), str(staging / path.name), dynamo=False,
        opset_version=opset,
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


def build_unet_engine(onnx_path: Path, engine_path: Path, cross_attention_dim: int = 2048, pooled_dim: int = 1280,
                      profiles: tuple[EngineProfile, ...] = SDXL_PROFILES, workspace_gib: float = 8.0) -> Path:
    """An fp16 TensorRT engine from the exported ONNX, with the tensorrt Python API (GPU machine only)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads <name>.data beside the graph
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
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
