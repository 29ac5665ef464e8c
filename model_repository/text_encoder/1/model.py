import os, sys  # noqa: E401  (the stub ignores PYTHONPATH; `portrait serve` passes the paths here)
sys.path[:0] = [p for p in os.environ.get("PORTRAIT_PYTHONPATH", "").split(os.pathsep) if p]

import numpy as np  # noqa: E402

from portrait import triton_io as io  # noqa: E402
from portrait.sdxl import TextEncoders  # noqa: E402
from portrait.torch_models import torch_setup  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        settings = torch_setup()
        self.text = TextEncoders(settings.sdxl_dir, settings.device)
        self.text(["warm-up"])  # a real forward: a broken checkpoint fails the load, not the first request

    def execute(self, requests):
        # one encoder batch for everything the dynamic batcher gathered; prompts are already validated by callers
        prompts = [p.decode("utf-8", "replace") for r in requests for p in io.get_array(r, "prompt").reshape(-1)]
        enc = self.text(prompts)
        responses, start = [], 0
        for r in requests:
            n = io.get_array(r, "prompt").shape[0]
            rows = slice(start, start + n)
            start += n
            responses.append(io.pb_utils.InferenceResponse([
                io.tensor("prompt_embeds", enc.embeds[rows].numpy()),
                io.tensor("pooled_prompt_embeds", enc.pooled[rows].numpy()),
                io.tensor("token_count", enc.token_counts[rows].numpy().astype(np.int32).reshape(n, 1)),
            ]))
        return responses
