# the Python-backend stub is an isolated interpreter: `portrait serve` passes the project's import paths
__import__("sys").path[:0] = filter(None, __import__("os").environ.get("PORTRAIT_PYTHONPATH", "").split(":"))

import secrets

import numpy as np

from portrait.errors import InvalidInput
from portrait.images import decode_image
from portrait.models.checkpoint import read_sdxl_info
from portrait.params import IDENTITY_INPUT_NAMES, DetailParams, FaceIdentities, model_fields
from portrait.serving import metrics, triton_io
from portrait.settings import get_settings
from portrait.stages import detail_faces, prepare_identities

FIELDS = model_fields("face_detailer")  # the request schema: portrait/params.py


class TritonPythonModel:
    def initialize(self, args):
        triton_io.setup(args)
        self.info = read_sdxl_info(get_settings().sdxl_dir)
        self.backend = triton_io.BlsBackend()

    def execute(self, requests):
        return triton_io.respond_each(requests, self.detail)

    def detail(self, request):
        data = triton_io.get_array(request, "image")
        if data is None:
            raise InvalidInput("image", "is required (an encoded PNG or JPEG)")
        if data.size != 1:
            raise InvalidInput("image", f"must hold exactly one encoded image, got {data.size}")
        image = decode_image(bytes(data.reshape(-1)[0]))
        values = {k: triton_io.get_scalar(request, k) for k in FIELDS}
        if values["seed"] is None:
            values["seed"] = secrets.randbelow(2**31)
        params = DetailParams.from_mapping(values, {"work_size": self.info.default_size})
        people = FaceIdentities.from_arrays(*(triton_io.get_array(request, n) for n in IDENTITY_INPUT_NAMES))
        people.check_with(params.max_faces, params.assign, params.prompt)
        if people.count:
            metrics.identity_request(triton_io.model_name())
        backend = self.backend.for_request(request)
        identities = prepare_identities(backend, people, params.prompt)
        result = detail_faces(backend, image, params, self.info.force_zeros_for_empty_prompt, identities=identities,
                              face_prompts=people.face_prompts)
        metrics.faces_detailed(triton_io.model_name(), len(result.boxes))
        metrics.identity_similarity(triton_io.model_name(), result.assigned_similarity())
        return triton_io.pb_utils.InferenceResponse([
            triton_io.tensor("image", result.image), triton_io.tensor("mask", result.mask), triton_io.tensor("boxes", result.boxes),
            triton_io.tensor("faces_found", np.array([len(result.boxes)], np.int32)),
            *(triton_io.tensor(k, v) for k, v in result.identity_outputs().items())])
