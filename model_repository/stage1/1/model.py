import os, sys  # noqa: E401  (the stub ignores PYTHONPATH; `portrait serve` passes the paths here)
sys.path[:0] = [p for p in os.environ.get("PORTRAIT_PYTHONPATH", "").split(os.pathsep) if p]

import secrets  # noqa: E402

import numpy as np  # noqa: E402

from portrait import triton_io as io  # noqa: E402
from portrait.checkpoint import read_sdxl_info  # noqa: E402
from portrait.orchestrate import generate_base  # noqa: E402
from portrait.params import Stage1Params  # noqa: E402
from portrait.settings import get_settings  # noqa: E402

FIELDS = ("prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "guidance_cutoff", "seed", "batch_size")


class TritonPythonModel:
    def initialize(self, args):
        io.setup(args)
        self.info = read_sdxl_info(get_settings().sdxl_dir)
        self.defaults = dict(width=self.info.default_size, height=self.info.default_size)
        self.backend = io.BlsBackend()

    def execute(self, requests):
        return io.respond_each(requests, self.generate)

    def generate(self, request):
        values = {k: io.get_scalar(request, k) for k in FIELDS}
        if values["seed"] is None:
            values["seed"] = secrets.randbelow(2**31)  # reported back in `seeds`
        params = Stage1Params.from_mapping(values, self.defaults)
        images, truncated = generate_base(self.backend.traced(request.trace()), params, self.info.force_zeros_for_empty_prompt)
        return io.pb_utils.InferenceResponse([
            io.tensor("images", images),
            io.tensor("seeds", np.array(params.seeds, np.int64)),
            io.tensor("truncated_tokens", np.array([truncated], np.int32)),
        ])
