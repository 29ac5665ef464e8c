import os, sys  # noqa: E401  (the stub ignores PYTHONPATH; `portrait serve` passes the paths here)
sys.path[:0] = [p for p in os.environ.get("PORTRAIT_PYTHONPATH", "").split(os.pathsep) if p]

from portrait import triton_io as io  # noqa: E402
from portrait.errors import InvalidInput, ModelSetError  # noqa: E402
from portrait.faces import ARCFACE_FILE, FaceEmbedder  # noqa: E402
from portrait.params import MAX_FACES_LIMIT, check_finite, check_image_array, check_shape  # noqa: E402
from portrait.settings import get_settings  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        io.setup(args)
        path = get_settings().models_dir / "insightface" / ARCFACE_FILE
        # without the recognition model the server still serves everything but identity; requests say why
        self.embedder = FaceEmbedder(path) if path.exists() else None
        self.missing = path

    def execute(self, requests):
        return io.respond_each(requests, self.embed)

    def embed(self, request):
        if self.embedder is None:
            raise ModelSetError(f"identity needs InsightFace's recognition model at {self.missing}")
        image, keypoints = io.get_array(request, "image"), io.get_array(request, "keypoints")
        check_image_array("image", image)
        check_shape("keypoints", keypoints, (None, 5, 2))
        if not 1 <= len(keypoints) <= MAX_FACES_LIMIT:
            raise InvalidInput("keypoints", f"1 to {MAX_FACES_LIMIT} faces per request, got {len(keypoints)}")
        check_finite("keypoints", keypoints)
        h, w = image.shape[:2]
        if (keypoints < 0).any() or (keypoints[..., 0] > w).any() or (keypoints[..., 1] > h).any():
            raise InvalidInput("keypoints", f"must lie inside the {w}x{h} image")
        embeddings, aligned = self.embedder(image, keypoints)
        return io.pb_utils.InferenceResponse([io.tensor("embeddings", embeddings), io.tensor("aligned", aligned)])
