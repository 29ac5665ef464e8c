"""PhotoMaker V2's ID encoder (Li et al. 2024, TencentARC/PhotoMaker `model_v2.py`), written from the published
architecture with the same module names, so a real `photomaker-v2.bin` loads with strict key matching.

    vision_model.*            CLIP ViT-L/14 vision tower; its last hidden state (patch tokens) feeds the resampler
    visual_projection         CLIP's projection (in the file, unused by V2's forward)
    visual_projection_2       1024 -> 1280 projection (in the file, unused by V2's forward)
    qformer_perceiver         ArcFace 512-d -> 2 tokens (MLP, LayerNorm), refined by a perceiver resampler over the
                              patch tokens (IP-Adapter FaceID's FacePerceiverResampler), plus a residual
    fuse_module               MLP fusion of each class-token embedding with its identity token (mlp1, mlp2, layer_norm)

Every dimension is a field of `IdEncoderConfig`: the defaults are PhotoMaker V2's, the tiny default set
stores a small instance of the same structure (photomaker/id_encoder_config.json).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from portrait.errors import ModelSetError

CONFIG_FILE = "id_encoder_config.json"
# keys older transformers saved as persistent buffers; deterministic (arange), so dropping them loses nothing
DERIVED_KEYS = ("vision_model.embeddings.position_ids",)


@dataclass(frozen=True)
class IdEncoderConfig:
    """PhotoMaker V2's dimensions (VISION_CONFIG_DICT, cross_attention_dim 2048, 2 tokens, resampler depth 4)."""

    hidden_size: int = 1024  # CLIP ViT-L/14
    intermediate_size: int = 4096
    num_attention_heads: int = 16
    num_hidden_layers: int = 24
    patch_size: int = 14
    image_size: int = 224
    projection_dim: int = 768
    projection_2_dim: int = 1280
    id_embeddings_dim: int = 512  # ArcFace
    cross_attention_dim: int = 2048  # SDXL's concatenated text hidden size (768 + 1280)
    num_tokens: int = 2  # identity tokens per photo
    token_ratio: int = 4  # token_proj hidden = id_embeddings_dim * ratio
    resampler_depth: int = 4
    resampler_dim_head: int = 128
    resampler_ff_mult: int = 4

    @classmethod
    def read(cls, photomaker_dir: Path) -> IdEncoderConfig:
        path = Path(photomaker_dir) / CONFIG_FILE
        if not path.exists():
            return cls()
        values = json.loads(path.read_text())
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ModelSetError(f"{path}: unknown fields {sorted(unknown)}")
        return cls(**values)

    def write(self, photomaker_dir: Path) -> None:
        (Path(photomaker_dir) / CONFIG_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


class MLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, use_residual: bool = True):
        super().__init__()
        if use_residual and in_dim != out_dim:
            raise ValueError("a residual MLP needs in_dim == out_dim")
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.act_fn = nn.GELU()
        self.use_residual = use_residual

    def forward(self, x):
        y = self.fc2(self.act_fn(self.fc1(self.layernorm(x))))
        return x + y if self.use_residual else y


class FuseModule(nn.Module):
    """Fuses each class-token embedding with one identity token and writes the result back in place."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.mlp1 = MLP(embed_dim * 2, embed_dim, embed_dim, use_residual=False)
        self.mlp2 = MLP(embed_dim, embed_dim, embed_dim, use_residual=True)
        self.layer_norm = nn.LayerNorm(embed_dim)

    def fuse(self, token_embeds: torch.Tensor, id_embeds: torch.Tensor) -> torch.Tensor:
        x = self.mlp1(torch.cat([token_embeds, id_embeds], dim=-1)) + token_embeds
        return self.layer_norm(self.mlp2(x))

    def forward(self, prompt_embeds: torch.Tensor, id_tokens: torch.Tensor, class_tokens_mask: torch.Tensor):
        """prompt_embeds [1, L, D]; id_tokens [K, D]; class_tokens_mask [1, L] bool with K True -> [1, L, D]."""
        flat = prompt_embeds.reshape(-1, prompt_embeds.shape[-1]).clone()
        mask = class_tokens_mask.reshape(-1)
        if int(mask.sum()) != id_tokens.shape[0]:
            raise ValueError(f"{int(mask.sum())} class-token positions for {id_tokens.shape[0]} identity tokens")
        flat[mask] = self.fuse(flat[mask], id_tokens.to(flat.dtype))
        return flat.reshape(prompt_embeds.shape)


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: int):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class PerceiverAttention(nn.Module):
    """Latents attend to [features, latents] (Flamingo's perceiver resampler)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.dim_head, self.heads = dim_head, heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)  # [b, heads, n, dim_head]

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features, latents = self.norm1(features), self.norm2(latents)
        b, n, _ = latents.shape
        q = self.split_heads(self.to_q(latents))
        k, v = (self.split_heads(t) for t in self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1))
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))  # split between q and k, as the reference (fp16 range)
        weight = torch.softmax(((q * scale) @ (k * scale).transpose(-2, -1)).float(), dim=-1).to(q.dtype)
        return self.to_out((weight @ v).transpose(1, 2).reshape(b, n, -1))


class FacePerceiverResampler(nn.Module):
    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, embedding_dim: int, output_dim: int, ff_mult: int):
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), FeedForward(dim, ff_mult)]) for _ in range(depth))

    def forward(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        features = self.proj_in(features)
        for attention, feed_forward in self.layers:
            latents = attention(features, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))


