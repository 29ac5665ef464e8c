"""Export the UNet to ONNX with the exact input/output contract of the Triton `unet` model.

On GPU the same model name is served by a TensorRT plan built from this ONNX
(scripts/build_unet_trt.sh, infra/gpu/unet/config.pbtxt): `denoise` and every other caller
send the same tensors either way.
"""

from __future__ import annotations

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


def export_unet_onnx(unet, path: Path, opset: int = 17) -> Path:
    """Write an ONNX graph with dynamic rows and latent height/width (fp32 I/O; TensorRT may run fp16 inside)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {0: "rows"}
    torch.onnx.export(
        UNetForExport(unet.float().eval()), example_inputs(unet), str(path), dynamo=False, opset_version=opset,
        input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
        dynamic_axes={"sample": {0: "rows", 2: "height", 3: "width"}, "timestep": rows,
                      "encoder_hidden_states": rows, "text_embeds": rows, "time_ids": rows,
                      "noise_pred": {0: "rows", 2: "height", 3: "width"}},
    )
    return path
