"""Loading an SDXL checkpoint in diffusers layout: the tiny default set and real weights take the same path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from portrait.diffusion.conditioning import TextEncoding, TriggerEncoding, encode_prompts, encode_with_trigger, trigger_tokenizer
from portrait.diffusion.loop import UNetCall
from portrait.errors import ModelSetError
from portrait.models.checkpoint import check_sdxl_dir, torch_dtype_name


def torch_dtype(device: str) -> torch.dtype:
    return getattr(torch, torch_dtype_name(device))


UNET_STORAGE_DTYPES = ("float16", "bfloat16")


def upcast_uncast_layers(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The layers diffusers' layerwise casting leaves alone (it casts convolutions, linear and embedding layers only:
    the norms), stored in `dtype`: they are a few MB, and a GroupNorm refuses fp16 weights on an fp32 input."""
    from diffusers.hooks import HookRegistry

    for module in model.modules():
        owns = any(True for _ in module.parameters(recurse=False))
        registry = getattr(module, "_diffusers_hook", None)
        if owns and (not isinstance(registry, HookRegistry) or registry.get_hook("layerwise_casting") is None):
            module.to(dtype)
    return model


def return_freed_memory(threshold: int = 1 << 20) -> None:
    """glibc: serve allocations >= `threshold` by mmap and give freed heap back above it (mallopt M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD). With layerwise casting every forward allocates and frees an fp32 copy of each layer's weights;
    glibc's dynamic mmap threshold (it rises to 32 MiB) then keeps them in the heap, and at full size the process
    grew about 1 GiB per forward (5.7 GiB steady with this, measured 2026-12-03; docs/memory.md). No-op elsewhere."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, threshold)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def load_unet(sdxl_dir: Path, device: str = "cpu", photomaker_file: Path | None = None, storage: str | None = None):
    """The SDXL UNet; with a PhotoMaker file its LoRA is fused in (the same UNet then serves both stages).
    `storage` (PORTRAIT_UNET_STORAGE): weights kept in that dtype and upcast layer by layer to the device's compute
    dtype (diffusers' layerwise casting): on CPU half the memory of fp32 (the load never holds the fp32 copy),
    the LoRA then fused in that dtype."""
    from diffusers import UNet2DConditionModel

    if storage is not None and storage not in UNET_STORAGE_DTYPES:
        raise ModelSetError(f"PORTRAIT_UNET_STORAGE must be one of {', '.join(UNET_STORAGE_DTYPES)}, got {storage!r}")
    load_dtype = torch.float32 if storage is None else getattr(torch, storage)
    unet = UNet2DConditionModel.from_pretrained(check_sdxl_dir(sdxl_dir), subfolder="unet", torch_dtype=load_dtype)
    if photomaker_file is not None:
        from portrait.models.identity import fuse_photomaker_lora, read_photomaker_file

        fuse_photomaker_lora(unet, read_photomaker_file(photomaker_file)["lora_weights"])  # fused in load_dtype
    if storage is None:
        # device and dtype in one pass, tensor by tensor: the whole fp32 UNet never sits on the GPU (`.to(device)`
        # then `.to(float16)` peaked at 9.65 GiB for SDXL on an H200 and left 9.94 GiB reserved; one pass: 4.88 / 5.03)
        dtype = torch_dtype(device)
        return (unet.to(device) if dtype == unet.dtype else unet.to(device=device, dtype=dtype)).eval()
    unet = unet.to(device)
    if device == "cpu":
        return_freed_memory()
    # every layer, norms included: they were loaded in `storage` too (diffusers' default skips them, fp16 then)
    unet.enable_layerwise_casting(storage_dtype=load_dtype, compute_dtype=torch_dtype(device), skip_modules_pattern=())
    return upcast_uncast_layers(unet, torch_dtype(device)).eval()


def load_vae(sdxl_dir: Path, device: str = "cpu"):
    from diffusers import AutoencoderKL

    # fp32 even on GPU: SDXL's VAE overflows in fp16 (diffusers' force_upcast)
    return AutoencoderKL.from_pretrained(check_sdxl_dir(sdxl_dir), subfolder="vae").to(device).eval()


class TextEncoders:
    """Both tokenizers and CLIP text encoders of an SDXL checkpoint."""

    def __init__(self, sdxl_dir: Path, device: str = "cpu"):
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        d = check_sdxl_dir(sdxl_dir)
        dtype = torch_dtype(device)
        self.tokenizers = [CLIPTokenizer.from_pretrained(d / "tokenizer"), CLIPTokenizer.from_pretrained(d / "tokenizer_2")]
        self.encoders = [
            CLIPTextModel.from_pretrained(d / "text_encoder", torch_dtype=dtype).to(device).eval(),
            CLIPTextModelWithProjection.from_pretrained(d / "text_encoder_2", torch_dtype=dtype).to(device).eval(),
        ]

    @property
    def max_tokens(self) -> int:
        return self.tokenizers[0].model_max_length

    def __call__(self, prompts: list[str]) -> TextEncoding:
        return encode_prompts(self.tokenizers, self.encoders, prompts)

    def with_trigger(self, prompt: str, num_id_images: int, num_tokens: int = 2, trigger: str = "img") -> TriggerEncoding:
        """PhotoMaker's class-token expansion (see conditioning.encode_with_trigger); the plain tokenizers are kept
        for every other prompt, so "img" stays an ordinary word there."""
        if getattr(self, "_trigger", None) != trigger:
            self._trigger, self._trigger_tokenizers = trigger, [trigger_tokenizer(t, trigger) for t in self.tokenizers]
        return encode_with_trigger(self._trigger_tokenizers, self.encoders, prompt, num_id_images, num_tokens, trigger)


@torch.no_grad()
def predict_noise(unet, call: UNetCall) -> torch.Tensor:
    """One UNet evaluation with SDXL's added text-time conditioning; float32 out."""
    dtype, device = unet.dtype, unet.device
    out = unet(
        call.sample.to(device, dtype),
        call.timestep.to(device),
        encoder_hidden_states=call.encoder_hidden_states.to(device, dtype),
        added_cond_kwargs={"text_embeds": call.text_embeds.to(device, dtype), "time_ids": call.time_ids.to(device, dtype)},
        return_dict=False,
    )[0]
    return out.float().cpu()


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> np.ndarray:
    """Latents [B, C, h, w] (scaled) -> uint8 images [B, H, W, 3], rounded as diffusers' numpy_to_pil."""
    latents = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor
    image = vae.decode(latents, return_dict=False)[0]  # [B, 3, H, W] in [-1, 1]
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    return (image * 255).round().astype(np.uint8)


@torch.no_grad()
def encode_images(vae, images: np.ndarray) -> torch.Tensor:
    """uint8 images [B, H, W, 3] -> scaled latents [B, C, h, w] (the posterior mean: deterministic)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    posterior = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
    return (posterior.mean * vae.config.scaling_factor).float().cpu()
