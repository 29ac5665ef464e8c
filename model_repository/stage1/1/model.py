# the Python-backend stub is an isolated interpreter: `portrait serve` passes the project's import paths
__import__("sys").path[:0] = filter(None, __import__("os").environ.get("PORTRAIT_PYTHONPATH", "").split(":"))

import secrets

import numpy as np

from portrait.models.checkpoint import read_sdxl_info
from portrait.params import Stage1Params, model_fields
from portrait.serving import triton_io
from portrait.settings import get_settings
from portrait.stages import generate_base

FIELDS = model_fields("stage1")  # the request schema: portrait/params.py


class TritonPythonModel:
    def initialize(self, args):
        triton_io.setup(args)
        self.info = read_sdxl_info(get_settings().sdxl_dir)
        self.defaults = dict(width=self.info.default_size, height=self.info.default_size)  # the checkpoint's, not 1024
        self.backend = triton_io.BlsBackend()

    def execute(self, requests):
        return triton_io.respond_each(requests, self.generate)

    def generate(self, request):
        values = {k: triton_io.get_scalar(request, k) for k in FIELDS}
        if values["seed"] is None:
            values["seed"] = secrets.randbelow(2**31)  # reported back in `seeds`
        params = Stage1Params.from_mapping(values, self.defaults)
        images, truncated = generate_base(self.backend.for_request(request), params, self.info.force_zeros_for_empty_prompt)
        return triton_io.pb_utils.InferenceResponse([
            triton_io.tensor("images", images),
            triton_io.tensor("seeds", np.array(params.seeds, np.int64)),
            triton_io.tensor("truncated_tokens", np.array([truncated], np.int32)),
        ])
