import os, sys  # noqa: E401  (the stub ignores PYTHONPATH; `portrait serve` passes the paths here)
sys.path[:0] = [p for p in os.environ.get("PORTRAIT_PYTHONPATH", "").split(os.pathsep) if p]

import secrets  # noqa: E402

import numpy as np  # noqa: E402

from portrait import metrics, triton_io as io  # noqa: E402
from portrait.errors import InvalidInput  # noqa: E402
from portrait.checkpoint import read_sdxl_info  # noqa: E402
from portrait.orchestrate import detail_faces, prepare_identity  # noqa: E402
from portrait.params import DetailParams, decode_image  # noqa: E402
from portrait.settings import get_settings  # noqa: E402

FIELDS = ("prompt", "negative_prompt", "steps", "guidance_scale", "guidance_cutoff", "seed", "strength", "max_faces",
          "margin", "work_size", "style_strength")


class TritonPythonModel:
    def initialize(self, args):
        io.setup(args)
        self.info = read_sdxl_info(get_settings().sdxl_dir)
        self.backend = io.BlsBackend()

    def execute(self, requests):
        return io.respond_each(requests, self.detail)

    def detail(self, request):
        data = io.get_array(request, "image")
        if data is None:
            raise InvalidInput("image", "is required (an encoded PNG or JPEG)")
        if data.size != 1:
            raise InvalidInput("image", f"must hold exactly one encoded image, got {data.size}")
        image = decode_image(bytes(data.reshape(-1)[0]))
        values = {k: io.get_scalar(request, k) for k in FIELDS}
        if values["seed"] is None:
            values["seed"] = secrets.randbelow(2**31)
        params = DetailParams.from_mapping(values, {"work_size": self.info.default_size})
        photos = io.get_array(request, "id_images")
        if photos is not None:
            metrics.identity_request(io.model_name())
        identity = None if photos is None else prepare_identity(self.backend.traced(request.trace()), [bytes(p) for p in photos.reshape(-1)],
                                                                  params.prompt)
        result = detail_faces(self.backend.traced(request.trace()), image, params, self.info.force_zeros_for_empty_prompt, identity=identity)
        metrics.faces_detailed(io.model_name(), len(result.boxes))
        return io.pb_utils.InferenceResponse([
            io.tensor("image", result.image), io.tensor("mask", result.mask), io.tensor("boxes", result.boxes),
            io.tensor("faces_found", np.array([len(result.boxes)], np.int32))])
