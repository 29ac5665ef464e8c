import os, sys  # noqa: E401  (the stub ignores PYTHONPATH; `portrait serve` passes the paths here)
sys.path[:0] = [p for p in os.environ.get("PORTRAIT_PYTHONPATH", "").split(os.pathsep) if p]

import secrets  # noqa: E402

import numpy as np  # noqa: E402

from portrait import triton_io as io  # noqa: E402
from portrait.checkpoint import read_sdxl_info  # noqa: E402
from portrait.params import Stage1Params  # noqa: E402
from portrait.settings import get_settings  # noqa: E402

FIELDS = ("prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "guidance_cutoff", "seed", "batch_size")
TEXT_OUT = ["prompt_embeds", "pooled_prompt_embeds", "token_count"]


class TritonPythonModel:
    def initialize(self, args):
        self.info = read_sdxl_info(get_settings().sdxl_dir)
        self.defaults = dict(width=self.info.default_size, height=self.info.default_size)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self.generate(request))
            except Exception as error:
                responses.append(io.error_response(error))
        return responses

    def encode(self, prompt: str) -> dict[str, np.ndarray]:
        return io.bls("text_encoder", {"prompt": np.array([[prompt.encode("utf-8")]], dtype=object)}, TEXT_OUT)

    def generate(self, request):
        values = {k: io.get_scalar(request, k) for k in FIELDS}
        if values["seed"] is None:
            values["seed"] = secrets.randbelow(2**31)  # reported back in `seeds`
        params = Stage1Params.from_mapping(values, self.defaults)
        pos = self.encode(params.prompt)
        if params.negative_prompt or not self.info.force_zeros_for_empty_prompt:
            neg = self.encode(params.negative_prompt)
        else:  # diffusers' force_zeros_for_empty_prompt
            neg = {k: np.zeros_like(v) for k, v in pos.items()}
        n = params.batch_size
        latents = None
        stream = io.bls_stream("denoise", {
            "prompt_embeds": pos["prompt_embeds"].repeat(n, 0),
            "pooled_prompt_embeds": pos["pooled_prompt_embeds"].repeat(n, 0),
            "negative_prompt_embeds": neg["prompt_embeds"].repeat(n, 0),
            "negative_pooled_prompt_embeds": neg["pooled_prompt_embeds"].repeat(n, 0),
            "seeds": np.array(params.seeds, np.int64),
            "height": np.array([params.height], np.int32),
            "width": np.array([params.width], np.int32),
            "steps": np.array([params.steps], np.int32),
            "guidance_scale": np.array([params.guidance_scale], np.float32),
            "guidance_cutoff": np.array([params.guidance_cutoff], np.float32),
        }, ["latents", "step"])
        for out in stream:
            latents = out.get("latents", latents)
        images = io.bls("vae_decoder", {"latents": latents}, ["image"])["image"]
        truncated = max(0, int(pos["token_count"].reshape(-1)[0]) - 77)
        return io.pb_utils.InferenceResponse([
            io.tensor("images", images),
            io.tensor("seeds", np.array(params.seeds, np.int64)),
            io.tensor("truncated_tokens", np.array([truncated], np.int32)),
        ])
