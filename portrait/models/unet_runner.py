"""The UNet behind the step scheduler: its dimensions, input checks, and the torch / TensorRT predictors.

A predictor is `predict(call: UNetCall) -> noise [R, C, h, w]` (float32, CPU), the only thing the
scheduler knows about the UNet. Torch runs on CPU (fp32) or CUDA (fp16, channels-last, SDPA
attention); a TensorRT engine (portrait/models/export.py `build_unet_engine`) runs in the same process on
GPU: the pip-only Triton has no `tensorrt_plan` backend, and one process per device keeps one copy
of the weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from portrait.diffusion.loop import UNetCall
from portrait.errors import InvalidInput, ModelSetError


@dataclass(frozen=True)
class UNetDims:
    """What a request must match: read from unet/config.json, no weights loaded."""

    in_channels: int
    cross_attention_dim: int
    pooled_dim: int  # text_embeds width: projection input minus SDXL's 6 time ids
    time_ids: int
    downsample: int  # the UNet halves the latent this many times over (other sizes are padded inside)

    @classmethod
    def from_config(cls, cfg) -> UNetDims:
        get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k)
        time_ids = 6
        return cls(in_channels=get("in_channels"), cross_attention_dim=get("cross_attention_dim"),
                   pooled_dim=get("projection_class_embeddings_input_dim") - time_ids * get("addition_time_embed_dim"),
                   time_ids=time_ids, downsample=2 ** (len(get("block_out_channels")) - 1))

    @classmethod
    def read(cls, sdxl_dir: Path) -> UNetDims:
        return cls.from_config(json.loads((Path(sdxl_dir) / "unet" / "config.json").read_text()))


def check_finite(name: str, array) -> None:
    values = array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InvalidInput(name, "must hold finite numbers (no NaN or infinity)")


def check_width(name: str, shape, expected: int, what: str) -> None:
    if shape[-1] != expected:
        raise InvalidInput(name, f"must have width {expected} ({what} of this checkpoint), got {shape[-1]}")


def check_unet_inputs(dims: UNetDims, sample, timestep, hidden, text_embeds, time_ids) -> None:
    """The `unet` model's request, against the checkpoint: shapes, widths, rows, finite values."""
    rows = sample.shape[0]
    if len(sample.shape) != 4:
        raise InvalidInput("sample", f"must be [rows, {dims.in_channels}, h, w], got shape {list(sample.shape)}")
    if sample.shape[1] != dims.in_channels:
        raise InvalidInput("sample", f"must have {dims.in_channels} latent channels, got {sample.shape[1]}")
    for side, n in zip(("height", "width"), sample.shape[2:]):
        if n < 1:  # diffusers' UNet pads odd sizes itself (forward_upsample_size); zero is no image
            raise InvalidInput("sample", f"latent {side} must be at least 1, got {n}")
    check_width("encoder_hidden_states", hidden.shape, dims.cross_attention_dim, "cross_attention_dim")
    check_width("text_embeds", text_embeds.shape, dims.pooled_dim, "the pooled text embedding width")
    check_width("time_ids", time_ids.shape, dims.time_ids, "SDXL's size and crop conditioning")
    for name, a in (("timestep", timestep), ("encoder_hidden_states", hidden), ("text_embeds", text_embeds),
                    ("time_ids", time_ids)):
        n = a.shape[0] if len(a.shape) else 1
        if n != rows:
            raise InvalidInput(name, f"needs one row per sample row ({rows}), got {n}")
    for name, a in (("sample", sample), ("timestep", timestep), ("encoder_hidden_states", hidden),
                    ("text_embeds", text_embeds), ("time_ids", time_ids)):
        check_finite(name, a)


class TorchPredictor:
    """The diffusers UNet in this process: fp32 on CPU; fp16, channels-last and SDPA attention on CUDA."""

    def __init__(self, unet):
        self.unet, self.device, self.dtype = unet, unet.device, unet.dtype
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            from diffusers.models.attention_processor import AttnProcessor2_0

            unet.set_attn_processor(AttnProcessor2_0())  # torch's scaled_dot_product_attention (flash / mem-efficient)
            unet.to(memory_format=torch.channels_last)
        self.dims = UNetDims.from_config(unet.config)

    @torch.no_grad()
    def __call__(self, call: UNetCall) -> torch.Tensor:
        dev, dt = self.device, self.dtype
        sample = call.sample.to(dev, dt, non_blocking=True)
        if self.cuda:
            sample = sample.contiguous(memory_format=torch.channels_last)
        out = self.unet(sample, call.timestep.to(dev), encoder_hidden_states=call.encoder_hidden_states.to(dev, dt),
                        added_cond_kwargs={"text_embeds": call.text_embeds.to(dev, dt),
                                           "time_ids": call.time_ids.to(dev, dt)}, return_dict=False)[0]
        return out.float().cpu()


