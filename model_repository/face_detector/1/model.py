import os, sys  # noqa: E401  (the stub ignores PYTHONPATH; `portrait serve` passes the paths here)
sys.path[:0] = [p for p in os.environ.get("PORTRAIT_PYTHONPATH", "").split(os.pathsep) if p]

import numpy as np  # noqa: E402

from portrait import triton_io as io  # noqa: E402
from portrait.faces import make_face_detector  # noqa: E402
from portrait.params import MAX_FACES_LIMIT, check_image_array, check_int_range  # noqa: E402
from portrait.settings import get_settings  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        io.setup(args)
        self.detector = make_face_detector(get_settings().models_dir)

    def execute(self, requests):
        return io.respond_each(requests, self.detect)

    def detect(self, request):
        max_faces = io.get_scalar(request, "max_faces")
        max_faces = MAX_FACES_LIMIT if max_faces is None else max_faces
        check_int_range("max_faces", max_faces, 1, MAX_FACES_LIMIT)
        image = io.get_array(request, "image")
        check_image_array("image", image)
        faces = self.detector(image, max_faces)
        landmarks = faces.landmarks if faces.landmarks is not None else np.zeros((len(faces.boxes), 0, 2), np.float32)
        return io.pb_utils.InferenceResponse([
            io.tensor("boxes", faces.boxes), io.tensor("scores", faces.scores),
            io.tensor("keypoints", faces.keypoints), io.tensor("landmarks", landmarks)])
