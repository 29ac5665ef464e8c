"""The two VAE Triton models share one adapter: they differ only in direction."""

from __future__ import annotations

import numpy as np
import torch

from portrait.models.sdxl import decode_latents, encode_images, load_vae
from portrait.params import check_image_array, check_latents
from portrait.serving import triton_io
from portrait.serving.torch_setup import torch_setup


class VAEModel:
    """Python-backend model for `vae_encoder` (image -> latents) or `vae_decoder` (latents -> image)."""

    def __init__(self, encode: bool):
        self.in_name, self.out_name = ("image", "latents") if encode else ("latents", "image")
        self.encode = encode

    def initialize(self, args):
        triton_io.setup(args)
        settings = torch_setup()
        self.vae = load_vae(settings.sdxl_dir, settings.device)
        # one direction per process: otherwise each of the two VAE models holds the whole VAE, half of it unused
        if self.encode:
            self.vae.decoder = self.vae.post_quant_conv = None
        else:
            self.vae.encoder = self.vae.quant_conv = None
        f = self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        warm = np.zeros((1, 8 * f, 8 * f, 3), np.uint8) if self.encode else np.zeros((1, self.vae.config.latent_channels, 8, 8), np.float32)
        self.run(warm)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.encode:
            return encode_images(self.vae, batch).numpy()
        return decode_latents(self.vae, torch.from_numpy(batch))

    def execute(self, requests):
        # requests of different sizes each get their own forward; one bad request does not fail the others
        return triton_io.respond_each(requests, lambda r: triton_io.pb_utils.InferenceResponse(
            [triton_io.tensor(self.out_name, self.run(self.checked(triton_io.get_array(r, self.in_name))))]))

    def checked(self, batch: np.ndarray) -> np.ndarray:
        """Against the checkpoint: RGB images with sides a multiple of the VAE's factor, or its latent channels."""
        if self.encode:
            check_image_array(self.in_name, batch, self.factor, batched=True)
        else:
            check_latents(self.in_name, batch, self.vae.config.latent_channels, self.factor)
        return batch
