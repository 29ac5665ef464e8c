"""The HTTP front's checks (portrait/serving/http_front.py), without a server: each request Triton 2.51's JSON parser
aborts on or answers 500 is refused with 400 (413 for sizes) naming the input; good requests pass unchanged."""

import asyncio
import gzip
import json
import struct

import numpy as np
import pytest

from portrait.serving.http_front import FrontApp, Limits, ModelSpec, Refused, check_infer_request, read_body

# the configs as Triton's /v2/models/<m>/config serves them (the fields the front reads)
STAGE1 = ModelSpec.from_config({
    "name": "stage1", "max_batch_size": 0,
    "input": [{"name": "prompt", "data_type": "TYPE_STRING", "dims": ["1"]},
              {"name": "width", "data_type": "TYPE_INT32", "dims": ["1"], "optional": True},
              {"name": "guidance_scale", "data_type": "TYPE_FP32", "dims": ["1"], "optional": True},
              {"name": "seed", "data_type": "TYPE_INT64", "dims": ["1"], "optional": True}],
    "output": [{"name": "images"}, {"name": "seeds"}]})
DETECTOR = ModelSpec.from_config({
    "name": "face_detector", "max_batch_size": 0,
    "input": [{"name": "image", "data_type": "TYPE_UINT8", "dims": [-1, -1, 3]},
              {"name": "max_faces", "data_type": "TYPE_INT32", "dims": [1], "optional": True}],
    "output": [{"name": "boxes"}]})
ENCODER = ModelSpec.from_config({  # dynamic batching: the first dimension is the batch
    "name": "vae_encoder", "max_batch_size": 8,
    "input": [{"name": "image", "data_type": "TYPE_UINT8", "dims": [-1, -1, 3]}], "output": [{"name": "latents"}]})
LIMITS = Limits(max_body=1 << 20, max_json=256 << 10)
PROMPT = {"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["a portrait"]}


def stage1(*inputs, **extra) -> bytes:
    return json.dumps({"inputs": [PROMPT, *inputs], **extra}).encode()


def width(data, shape=(1,), datatype="INT32") -> dict:
    return {"name": "width", "shape": list(shape), "datatype": datatype, "data": data}


def refusal(body: bytes, model=STAGE1, header_length=None, trusted=False) -> Refused:
    with pytest.raises(Refused) as caught:
        check_infer_request(body, header_length, model, LIMITS, trusted)
    return caught.value


def deep(levels: int) -> str:
    return "[" * levels + "64" + "]" * levels


CRASHES = [  # issue 20: each aborted tritonserver (bad_alloc, stack overflow)
    (stage1(width([64], shape=[1099511627776])), STAGE1, "width", "does not match the model's dims [1]"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1048576, 1048576, 3], "datatype": "UINT8", "data": [0]}]}).encode(),
     DETECTOR, "image", "more than 1048576 elements"),
    (stage1().replace(b'"inputs": [', b'"inputs": [{"name": "width", "shape": [1], "datatype": "INT32", "data": '
                      + deep(100_000).encode() + b"}, "), STAGE1, "request", "nests deeper than 16"),
]


@pytest.mark.parametrize("body,model,field,text", CRASHES, ids=["shape-2^40", "image-2^40", "nested-100000"])
def test_crash_inputs_are_refused(body, model, field, text):
    refused = refusal(body, model)
    assert refused.status == 400 and str(refused).startswith(f"{field}: ") and text in str(refused), str(refused)


JSON_CASES = [  # (body, field named, text): 500 or a silent wrap in Triton 2.51, 400 here
    (b"{not json", "request", "not valid JSON"),
    (b'{"inputs": 5}', "inputs", "non-empty list"),
    (b"[]", "request", "JSON object"),
    (b'{"inputs": [5]}', "inputs", "object with a name"),
    (stage1(width([64, 64])), "width", "more elements than its shape's 1"),
    (stage1(width([])), "width", "0 elements, its shape 1"),
    (stage1(width([64.5])), "width", "integers (INT32), got 64.5"),
    (stage1(width(["64"])), "width", "integers (INT32)"),
    (stage1(width([True])), "width", "integers (INT32), got true"),
    (stage1(width([4294967360])), "width", "[-2147483648, 2147483647]"),  # was wrapped to 64
    (stage1(width([64], shape="1")), "width", "list of integers"),
    (stage1(width([64], shape=[-1])), "width", "does not match"),
    (stage1(width([64], shape=[1, 1])), "width", "rank 2"),
    (stage1(width([64], datatype="FP32")), "width", "expects 'INT32'"),
    (stage1({"name": "guidance_scale", "shape": [1], "datatype": "FP32", "data": [1e39]}), "guidance_scale",
     "range of FP32"),
    (stage1({"name": "guidance_scale", "shape": [1], "datatype": "FP32", "data": [10**400]}), "guidance_scale",
     "range of FP32"),
    (stage1().replace(b'"a portrait"', b'"a \\ud800 portrait"'), "prompt", "lone surrogates"),
    (stage1().replace(b'"data": ["a portrait"]', b'"data": [NaN]'), "request", "NaN is not JSON"),
    (stage1().replace(b'"shape": [1]', b'"shape": [1], "shape": [1099511627776]'), "request", "appears twice"),
    (stage1({"name": "width", "shape": [1], "datatype": "INT32", "parameters": {"binary_data_size": -4}}), "width",
     "non-negative integer"),
    (stage1({"name": "width", "shape": [1], "datatype": "INT32"}), "width", "exactly one of data"),
    (stage1({"name": "height", "shape": [1], "datatype": "INT32", "data": [64]}), "height", "not an input of model"),
    (stage1(width([64]), id="x" * 300), "id", "at most 256"),
    (stage1(width([64]), parameters={"priority": -1}), "parameters", "unsigned 64-bit"),
    (stage1(width([64]), extra=1), "request", "unknown key 'extra'"),
    (json.dumps({"inputs": [width([64])]}).encode(), "prompt", "is required"),
    (stage1(width([64]), outputs=[{"name": "nope"}]), "outputs", "not an output"),
    (b"\xff{}", "request", "not UTF-8"),
    (b'{"inputs": [{"name": "width", "shape": [1], "datatype": "INT32", "data": [1' + b"0" * 5000 + b"]}]}",
     "request", "not valid JSON"),
]


