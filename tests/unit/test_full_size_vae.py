"""Each VAE model process holds only its own half of the VAE (the full-size budget counts it once per server)."""

import sys
import types

import numpy as np
import pytest
import torch

from portrait.models.sdxl import decode_latents, encode_images, load_vae


@pytest.mark.parametrize("encode", [True, False], ids=["vae_encoder", "vae_decoder"])
def test_vae_process_holds_one_half_and_matches_the_whole_vae(sdxl_dir, encode, monkeypatch):
    # the adapter imports the stub's module; only initialize and run are exercised here
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    monkeypatch.delitem(sys.modules, "portrait.serving.triton_io", raising=False)
    monkeypatch.delitem(sys.modules, "portrait.serving.vae_adapter", raising=False)
    from portrait.serving.vae_adapter import VAEModel

    model = VAEModel(encode=encode)
    model.initialize({"model_name": "vae_encoder" if encode else "vae_decoder"})
    whole = load_vae(sdxl_dir)
    kept = ("encoder", "quant_conv") if encode else ("decoder", "post_quant_conv")
    assert sum(p.numel() for p in model.vae.parameters()) == sum(
        p.numel() for name in kept for p in getattr(whole, name).parameters())
    rng = np.random.default_rng(0)
    if encode:
        images = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
        assert torch.equal(torch.from_numpy(model.run(images)), encode_images(whole, images))
    else:
        latents = rng.standard_normal((1, whole.config.latent_channels, 8, 8)).astype(np.float32)
        assert np.array_equal(model.run(latents), decode_latents(whole, torch.from_numpy(latents)))
