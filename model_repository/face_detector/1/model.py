# the Python-backend stub is an isolated interpreter: `portrait serve` passes the project's import paths
__import__("sys").path[:0] = filter(None, __import__("os").environ.get("PORTRAIT_PYTHONPATH", "").split(":"))

import numpy as np

from portrait.models.faces import make_face_detector
from portrait.params import MAX_FACES_LIMIT, check_image_array, check_int_range
from portrait.serving import triton_io
from portrait.settings import get_settings


class TritonPythonModel:
    def initialize(self, args):
        triton_io.setup(args)
        self.detector = make_face_detector(get_settings().models_dir, get_settings().face_detector)

    def execute(self, requests):
        return triton_io.respond_each(requests, self.detect)

    def detect(self, request):
        max_faces = triton_io.get_scalar(request, "max_faces")
        max_faces = MAX_FACES_LIMIT if max_faces is None else max_faces
        check_int_range("max_faces", max_faces, 1, MAX_FACES_LIMIT)
        image = triton_io.get_array(request, "image")
        check_image_array("image", image)
        faces = self.detector(image, max_faces)
        landmarks = faces.landmarks if faces.landmarks is not None else np.zeros((len(faces.boxes), 0, 2), np.float32)
        return triton_io.pb_utils.InferenceResponse([
            triton_io.tensor("boxes", faces.boxes), triton_io.tensor("scores", faces.scores),
            triton_io.tensor("keypoints", faces.keypoints), triton_io.tensor("landmarks", landmarks)])