class TensorRTPredictor:
    """A serialized TensorRT engine (fp32 I/O, fp16 inside) run in-process; one execution context per profile."""

    def __init__(self, engine_file: Path, dims: UNetDims, device: str = "cuda"):
        import tensorrt as trt  # the GPU image only

        if not Path(engine_file).exists():
            raise ModelSetError(f"no TensorRT engine at {engine_file}: build one with "
                                "`scripts/export_unet_onnx.py --engine <file>` on the GPU machine")
        self.trt, self.dims, self.device = trt, dims, torch.device(device)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_file).read_bytes())
        if self.engine is None:
            raise ModelSetError(f"{engine_file} is not a TensorRT engine for this TensorRT version and GPU")
        self.stream = torch.cuda.Stream(self.device)
        self.contexts = []
        for p in range(self.engine.num_optimization_profiles):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(p, self.stream.cuda_stream)
            lo, _, hi = self.engine.get_tensor_profile_shape("sample", p)
            self.contexts.append((tuple(lo), tuple(hi), context))
        self.stream.synchronize()

    def context_for(self, shape: tuple[int, ...]):
        for lo, hi, context in self.contexts:
            if all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return context
        raise InvalidInput("sample", f"shape {list(shape)} is outside every profile of the TensorRT engine "
                                     f"({[(list(lo), list(hi)) for lo, hi, _ in self.contexts]})")

    @torch.no_grad()
    def __call__(self, call: UNetCall) -> torch.Tensor:
        from portrait.models.export import INPUT_NAMES, OUTPUT_NAMES

        context = self.context_for(tuple(call.sample.shape))
        inputs = dict(zip(INPUT_NAMES, (call.sample, call.timestep.reshape(-1, 1), call.encoder_hidden_states,
                                        call.text_embeds, call.time_ids)))
        with torch.cuda.stream(self.stream):
            keep = {k: v.to(self.device, torch.float32, non_blocking=True).contiguous() for k, v in inputs.items()}
            for name, tensor in keep.items():
                context.set_input_shape(name, tuple(tensor.shape))
                context.set_tensor_address(name, tensor.data_ptr())
            out = torch.empty(tuple(context.get_tensor_shape(OUTPUT_NAMES[0])), dtype=torch.float32, device=self.device)
            context.set_tensor_address(OUTPUT_NAMES[0], out.data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            result = out.cpu()  # synchronizes the stream
        return result


def load_predictor(settings, backend: str | None = None):
    """The configured predictor (settings.unet_backend on settings.device), PhotoMaker's LoRA fused when present."""
    from portrait.models.sdxl import load_unet

    backend = backend or settings.unet_backend
    if backend == "torch":
        return TorchPredictor(load_unet(settings.sdxl_dir, settings.device, settings.photomaker_file, settings.unet_storage))
    if backend == "tensorrt":
        if not settings.device.startswith("cuda"):
            raise ModelSetError("PORTRAIT_UNET_BACKEND=tensorrt needs PORTRAIT_DEVICE=cuda")
        engine = settings.unet_engine or settings.cache_dir / "unet.plan"
        return TensorRTPredictor(engine, UNetDims.read(settings.sdxl_dir), settings.device)
    raise ModelSetError(f"PORTRAIT_UNET_BACKEND must be torch or tensorrt, got {backend!r}")


def warm_up(predict, dims: UNetDims, latent: int = 8) -> None:
    """One forward at start-up, so the first request does not pay for lazy initialisation."""
    latent = max(dims.downsample, math.ceil(latent / dims.downsample) * dims.downsample)
    predict(UNetCall(torch.zeros(1, dims.in_channels, latent, latent), torch.full((1,), 999.0),
                     torch.zeros(1, 77, dims.cross_attention_dim), torch.zeros(1, dims.pooled_dim),
                     torch.zeros(1, dims.time_ids), 0, 1))
