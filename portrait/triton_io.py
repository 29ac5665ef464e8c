"""Helpers for the Python-backend adapters in model_repository/: decode inputs, encode errors, BLS calls.

Imported only inside the Triton Python-backend stub (it provides triton_python_backend_utils).
Kept free of torch so the light BLS models (stage1) start fast and small.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import numpy as np
import triton_python_backend_utils as pb_utils

from portrait.errors import Cancelled, InvalidInput


def model_parameters(args: dict) -> dict[str, str]:
    """The `parameters { key: ... value: { string_value: ... } }` block of a model's config.pbtxt."""
    params = json.loads(args["model_config"]).get("parameters", {})
    return {k: v["string_value"] for k, v in params.items()}


def get_array(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def get_scalar(request, name: str) -> Any:
    """One value of an optional `dims: [1]` input as a Python scalar (None when absent)."""
    array = get_array(request, name)
    if array is None:
        return None
    if array.size != 1:
        raise InvalidInput(name, f"must hold exactly one value, got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(name, "must be UTF-8 text") from None
    return value.item()


def tensor(name: str, array: np.ndarray) -> "pb_utils.Tensor":
    return pb_utils.Tensor(name, np.ascontiguousarray(array))


def error_response(error: Exception) -> "pb_utils.InferenceResponse":
    """Bad input -> INVALID_ARG naming the field; cancellation -> CANCELLED; anything else -> INTERNAL."""
    return pb_utils.InferenceResponse(error=to_triton_error(error))


def respond_each(requests, handle) -> list:
    """One response per request: a request that fails gets its own error response; the others are unaffected."""
    responses = []
    for request in requests:
        try:
            responses.append(handle(request))
        except Exception as error:
            responses.append(error_response(error))
    return responses


def to_triton_error(error: Exception) -> "pb_utils.TritonError":
    if isinstance(error, pb_utils.TritonError):
        return error
    if isinstance(error, InvalidInput):
        return pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)
    if isinstance(error, Cancelled):
        return pb_utils.TritonError(str(error), pb_utils.TritonError.CANCELLED)
    # never of the "field: limit" form, so a client reading a stream (no status code there) cannot mistake it
    return pb_utils.TritonError(f"internal error ({type(error).__name__}): {error}", pb_utils.TritonError.INTERNAL)


def bls_request(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> "pb_utils.InferenceRequest":
    return pb_utils.InferenceRequest(
        model_name=model,
        inputs=[tensor(k, v) for k, v in inputs.items()],
        requested_output_names=outputs,
    )


def read_response(response, outputs: list[str]) -> dict[str, np.ndarray]:
    """The named outputs of a BLS response; a callee's error is re-raised with its own code and message."""
    if response.has_error():
        raise response.error()
    found = {name: pb_utils.get_output_tensor_by_name(response, name) for name in outputs}
    return {name: t.as_numpy() for name, t in found.items() if t is not None}


def bls(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """A blocking BLS call to a non-decoupled model."""
    return read_response(bls_request(model, inputs, outputs).exec(), outputs)


def bls_stream(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> Iterator[dict[str, np.ndarray]]:
    """A BLS call to a decoupled model: yields each response's outputs, in order."""
    for response in bls_request(model, inputs, outputs).exec(decoupled=True):
        out = read_response(response, outputs)
        if out:  # the last response may carry only the FINAL flag
            yield out


class BlsBackend:
    """portrait.orchestrate.Backend over BLS calls to the models of this server."""

    TEXT = ["prompt_embeds", "pooled_prompt_embeds", "token_count"]

    def __init__(self, job_id: str | None = None):
        self.job_id = job_id  # passed to denoise so a cancelled caller can stop its loop (portrait/cancel.py)

    def encode_text(self, prompt: str) -> dict[str, np.ndarray]:
        return bls("text_encoder", {"prompt": np.array([[prompt.encode("utf-8")]], dtype=object)}, self.TEXT)

    def encode_text_with_trigger(self, prompt: str, num_id_images: int) -> dict[str, np.ndarray]:
        return bls("text_encoder", {"prompt": np.array([[prompt.encode("utf-8")]], dtype=object),
                                    "num_id_images": np.array([[num_id_images]], np.int32)},
                   [*self.TEXT, "class_tokens_mask"])

    def embed_faces(self, image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        return bls("face_embedder", {"image": image, "keypoints": keypoints.astype(np.float32)}, ["embeddings"])["embeddings"]

    def fuse_identity(self, photos: list[bytes], id_embeds: np.ndarray, prompt_embeds: np.ndarray,
                      class_tokens_mask: np.ndarray) -> np.ndarray:
        return bls("id_encoder", {"id_images": np.array(photos, dtype=object), "id_embeds": id_embeds,
                                  "prompt_embeds": prompt_embeds, "class_tokens_mask": class_tokens_mask},
                   ["id_prompt_embeds"])["id_prompt_embeds"]

    def denoise(self, inputs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        if self.job_id is not None:
            inputs = {**inputs, "job_id": np.array([self.job_id.encode()], dtype=object)}
        return bls_stream("denoise", inputs, ["latents", "step", "num_steps"])

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return bls("vae_decoder", {"latents": latents}, ["image"])["image"]

    def encode_image(self, images: np.ndarray) -> np.ndarray:
        return bls("vae_encoder", {"image": images}, ["latents"])["latents"]

    def detect(self, image: np.ndarray, max_faces: int) -> dict[str, np.ndarray]:
        return bls("face_detector", {"image": image, "max_faces": np.array([max_faces], np.int32)},
                   ["boxes", "scores", "keypoints", "landmarks"])
