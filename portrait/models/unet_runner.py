"""The UNet behind the step scheduler: its dimensions, input checks, and the torch / TensorRT predictors.

A predictor is `predict(call: UNetCall) -> noise [R, C, h, w]` (float32, CPU), the only thing the
scheduler knows about the UNet. Torch runs on CPU (fp32) or CUDA (fp16, channels-last, SDPA
attention); a TensorRT engine (portrait/models/export.py `build_unet_engine`) runs in the same process on
GPU: the pip-only Triton has no `tensorrt_plan` backend, and one process per device keeps one copy
of the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from portrait.diffusion.loop import UNetCall
from portrait.errors import InvalidInput, ModelSetError


@dataclass(frozen=True)
class LatentRange:
    """Latent sizes one TensorRT optimization profile runs: each side in min..max and a multiple of `multiple`."""

    min_side: int
    opt_side: int
    max_side: int
    max_rows: int
    multiple: int

    def covers(self, height: int, width: int) -> bool:
        return all(self.min_side <= n <= self.max_side and n % self.multiple == 0 for n in (height, width))

    def __str__(self) -> str:
        return f"{self.min_side}..{self.max_side}"


@dataclass(frozen=True)
class UNetDims:
    """What a request must match: read from unet/config.json, no weights loaded; a predictor adds its size limits."""

    in_channels: int
    cross_attention_dim: int
    pooled_dim: int  # text_embeds width: projection input minus SDXL's 6 time ids
    time_ids: int
    downsample: int  # the UNet halves the latent this many times over (other sizes are padded inside)
    # the latent sizes the predictor runs: () = any (torch pads odd sizes itself); a TensorRT engine: one per profile
    latent_ranges: tuple[LatentRange, ...] = ()

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


def latent_size_problem(dims: UNetDims, height: int, width: int) -> tuple[str, str] | None:
    """Which side ("height" or "width") of an h x w latent this predictor cannot run and why; None if it can.

    A TensorRT engine runs the latent sizes of its optimization profiles (both sides within one profile's range) that
    are multiples of the UNet's downsampling factor: its ONNX graph was traced with diffusers' upsample-size branch
    fixed (export.py). The torch predictor runs any size."""
    ranges = dims.latent_ranges
    if not ranges or any(r.covers(height, width) for r in ranges):
        return None
    sizes = ", ".join(map(str, ranges))
    multiple = ranges[0].multiple
    for side, n in (("height", height), ("width", width)):
        if n % multiple:
            return side, f"latent {side} {n} is not a multiple of {multiple}, which the TensorRT engine needs"
        if not any(r.min_side <= n <= r.max_side for r in ranges):
            return side, f"latent {side} {n} is outside the TensorRT engine's profiles (latent sides {sizes})"
    return "width", (f"no profile of the TensorRT engine takes latent height {height} with width {width} "
                     f"(both sides must lie in one of {sizes})")


def check_latent_size(dims: UNetDims, height: int, width: int, scale: int = 1, fields: tuple[str, str] | None = None) -> None:
    """Refuse sizes the predictor cannot run, naming the request field (`fields` = (height field, width field) of a
    request in pixels, `scale` pixels per latent; by default the latent sides themselves)."""
    problem = latent_size_problem(dims, height, width)
    if problem is None:
        return
    side, message = problem
    field = dict(zip(("height", "width"), fields))[side] if fields else side
    if scale != 1:
        ok = ", ".join(f"{r.min_side * scale}..{r.max_side * scale} px in steps of {r.multiple * scale}"
                       for r in dims.latent_ranges)
        message = f"{height * scale if side == 'height' else width * scale} px cannot run here: {message}; sizes this " \
                  f"server runs: {ok}"
    raise InvalidInput(field, message)


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
    problem = latent_size_problem(dims, *sample.shape[2:])
    if problem is not None:
        raise InvalidInput("sample", problem[1])
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
    """A serialized TensorRT engine (fp32 I/O, fp16 inside) run in-process; one execution context per profile.

    Contexts allocate their activation memory when their profile is first used (ON_PROFILE_CHANGE), not each for the
    largest profile (STATIC). `dims.latent_ranges` says which latent sizes the engine runs (`check_latent_size`);
    requests with more rows than a profile takes run in chunks. `trt`: the tensorrt module (a stand-in in tests)."""

    def __init__(self, engine_file: Path, dims: UNetDims, device: str = "cuda", trt=None):
        if trt is None:
            import tensorrt as trt  # the GPU image only

        if not Path(engine_file).exists():
            raise ModelSetError(f"no TensorRT engine at {engine_file}: build one with "
                                "`scripts/export_unet_onnx.py --engine <file>` on the GPU machine (docs/gpu.md)")
        self.trt, self.device = trt, torch.device(device)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_file).read_bytes())
        if self.engine is None:
            raise ModelSetError(f"{engine_file} is not a TensorRT engine for TensorRT {trt.__version__} on this GPU "
                                "(an engine loads only under the TensorRT version that built it; docs/gpu.md)")
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        handle = self.stream.cuda_stream if self.stream is not None else 0
        strategy = trt.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE
        self.contexts, ranges = [], []
        for p in range(self.engine.num_optimization_profiles):
            context = self.engine.create_execution_context(strategy)
            if context is None:
                raise ModelSetError(f"TensorRT could not create an execution context for profile {p} of {engine_file}")
            if not context.set_optimization_profile_async(p, handle):
                raise ModelSetError(f"TensorRT refused optimization profile {p} of {engine_file}")
            lo, opt, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape("sample", p))
            self.contexts.append((lo, hi, context))
            ranges.append(LatentRange(max(lo[2], lo[3]), opt[2], min(hi[2], hi[3]), hi[0], dims.downsample))
        self.dims = dataclasses.replace(dims, latent_ranges=tuple(ranges))
        self.synchronize()

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    def context_for(self, shape: tuple[int, ...]):
        for lo, hi, context in self.contexts:
            if all(a <= s <= b for a, s, b in zip(lo[1:], shape[1:], hi[1:])) and lo[0] <= shape[0]:
                return context, hi[0]
        raise InvalidInput("sample", f"shape {list(shape)} is outside every profile of the TensorRT engine "
                                     f"({[(list(lo), list(hi)) for lo, hi, _ in self.contexts]})")

    @torch.no_grad()
    def __call__(self, call: UNetCall) -> torch.Tensor:
        context, max_rows = self.context_for(tuple(call.sample.shape))
        rows = call.sample.shape[0]
        if rows <= max_rows:
            return self.run(context, call)
        parts = [UNetCall(call.sample[s:s + max_rows], call.timestep[s:s + max_rows],
                          call.encoder_hidden_states[s:s + max_rows], call.text_embeds[s:s + max_rows],
                          call.time_ids[s:s + max_rows], call.step, call.num_steps) for s in range(0, rows, max_rows)]
        return torch.cat([self.run(context, part) for part in parts])

    def run(self, context, call: UNetCall) -> torch.Tensor:
        from portrait.models.export import INPUT_NAMES, OUTPUT_NAMES

        inputs = dict(zip(INPUT_NAMES, (call.sample, call.timestep.reshape(-1, 1), call.encoder_hidden_states,
                                        call.text_embeds, call.time_ids)))
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            keep = {k: v.to(self.device, torch.float32, non_blocking=True).contiguous() for k, v in inputs.items()}
            for name, tensor in keep.items():  # both return False instead of raising: a wrong shape or name
                if not context.set_input_shape(name, tuple(tensor.shape)):
                    raise RuntimeError(f"TensorRT refused input shape {list(tensor.shape)} for {name}")
                if not context.set_tensor_address(name, tensor.data_ptr()):
                    raise RuntimeError(f"TensorRT refused the address of input {name}")
            out = torch.empty(tuple(context.get_tensor_shape(OUTPUT_NAMES[0])), dtype=torch.float32, device=self.device)
            if not context.set_tensor_address(OUTPUT_NAMES[0], out.data_ptr()):
                raise RuntimeError(f"TensorRT refused the address of output {OUTPUT_NAMES[0]}")
            if not context.execute_async_v3(self.stream.cuda_stream if self.stream is not None else 0):
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
        # the GPU overlay points PORTRAIT_UNET_ENGINE at its GPU family's engine (/models/engines/sm<cc>/unet.plan)
        engine = settings.unet_engine or settings.cache_dir / "unet.plan"
        return TensorRTPredictor(engine, UNetDims.read(settings.sdxl_dir), settings.device)
    raise ModelSetError(f"PORTRAIT_UNET_BACKEND must be torch or tensorrt, got {backend!r}")


def warm_up_shapes(dims: UNetDims, latent: int = 8) -> list[tuple[int, int]]:
    """(rows, latent side) of the start-up forwards: for a TensorRT engine one row at each profile's optimum and its
    largest shape (every context allocates, and every profile is shown to run before the server is ready; the
    predictor takes the first profile that covers a shape, so sides the profiles share run in the first);
    for torch one row at `latent`."""
    if dims.latent_ranges:
        return [shape for r in dims.latent_ranges
                for shape in ((1, r.opt_side // r.multiple * r.multiple), (r.max_rows, r.max_side // r.multiple * r.multiple))]
    return [(1, max(dims.downsample, math.ceil(latent / dims.downsample) * dims.downsample))]


def warm_up(predict, dims: UNetDims, latent: int = 8) -> None:
    """Forwards at start-up (`warm_up_shapes`), so the first request does not pay for lazy initialisation and an
    engine that cannot run its own profiles fails here, not on a request."""
    dims = getattr(predict, "dims", dims)  # the predictor's own (a TensorRT engine's profiles)
    for rows, side in warm_up_shapes(dims, latent):
        predict(UNetCall(torch.zeros(rows, dims.in_channels, side, side), torch.full((rows,), 999.0),
                         torch.zeros(rows, 77, dims.cross_attention_dim), torch.zeros(rows, dims.pooled_dim),
                         torch.zeros(rows, dims.time_ids), 0, 1))