class QFormerPerceiver(nn.Module):
    """ArcFace embedding -> `num_tokens` tokens, refined against the CLIP patch tokens (residual)."""

    def __init__(self, c: IdEncoderConfig):
        super().__init__()
        self.num_tokens, self.dim = c.num_tokens, c.cross_attention_dim
        hidden = c.id_embeddings_dim * c.token_ratio
        self.token_proj = nn.Sequential(nn.Linear(c.id_embeddings_dim, hidden), nn.GELU(),
                                        nn.Linear(hidden, c.cross_attention_dim * c.num_tokens))
        self.token_norm = nn.LayerNorm(c.cross_attention_dim)
        self.perceiver_resampler = FacePerceiverResampler(
            dim=c.cross_attention_dim, depth=c.resampler_depth, dim_head=c.resampler_dim_head,
            heads=c.cross_attention_dim // c.resampler_dim_head, embedding_dim=c.hidden_size,
            output_dim=c.cross_attention_dim, ff_mult=c.resampler_ff_mult)

    def forward(self, id_embeds: torch.Tensor, patch_tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_norm(self.token_proj(id_embeds).reshape(-1, self.num_tokens, self.dim))
        return x + self.perceiver_resampler(x, patch_tokens)


class PhotoMakerIdEncoder(nn.Module):
    def __init__(self, config: IdEncoderConfig | None = None):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        c = self.config = config or IdEncoderConfig()
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_attention_heads=c.num_attention_heads,
            num_hidden_layers=c.num_hidden_layers, patch_size=c.patch_size, image_size=c.image_size,
            projection_dim=c.projection_dim))
        self.vision_model = clip.vision_model
        self.visual_projection = clip.visual_projection
        self.visual_projection_2 = nn.Linear(c.hidden_size, c.projection_2_dim, bias=False)
        self.fuse_module = FuseModule(c.cross_attention_dim)
        self.qformer_perceiver = QFormerPerceiver(c)

    def forward(self, id_pixel_values: torch.Tensor, prompt_embeds: torch.Tensor, class_tokens_mask: torch.Tensor,
                id_embeds: torch.Tensor) -> torch.Tensor:
        """id_pixel_values [N, 3, S, S] (CLIP-normalised photos); prompt_embeds [1, 77, D]; class_tokens_mask [1, 77]
        with num_tokens x N positions; id_embeds [N, 512] raw ArcFace -> prompt_embeds with those positions fused."""
        patch_tokens = self.vision_model(id_pixel_values)[0]
        id_tokens = self.qformer_perceiver(id_embeds.to(patch_tokens.dtype), patch_tokens)  # [N, tokens, D]
        return self.fuse_module(prompt_embeds, id_tokens.reshape(-1, id_tokens.shape[-1]), class_tokens_mask)


def read_photomaker_file(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"id_encoder": ..., "lora_weights": ...} from the .bin (nested) or the flat .safetensors form."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(path))
        state = {"id_encoder": {}, "lora_weights": {}}
        for key, value in flat.items():
            part, _, name = key.partition(".")
            if part in state:
                state[part][name] = value
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or set(state) != {"id_encoder", "lora_weights"}:
        found = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ModelSetError(f"{path} is not a PhotoMaker file: expected the keys id_encoder and lora_weights, got {found}")
    return state


def load_id_encoder(state_dict: dict[str, torch.Tensor], config: IdEncoderConfig, source: str = "state dict") -> PhotoMakerIdEncoder:
    """Strict load: every key and shape must match; a mismatch names the keys."""
    state_dict = {k: v for k, v in state_dict.items() if k not in DERIVED_KEYS}
    with torch.device("meta"):
        encoder = PhotoMakerIdEncoder(config)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(f"{k} {list(state_dict[k].shape)} (expected {list(expected[k].shape)})"
                   for k in set(expected) & set(state_dict) if state_dict[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
                 if keys]
        raise ModelSetError(f"{source} does not match PhotoMaker V2's ID encoder: " + "; ".join(parts))
    encoder = encoder.to_empty(device="cpu")  # no random init of ~500M parameters that are overwritten next
    encoder.load_state_dict(state_dict, strict=True)
    # the one buffer not in the file (non-persistent): CLIP's position ids, an arange
    ids = encoder.vision_model.embeddings.position_ids
    ids.copy_(torch.arange(ids.shape[-1]).expand_as(ids))
    return encoder.eval()


def fuse_photomaker_lora(unet, lora_weights: dict[str, torch.Tensor]) -> None:
    """Fuse PhotoMaker's LoRA into the UNet with diffusers' loader (any format it reads), then drop the adapter,
    as PhotoMaker's demo does (load_lora_weights, fuse_lora): the served UNet is a plain UNet."""
    from diffusers import StableDiffusionXLPipeline

    state, alphas = StableDiffusionXLPipeline.lora_state_dict(dict(lora_weights))
    StableDiffusionXLPipeline.load_lora_into_unet(state, alphas, unet=unet, adapter_name="photomaker")
    unet.fuse_lora(lora_scale=1.0, adapter_names=["photomaker"])
    unet.unload_lora()


def clip_pixels(images: list[np.ndarray], image_size: int) -> torch.Tensor:
    """RGB uint8 photos -> CLIP pixel values [N, 3, S, S] with transformers' CLIPImageProcessor (PhotoMaker's
    id_image_processor: shortest side to S, centre crop, OpenAI CLIP mean/std)."""
    try:  # the PIL processor is what CLIPImageProcessor was when PhotoMaker shipped (no torchvision needed)
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor

    processor = Processor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    return processor(images=list(images), return_tensors="pt").pixel_values
