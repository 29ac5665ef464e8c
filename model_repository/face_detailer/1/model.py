import os, sys  # noqa: E401  (the stub ignores PYTHONPATH; `portrait serve` passes the paths here)
sys.path[:0] = [p for p in os.environ.get("PORTRAIT_PYTHONPATH", "").split(os.pathsep) if p]

import secrets  # noqa: E402

import numpy as np  # noqa: E402

from portrait import triton_io as io  # noqa: E402
from portrait.checkpoint import read_sdxl_info  # noqa: E402
from portrait.orchestrate import detail_faces, prepare_identity  # noqa: E402
from portrait.params import DetailParams, decode_image  # noqa: E402
from portrait.settings import get_settings  # noqa: E402

FIELDS = ("prompt", "negative_prompt", "steps", "guidance_scale", "guidance_cutoff", "seed", "strength", "max_faces",
          "margin", "work_size", "style_strength")


class TritonPythonModel:
    def initialize(self, args):
        self.info = read_sdxl_info(get_settings().sdxl_dir)
        self.backend = io.BlsBackend()

    def execute(self, requests):
        return io.respond_each(requests, self.detail)

    def detail(self, request):
        data = io.get_array(request, "image")
        image = decode_image(data.reshape(-1)[0] if data.size == 1 else b"")
        values = {k: io.get_scalar(request, k) for k in FIELDS}
        if values["seed"] is None:
            values["seed"] = secrets.randbelow(2**31)
        params = DetailParams.from_mapping(values, {"work_size": self.info.default_size})
        photos = io.get_array(request, "id_images")
        identity = None if photos is None else prepare_identity(self.backend, [bytes(p) for p in photos.reshape(-1)],
                                                                  params.prompt)
        result = detail_faces(self.backend, image, params, self.info.force_zeros_for_empty_prompt, identity=identity)
        return io.pb_utils.InferenceResponse([
            io.tensor("image", result.image), io.tensor("mask", result.mask), io.tensor("boxes", result.boxes),
            io.tensor("faces_found", np.array([len(result.boxes)], np.int32))])
