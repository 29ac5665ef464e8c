# the Python-backend stub is an isolated interpreter: `portrait serve` passes the project's import paths
__import__("sys").path[:0] = filter(None, __import__("os").environ.get("PORTRAIT_PYTHONPATH", "").split(":"))

from portrait.serving.vae_adapter import VAEModel


class TritonPythonModel(VAEModel):
    def __init__(self):
        super().__init__(encode=True)
