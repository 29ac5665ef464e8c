# the Python-backend stub is an isolated interpreter: `portrait serve` passes the project's import paths
__import__("sys").path[:0] = filter(None, __import__("os").environ.get("PORTRAIT_PYTHONPATH", "").split(":"))

from portrait.errors import InvalidInput, ModelSetError
from portrait.models.faces import ARCFACE_FILE, FaceEmbedder
from portrait.params import MAX_FACES_LIMIT, check_finite, check_image_array, check_shape
from portrait.serving import triton_io
from portrait.settings import get_settings


class TritonPythonModel:
    def initialize(self, args):
        triton_io.setup(args)
        path = get_settings().models_dir / "insightface" / ARCFACE_FILE
        # without the recognition model the server still serves everything but identity; requests say why
        self.embedder = FaceEmbedder(path) if path.exists() else None
        self.missing = path

    def execute(self, requests):
        return triton_io.respond_each(requests, self.embed)

    def embed(self, request):
        if self.embedder is None:
            raise ModelSetError(f"identity needs InsightFace's recognition model at {self.missing}")
        image, keypoints = triton_io.get_array(request, "image"), triton_io.get_array(request, "keypoints")
        check_image_array("image", image)
        check_shape("keypoints", keypoints, (None, 5, 2))
        if not 1 <= len(keypoints) <= MAX_FACES_LIMIT:
            raise InvalidInput("keypoints", f"1 to {MAX_FACES_LIMIT} faces per request, got {len(keypoints)}")
        check_finite("keypoints", keypoints)
        h, w = image.shape[:2]
        if (keypoints < 0).any() or (keypoints[..., 0] > w).any() or (keypoints[..., 1] > h).any():
            raise InvalidInput("keypoints", f"must lie inside the {w}x{h} image")
        embeddings, aligned = self.embedder(image, keypoints)
        return triton_io.pb_utils.InferenceResponse([triton_io.tensor("embeddings", embeddings), triton_io.tensor("aligned", aligned)])
