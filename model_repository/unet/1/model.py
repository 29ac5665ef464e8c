import os, sys  # noqa: E401  (the stub ignores PYTHONPATH; `portrait serve` passes the paths here)
sys.path[:0] = [p for p in os.environ.get("PORTRAIT_PYTHONPATH", "").split(os.pathsep) if p]

import torch  # noqa: E402

from portrait import triton_io as io  # noqa: E402
from portrait.denoise import UNetCall  # noqa: E402
from portrait.sdxl import load_unet, predict_noise  # noqa: E402
from portrait.torch_models import torch_setup  # noqa: E402

INPUTS = ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids")


class TritonPythonModel:
    def initialize(self, args):
        settings = torch_setup()
        self.unet = load_unet(settings.sdxl_dir, settings.device, settings.photomaker_file)  # PhotoMaker LoRA fused
        cfg = self.unet.config
        self.predict(torch.zeros(1, cfg.in_channels, 8, 8), torch.full((1,), 999.0),
                     torch.zeros(1, 77, cfg.cross_attention_dim),
                     torch.zeros(1, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim),
                     torch.zeros(1, 6))  # warm-up forward

    def predict(self, sample, timestep, hidden, text_embeds, time_ids):
        return predict_noise(self.unet, UNetCall(sample, timestep, hidden, text_embeds, time_ids, 0, 1))

    def execute(self, requests):
        arrays = [[torch.from_numpy(io.get_array(r, name)) for name in INPUTS] for r in requests]
        # one forward per group of equal latent size (the batcher merges requests of any shape here)
        groups: dict[tuple, list[int]] = {}
        for i, parts in enumerate(arrays):
            groups.setdefault((tuple(parts[0].shape[1:]), tuple(parts[2].shape[1:])), []).append(i)
        noise = [None] * len(requests)
        for members in groups.values():
            batch = [torch.cat([arrays[i][k] for i in members]) for k in range(len(INPUTS))]
            out = self.predict(batch[0], batch[1].reshape(-1), *batch[2:]).numpy()
            start = 0
            for i in members:
                n = arrays[i][0].shape[0]
                noise[i], start = out[start:start + n], start + n
        return [io.pb_utils.InferenceResponse([io.tensor("noise_pred", n)]) for n in noise]