@pytest.mark.parametrize("body,field,text", JSON_CASES, ids=[f"{i}-{c[1]}" for i, c in enumerate(JSON_CASES)])
def test_malformed_json_is_400_naming_the_input(body, field, text):
    refused = refusal(body)
    assert refused.status == 400 and str(refused).startswith(f"{field}: ") and text in str(refused), str(refused)


def binary(array: np.ndarray) -> bytes:
    return array.tobytes()


def bytes_tensor(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def with_tail(request: dict, tail: bytes) -> tuple[bytes, int]:
    header = json.dumps(request).encode()
    return header + tail, len(header)


def image_request(shape, size, output="boxes") -> dict:
    return {"inputs": [{"name": "image", "shape": list(shape), "datatype": "UINT8", "parameters": {"binary_data_size": size}}],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}]}


def test_good_requests_pass():
    check_infer_request(stage1(width([64]), {"name": "guidance_scale", "shape": [1], "datatype": "FP32", "data": [5]},
                               outputs=[{"name": "images", "parameters": {"binary_data": True}}]), None, STAGE1, LIMITS)
    check_infer_request(stage1(width([[64]])), None, STAGE1, LIMITS)  # nested as the shape
    check_infer_request(json.dumps({"inputs": [{"name": "image", "shape": [0, 0, 3], "datatype": "UINT8", "data": []}]}).encode(),
                        None, DETECTOR, LIMITS)  # empty: the model names what is wrong (at least 1x1)
    pixels = np.zeros((8, 8, 3), np.uint8)
    check_infer_request(*with_tail(image_request(pixels.shape, pixels.nbytes), binary(pixels)), DETECTOR, LIMITS)
    check_infer_request(*with_tail(image_request((2, 8, 8, 3), 2 * 192, "latents"), bytes(384)), ENCODER, LIMITS)
    prompt = {"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 14}}]}
    check_infer_request(*with_tail(prompt, bytes_tensor(b"a portrait")), STAGE1, LIMITS)


BINARY_CASES = [  # (request, tail, header length change, field, text)
    (image_request((8, 8, 3), 192), bytes(191), 0, "image", "runs past the 191 bytes"),
    (image_request((8, 8, 3), 191), bytes(191), 0, "image", "must be 192 (192 x UINT8)"),
    (image_request((8, 8, 3), 192), bytes(200), 0, "request", "200 bytes follow the JSON"),
    (image_request((1048576, 1048576, 3), 192), bytes(192), 0, "image", "more than 1048576 elements"),
    (image_request((8, 8, 3), 192), bytes(192), 10_000, "Inference-Header-Content-Length", "must be in [0, "),
    (image_request((8, 8, 3), 192), bytes(192), -1, "request", "not valid JSON"),
]


@pytest.mark.parametrize("request_json,tail,shift,field,text", BINARY_CASES, ids=[f"{i}-{c[3]}" for i, c in enumerate(BINARY_CASES)])
def test_binary_extension_is_checked_against_the_shape(request_json, tail, shift, field, text):
    body, length = with_tail(request_json, tail)
    refused = refusal(body, DETECTOR, length + shift)
    assert str(refused).startswith(f"{field}: ") and text in str(refused), str(refused)


def test_binary_bytes_elements_are_checked():
    request = {"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}]}
    body, length = with_tail(request, struct.pack("<I", 1_000_000) + b"abcd")
    refused = refusal(body, STAGE1, length)
    assert str(refused).startswith("prompt: ") and "ends inside its elements" in str(refused)
    request["inputs"][0]["parameters"]["binary_data_size"] = 10
    body, length = with_tail(request, bytes_tensor(b"ab", b"cd"))
    refused = refusal(body, STAGE1, length)
    assert "holds more than the shape's 1 elements" in str(refused)


def test_batch_dimension_of_batched_models():
    for shape, text in (((9, 8, 8, 3), "[1, 8]"), ((8, 8, 3), "rank 3")):
        body, length = with_tail(image_request(shape, 0, "latents"), b"")
        refused = refusal(body, ENCODER, length)
        assert str(refused).startswith("image: ") and text in str(refused), str(refused)


def test_shared_memory_needs_the_key():
    request = {"inputs": [{"name": "image", "shape": [8, 8, 3], "datatype": "UINT8",
                           "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 192}}]}
    body = json.dumps(request).encode()
    assert refusal(body, DETECTOR).status == 403
    check_infer_request(body, None, DETECTOR, LIMITS, trusted=True)


def test_echoed_names_are_capped():
    refused = refusal(stage1({"name": "w" * 5_000_000, "shape": [1], "datatype": "INT32", "data": [1]}))
    assert len(str(refused)) < 600


def test_json_part_is_capped():
    big = stage1(width([64]), id="x").replace(b'"a portrait"', b'"' + b"a" * (300 << 10) + b'"')
    refused = refusal(big)
    assert refused.status == 413 and "PORTRAIT_HTTP_MAX_JSON" in str(refused)


# --- reading bodies ---------------------------------------------------------------------------------------------------

async def chunks(parts):
    for part in parts:
        yield part


def read(parts, headers) -> bytes:
    return asyncio.run(read_body(chunks(parts), headers, LIMITS))


def test_body_cap_by_content_length_reads_nothing():
    consumed = []

    async def watched():
        consumed.append(1)
        yield b"x"

    with pytest.raises(Refused) as caught:
        asyncio.run(read_body(watched(), {"content-length": str(300 << 20)}, LIMITS))
    assert caught.value.status == 413 and "PORTRAIT_HTTP_MAX_BODY" in str(caught.value) and not consumed


def test_body_cap_while_streaming_stops_early():
    sent = []

    async def endless():
        while True:
            sent.append(1)
            yield bytes(64 << 10)

    with pytest.raises(Refused) as caught:
        asyncio.run(read_body(endless(), {}, LIMITS))  # chunked: no Content-Length
    assert caught.value.status == 413 and len(sent) == 17  # 1 MiB cap / 64 KiB chunks, then one over


def test_compressed_bodies_are_inflated_with_the_cap():
    body = stage1(width([64]))
    assert read([gzip.compress(body)], {"content-encoding": "gzip"}) == body
    bomb = gzip.compress(bytes(50 << 20))  # 50 KiB that inflate to 50 MiB
    with pytest.raises(Refused) as caught:
        read([bomb], {"content-encoding": "gzip"})
    assert caught.value.status == 413
    with pytest.raises(Refused) as caught:
        read([body], {"content-encoding": "br"})
    assert caught.value.status == 415


# --- routes (the ASGI app; nothing listens upstream, so a forwarded request answers 503) ---------------------------

@pytest.fixture
def front():
    from starlette.testclient import TestClient

    from portrait.serving.server import free_port

    app = FrontApp(f"127.0.0.1:{free_port()}", "the-key", {"stage1": STAGE1}, LIMITS)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_routes(front):
    bad = front.post("/v2/models/stage1/infer", content=stage1(width([64.5])))
    assert bad.status_code == 400 and bad.json() == {"error": "width: data must be integers (INT32), got 64.5"}
    good = front.post("/v2/models/stage1/versions/1/infer", content=stage1(width([64])))
    assert good.status_code == 503 and "service unavailable" in good.json()["error"]  # checked, then forwarded
    assert front.post("/v2/models/stage1/generate", json={"prompt": "x"}).status_code == 404
    assert front.post("/v2/models/stage1/generate_stream", json={"prompt": "x"}).status_code == 404
    assert front.post("/v2/models/nope/infer", content=stage1()).status_code == 404
    for method, path in (("POST", "/v2/repository/index"), ("GET", "/v2/logging"), ("POST", "/v2/trace/setting"),
                         ("GET", "/v2/systemsharedmemory/status"), ("POST", "/v2/models/stage1/trace/setting")):
        assert front.request(method, path, content=b"{}").status_code == 403, path
        assert front.request(method, path, content=b"{}", headers={"X-Portrait-Key": "wrong"}).status_code == 403
        assert front.request(method, path, content=b"{}", headers={"X-Portrait-Key": "the-key"}).status_code == 503
    assert front.get("/v2/health/ready").status_code == 503  # GETs pass through
    assert front.put("/v2/models/stage1/infer", content=b"{}").status_code == 405
    huge = front.post("/v2/models/stage1/infer", content=bytes(LIMITS.max_body + 1))
    assert huge.status_code == 413
