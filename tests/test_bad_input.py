"""Bad requests get INVALID_ARG naming the field and the limit; the server keeps serving."""

import numpy as np
import pytest

from portrait.errors import InvalidInput
from portrait.params import Stage1Params

GOOD = {
    "prompt": ("BYTES", np.array([b"portrait of a woman"], dtype=np.object_)),
    "width": ("INT32", np.array([128], np.int32)),
    "height": ("INT32", np.array([128], np.int32)),
    "steps": ("INT32", np.array([3], np.int32)),
    "seed": ("INT64", np.array([1], np.int64)),
}
OUT = ["images", "seeds", "truncated_tokens"]


def with_field(name, datatype, values, dtype):
    return {**GOOD, name: (datatype, np.array(values, dtype=dtype))}


CASES = [
    # (request, field named, text the message must contain)
    (with_field("prompt", "BYTES", [b""], np.object_), "prompt", "must not be empty"),
    (with_field("prompt", "BYTES", [b"   "], np.object_), "prompt", "must not be empty"),
    (with_field("prompt", "BYTES", [b"a" * 1001], np.object_), "prompt", "at most 1000 characters"),
    (with_field("prompt", "BYTES", [b"\xff\xfe"], np.object_), "prompt", "UTF-8"),
    (with_field("prompt", "BYTES", [b"a\x00b"], np.object_), "prompt", "control characters"),
    (with_field("negative_prompt", "BYTES", [b"n" * 1001], np.object_), "negative_prompt", "at most 1000"),
    (with_field("width", "INT32", [100], np.int32), "width", "multiple of 8 in [64, 2048]"),
    (with_field("width", "INT32", [56], np.int32), "width", "[64, 2048]"),
    (with_field("height", "INT32", [2056], np.int32), "height", "[64, 2048]"),
    (with_field("height", "INT32", [-8], np.int32), "height", "[64, 2048]"),
    (with_field("steps", "INT32", [0], np.int32), "steps", "[1, 150]"),
    (with_field("steps", "INT32", [151], np.int32), "steps", "[1, 150]"),
    (with_field("guidance_scale", "FP32", [30.5], np.float32), "guidance_scale", "[0, 30]"),
    (with_field("guidance_scale", "FP32", [-1], np.float32), "guidance_scale", "[0, 30]"),
    (with_field("guidance_scale", "FP32", [np.nan], np.float32), "guidance_scale", "finite"),
    (with_field("guidance_cutoff", "FP32", [1.5], np.float32), "guidance_cutoff", "[0, 1]"),
    (with_field("guidance_cutoff", "FP32", [-0.1], np.float32), "guidance_cutoff", "[0, 1]"),
    (with_field("seed", "INT64", [-1], np.int64), "seed", "[0, 9223372036854775807]"),
    (with_field("batch_size", "INT32", [0], np.int32), "batch_size", "[1, 8]"),
    (with_field("batch_size", "INT32", [9], np.int32), "batch_size", "[1, 8]"),
    # checked by Triton itself against config.pbtxt, before the model runs
    (with_field("seed", "FP32", [1.5], np.float32), "seed", "expects 'INT64'"),
    (with_field("width", "FP32", [128.0], np.float32), "width", "expects 'INT32'"),
    (with_field("steps", "INT32", [3, 4], np.int32), "steps", "shape"),
    ({k: v for k, v in GOOD.items() if k != "prompt"}, "prompt", "is required"),
]


def good_request_works(client):
    out = client.infer("stage1", GOOD, OUT)
    assert out["images"].shape == (1, 128, 128, 3)


@pytest.mark.parametrize("request_arrays,field,text", CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_grpc(grpc_client, request_arrays, field, text):
    with pytest.raises(InvalidInput) as caught:
        grpc_client.infer("stage1", request_arrays, OUT)
    assert field in str(caught.value) and text in str(caught.value), str(caught.value)


@pytest.mark.parametrize("case", [0, 6, 12, 17, 19, 20], ids=lambda i: CASES[i][1])
def test_bad_input_http(http_client, case):
    request_arrays, field, text = CASES[case]
    with pytest.raises(InvalidInput) as caught:
        http_client.infer("stage1", request_arrays, OUT)
    assert field in str(caught.value) and text in str(caught.value), str(caught.value)


def test_server_keeps_serving_after_bad_requests(grpc_client, http_client):
    for request_arrays, _, _ in CASES[:5]:
        with pytest.raises(InvalidInput):
            grpc_client.infer("stage1", request_arrays, OUT)
        good_request_works(grpc_client)
    good_request_works(http_client)


def test_denoise_checks_its_own_inputs(grpc_client):
    """The internal models validate too: a row-count mismatch is named, not a crash."""
    embeds = np.zeros((2, 77, 96), np.float32)
    pooled = np.zeros((2, 64), np.float32)
    import tritonclient.grpc as g

    inputs = {"prompt_embeds": ("FP32", embeds), "pooled_prompt_embeds": ("FP32", pooled),
              "negative_prompt_embeds": ("FP32", embeds), "negative_pooled_prompt_embeds": ("FP32", pooled),
              "seeds": ("INT64", np.array([1], np.int64)), "height": ("INT32", np.array([64], np.int32)),
              "width": ("INT32", np.array([64], np.int32)), "steps": ("INT32", np.array([2], np.int32)),
              "guidance_scale": ("FP32", np.array([5], np.float32)), "guidance_cutoff": ("FP32", np.array([0], np.float32))}
    errors = []
    client = g.InferenceServerClient(grpc_client.url)
    client.start_stream(callback=lambda result, error: errors.append(error))
    arrays = []
    for name, (dt, a) in inputs.items():
        t = g.InferInput(name, list(a.shape), dt)
        t.set_data_from_numpy(a)
        arrays.append(t)
    client.async_stream_infer("denoise", arrays)
    client.stop_stream()
    client.close()
    messages = [e.message() for e in errors if e is not None]
    assert any("prompt_embeds: needs one row per seed (1), got 2" in m for m in messages), messages


def test_client_validates_before_sending():
    with pytest.raises(InvalidInput, match="width"):
        Stage1Params(prompt="x", width=100)
