import os, sys  # noqa: E401  (the stub ignores PYTHONPATH; `portrait serve` passes the paths here)
sys.path[:0] = [p for p in os.environ.get("PORTRAIT_PYTHONPATH", "").split(os.pathsep) if p]

from portrait.vae_model import VAEModel  # noqa: E402


class TritonPythonModel(VAEModel):
    def __init__(self):
        super().__init__(encode=True)
