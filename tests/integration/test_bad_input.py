"""Bad requests get INVALID_ARG naming the field and the limit; the server keeps serving."""

import time

import numpy as np
import pytest

from portrait.errors import InvalidInput
from portrait.params import DetailParams, Stage1Params
from tests.helpers import metric_total

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


# --- every externally reachable model: a table of bad requests, each answered INVALID_ARG naming the field -----------

def b(*values) -> tuple[str, np.ndarray]:
    return "BYTES", np.array(values, dtype=np.object_)


def f32(array) -> tuple[str, np.ndarray]:
    return "FP32", np.asarray(array, np.float32)


def i32(*values) -> tuple[str, np.ndarray]:
    return "INT32", np.array(values, np.int32)


def i64(*values) -> tuple[str, np.ndarray]:
    return "INT64", np.array(values, np.int64)


def u8(shape) -> tuple[str, np.ndarray]:
    return "UINT8", np.zeros(shape, np.uint8)


def png(size=64) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


KEYPOINTS = np.array([[[30, 40], [80, 40], [56, 60], [35, 85], [75, 85]]], np.float32)
MASK = np.zeros((1, 77), bool)
MASK[0, 3:5] = True
NAN = float("nan")

# model -> (a good request, its outputs): sent after every bad one
GOOD_REQUESTS = {
    "stage1": (GOOD, OUT),
    "text_encoder": ({"prompt": ("BYTES", np.array([[b"a portrait"]], dtype=np.object_))}, ["prompt_embeds"]),
    "vae_decoder": ({"latents": f32(np.zeros((1, 4, 8, 8)))}, ["image"]),
    "vae_encoder": ({"image": u8((1, 64, 64, 3))}, ["latents"]),
    "face_detector": ({"image": u8((64, 64, 3))}, ["boxes"]),
    "face_embedder": ({"image": u8((112, 112, 3)), "keypoints": ("FP32", KEYPOINTS)}, ["embeddings"]),
    "id_encoder": ({"id_images": b(png()), "id_embeds": f32(np.zeros((1, 512))),
                    "prompt_embeds": f32(np.zeros((1, 77, 96))), "class_tokens_mask": ("BOOL", MASK)},
                   ["id_prompt_embeds"]),
    "face_detailer": ({"image": b(png()), "prompt": b(b"a face"), "work_size": i32(64), "steps": i32(2)},
                      ["image", "faces_found"]),
}


def replace(model: str, **fields) -> dict:
    """The model's good request with `fields` replaced (None: left out)."""
    arrays = {**GOOD_REQUESTS[model][0], **fields}
    return {k: v for k, v in arrays.items() if v is not None}


TEXT = "text_encoder"
TABLE = [
    # (model, request, field named, text the message must contain)
    ("stage1", replace("stage1", seed=i64(2**63 - 1), batch_size=i32(2)), "seed", "image i uses seed + i"),
    ("stage1", replace("stage1", guidance_cutoff=f32([NAN])), "guidance_cutoff", "finite"),
    (TEXT, {"prompt": ("BYTES", np.array([[b"a" * 5000]], dtype=np.object_))}, "prompt", "at most 1000 characters"),
    (TEXT, {"prompt": ("BYTES", np.array([[b"\xff\xfe"]], dtype=np.object_))}, "prompt", "UTF-8"),
    (TEXT, {"prompt": ("BYTES", np.array([[b"a\x01b"]], dtype=np.object_))}, "prompt", "control characters"),
    (TEXT, {"prompt": ("BYTES", np.array([[b"a woman img"]], dtype=np.object_)), "num_id_images": ("INT32", np.array([[0]], np.int32))},
     "num_id_images", "[1, 4]"),
    (TEXT, {"prompt": ("BYTES", np.array([[b"a woman img"]], dtype=np.object_)), "num_id_images": ("INT32", np.array([[5]], np.int32))},
     "num_id_images", "[1, 4]"),
    ("vae_decoder", {"latents": f32(np.zeros((1, 3, 8, 8)))}, "latents", "shape [N, 4, N, N]"),
    ("vae_decoder", {"latents": f32(np.zeros((1, 4, 0, 0)))}, "latents", "latent height and width"),
    ("vae_decoder", {"latents": f32(np.full((1, 4, 8, 8), NAN))}, "latents", "finite"),
    ("vae_decoder", {"latents": f32(np.zeros((1, 4, 300, 8)))}, "latents", "[8, 256]"),
    ("vae_encoder", {"image": u8((1, 100, 100, 3))}, "image", "multiples of 8"),
    ("vae_encoder", {"image": u8((1, 4, 4, 3))}, "image", "at least 8x8"),
    ("vae_encoder", {"image": u8((1, 64, 64, 4))}, "image", "image"),
    ("face_detector", {"image": u8((0, 0, 3))}, "image", "at least 1x1"),
    ("face_detector", replace("face_detector", max_faces=i32(0)), "max_faces", "[1, 8]"),
    ("face_detector", replace("face_detector", max_faces=i32(9)), "max_faces", "[1, 8]"),
    ("face_detector", replace("face_detector", max_faces=i32(1, 2)), "max_faces", "shape"),
    ("face_embedder", replace("face_embedder", keypoints=f32(np.full((1, 5, 2), NAN))), "keypoints", "finite"),
    ("face_embedder", replace("face_embedder", keypoints=f32(KEYPOINTS + 500)), "keypoints", "inside"),
    ("face_embedder", replace("face_embedder", keypoints=f32(np.zeros((0, 5, 2)))), "keypoints", "1 to 8 faces"),
    ("face_embedder", replace("face_embedder", keypoints=f32(np.repeat(KEYPOINTS, 9, 0))), "keypoints", "1 to 8 faces"),
    ("face_embedder", replace("face_embedder", image=u8((0, 0, 3))), "image", "at least 1x1"),
    ("id_encoder", replace("id_encoder", id_embeds=f32(np.full((1, 512), NAN))), "id_embeds", "finite"),
    ("id_encoder", replace("id_encoder", id_embeds=f32(np.zeros((1, 100)))), "id_embeds", "[1, 512]"),
    ("id_encoder", replace("id_encoder", prompt_embeds=f32(np.zeros((1, 77, 50)))), "prompt_embeds", "width 96"),
    ("id_encoder", replace("id_encoder", prompt_embeds=f32(np.full((1, 77, 96), NAN))), "prompt_embeds", "finite"),
    ("id_encoder", replace("id_encoder", class_tokens_mask=("BOOL", np.zeros((1, 77), bool))), "class_tokens_mask",
     "must mark 2 x 1"),
    ("id_encoder", replace("id_encoder", id_images=b(b"not an image")), "id_images", "not a readable image"),
    ("id_encoder", replace("id_encoder", id_images=b(*[png()] * 5), id_embeds=f32(np.zeros((5, 512)))), "id_images",
     "at most 4"),
    ("face_detailer", replace("face_detailer", image=None), "image", "image"),
    ("face_detailer", replace("face_detailer", image=b(b"")), "image", "is empty"),
    ("face_detailer", replace("face_detailer", image=b(b"no image")), "image", "not a readable image"),
    ("face_detailer", replace("face_detailer", seed=i64(2**63 - 1)), "seed", "seed + max_faces - 1"),
    ("face_detailer", replace("face_detailer", strength=f32([0])), "strength", "runs no step"),
    ("face_detailer", replace("face_detailer", max_faces=i32(9)), "max_faces", "[1, 8]"),
    ("face_detailer", replace("face_detailer", margin=f32([3])), "margin", "[0, 2]"),
    ("face_detailer", replace("face_detailer", work_size=i32(100)), "work_size", "multiple of 8"),
    ("face_detailer", replace("face_detailer", style_strength=f32([101])), "style_strength", "[0, 100]"),
    ("face_detailer", replace("face_detailer", id_images=b(png())), "prompt", "trigger word"),
    ("face_detailer", replace("face_detailer", id_images=b()), "id_images", "is empty"),
    ("face_detailer", replace("face_detailer", prompt=b(b"")), "prompt", "must not be empty"),
    # limits per request (issue 20 §3): the cost budget and the image-pixel cap
    ("stage1", replace("stage1", width=i32(2048), height=i32(2048), batch_size=i32(8), steps=i32(10)), "steps",
     "320 megapixel-steps"),
    ("face_detailer", replace("face_detailer", work_size=i32(2048), max_faces=i32(8), steps=i32(40)), "steps",
     "PORTRAIT_MAX_REQUEST_COST"),
    ("face_detector", {"image": u8((2056, 2048, 3))}, "image", "PORTRAIT_MAX_IMAGE_PIXELS"),
    ("vae_encoder", {"image": u8((1, 2056, 2048, 3))}, "image", "PORTRAIT_MAX_IMAGE_PIXELS"),
]
TABLE_IDS = [f"{m}-{f}-{i}" for i, (m, _, f, _) in enumerate(TABLE)]


def served_after(client, model: str) -> None:
    arrays, outputs = GOOD_REQUESTS[model]
    out = client.infer(model, arrays, outputs)
    assert all(out[n] is not None for n in outputs)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("model,request_arrays,field,text", TABLE, ids=TABLE_IDS)
def test_bad_input_table(grpc_client, http_client, protocol, model, request_arrays, field, text):
    client = grpc_client if protocol == "grpc" else http_client
    with pytest.raises(InvalidInput) as caught:
        client.infer(model, request_arrays, GOOD_REQUESTS[model][1])
    assert caught.value.field == field and text in str(caught.value), str(caught.value)
    served_after(client, model)


PORTRAIT_BAD = [
    ({"steps": i32(0)}, "steps", "[1, 150]"),
    ({"width": i32(100)}, "width", "multiple of 8"),
    ({"seed": i64(2**63 - 1)}, "seed", "seed + max_faces - 1"),
    ({"detail": ("BOOL", np.array([False])), "id_images": b(png())}, "id_images", "need stage 2"),
    ({"guidance_scale": f32([NAN])}, "guidance_scale", "finite"),
]


@pytest.mark.parametrize("fields,field,text", PORTRAIT_BAD, ids=[c[1] for c in PORTRAIT_BAD])
def test_bad_input_portrait_stream(grpc_client, fields, field, text):
    """The decoupled `portrait` model (gRPC streaming): the stream ends with INVALID_ARG naming the field."""
    arrays = {"prompt": b(b"a portrait"), "width": i32(64), "height": i32(64), "steps": i32(2), **fields}
    with pytest.raises(InvalidInput) as caught:
        list(grpc_client.stream("portrait", arrays, ["image"]))
    assert caught.value.field == field and text in str(caught.value), str(caught.value)
    good = {"prompt": b(b"a portrait"), "width": i32(64), "height": i32(64), "steps": i32(2),
            "detail": ("BOOL", np.array([False]))}
    assert any("image" in out for out in grpc_client.stream("portrait", good, ["image"]))


class RecordingTransport:
    """Wraps tritonclient's InferenceServerClient inside a TritonClient: every method the client reaches for is
    recorded (infer, start_stream, async_stream_infer, ...), then passed on."""

    def __init__(self, inner):
        self.inner, self.used = inner, []

    def __getattr__(self, name):
        self.used.append(name)
        return getattr(self.inner, name)


SERVED = ("stage1", "face_detailer", "portrait")  # the models a TritonClient's calls reach
COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "portrait_requests_total")
WITH_TRIGGER = "portrait of a woman img"
CLIENT_BAD = [
    # (call on a TritonClient, field named, text the message must contain)
    (lambda c: c.portrait(Stage1Params(prompt="x", width=64, height=64, batch_size=2), None), "batch_size", "one image"),
    (lambda c: c.portrait(Stage1Params(prompt=WITH_TRIGGER, width=64, height=64), None, faces=[png()]), "id_images",
     "need stage 2"),
    (lambda c: c.portrait(Stage1Params(prompt="a woman", width=64, height=64), DetailParams(prompt="a woman"),
                          faces=[png()]), "prompt", "trigger word"),
    (lambda c: c.portrait(Stage1Params(prompt=WITH_TRIGGER, width=64, height=64), DetailParams(prompt=WITH_TRIGGER),
                          faces=[png()] * 5), "id_images", "at most 4"),
    (lambda c: c.detail(png(), DetailParams(prompt="a woman", work_size=64), faces=[png()]), "prompt", "trigger word"),
    (lambda c: c.detail(png(), DetailParams(prompt=WITH_TRIGGER, work_size=64), faces=[png()] * 5), "id_images",
     "at most 4"),
]


def requests_served(server) -> float:
    return metric_total(server, COUNTERS, SERVED)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_client_validates_before_sending(server, protocol):
    """A real TritonClient on the running server: each bad call raises InvalidInput naming the field, and nothing is
    sent (its transport is never touched, and the server counts no request); a good call through the same client
    is then seen by both, so the two checks can fail."""
    from clients.triton import TritonClient

    with pytest.raises(InvalidInput) as caught:  # the parameters themselves check their limits when built
        Stage1Params(prompt="x", width=100)
    assert caught.value.field == "width" and "multiple of 8" in str(caught.value)

    client = TritonClient(server.grpc_url if protocol == "grpc" else server.http_url, protocol)
    transport = client.client = RecordingTransport(client.client)
    before = requests_served(server)
    for call, field, text in CLIENT_BAD:
        with pytest.raises(InvalidInput) as caught:
            call(client)
        assert caught.value.field == field and text in str(caught.value), (field, str(caught.value))
    assert transport.used == [], f"the client reached for its transport: {transport.used}"
    assert requests_served(server) == before, "a bad call reached the server"

    assert client.stage1(Stage1Params(prompt="x", width=64, height=64, steps=1)).images.shape == (1, 64, 64, 3)
    assert "infer" in transport.used
    deadline = time.monotonic() + 10
    while requests_served(server) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert requests_served(server) > before, "the counters did not see a request that was sent"
    client.close()


def test_client_checks_fail_before_connecting():
    """Nothing listens on the client's port: a bad call is InvalidInput, not the Unavailable a sent one would get."""
    from clients.triton import TritonClient
    from portrait.errors import Unavailable
    from portrait.serving.server import free_port

    client = TritonClient(f"localhost:{free_port()}", "grpc", timeout=5)
    for call, field, _ in CLIENT_BAD:
        with pytest.raises(InvalidInput) as caught:
            call(client)
        assert caught.value.field == field
    with pytest.raises(Unavailable):  # what any call that does go out meets here
        client.stage1(Stage1Params(prompt="x", width=64, height=64, steps=1))
    client.close()


# --- the public HTTP port (the validating front, portrait/serving/http_front.py): what aborted Triton (issue 20) ------

def post(server, model: str, body: bytes, headers: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    import http.client
    import json

    host, port = server.http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("POST", f"/v2/models/{model}/infer", body=body,
                           headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def json_request(*inputs: dict, outputs=("images",)) -> bytes:
    import json

    prompt = {"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["a portrait"]}
    size = [{"name": n, "shape": [1], "datatype": "INT32", "data": [64]} for n in ("width", "height")
            if n not in {i["name"] for i in inputs}]
    steps = {"name": "steps", "shape": [1], "datatype": "INT32", "data": [1]}
    return json.dumps({"inputs": [prompt, steps, *size, *inputs], "outputs": [{"name": o} for o in outputs]}).encode()


def width_input(data, shape=(1,), datatype="INT32") -> dict:
    return {"name": "width", "shape": list(shape), "datatype": datatype, "data": data}


def nested(levels: int) -> bytes:
    return json_request(width_input([0])).replace(b'"data": [0]', b'"data": ' + b"[" * levels + b"64" + b"]" * levels)


HTTP_CRASHES = [  # (model, body, input named): each aborted tritonserver 2.51 (bad_alloc; SIGSEGV, stack overflow)
    ("stage1", json_request(width_input([64], shape=[1099511627776])), "width"),
    ("face_detector", b'{"inputs": [{"name": "image", "shape": [1048576, 1048576, 3], "datatype": "UINT8", "data": [0]}]}',
     "image"),
    ("stage1", nested(100_000), "request"),
]
HTTP_JSON_CASES = [  # (body, input named): 500 from Triton 2.51 (or a silent wrap), 400 naming the input here
    (b"{not json", "request"),
    (b'{"inputs": 5}', "inputs"),
    (b'{"inputs": [5]}', "inputs"),
    (b"[1, 2]", "request"),
    (json_request(width_input([64, 64])), "width"),
    (json_request(width_input([64], shape=[2])), "width"),
    (json_request(width_input([64.5])), "width"),
    (json_request(width_input(["64"])), "width"),
    (json_request(width_input([None])), "width"),
    (json_request(width_input([4294967360])), "width"),  # was wrapped to 64 and served
    (json_request(width_input([64], shape="1")), "width"),
    (json_request(width_input([64], shape=[-1])), "width"),
    (json_request().replace(b'"a portrait"', b'"a \\udc80 portrait"'), "prompt"),
    (json_request(width_input([64])).replace(b'"data": [64]', b'"data": [NaN]', 1), "request"),
    (json_request({"name": "width", "shape": [1], "datatype": "INT32", "parameters": {"binary_data_size": -4}}), "width"),
    (json_request({"name": "width", "shape": [1], "datatype": "INT32", "parameters": {"binary_data_size": 4}}), "width"),
    (json_request({"name": "width", "shape": [1], "datatype": "INT32"}), "width"),
    (json_request({"name": "guidance_scale", "shape": [1], "datatype": "FP32", "data": [1e39]}), "guidance_scale"),
]


def triton_pid(server) -> int:
    return server.process.pid


@pytest.mark.parametrize("model,body,field", HTTP_CRASHES, ids=["stage1-width-2^40", "face_detector-image-2^40",
                                                                 "nested-100000"])
def test_http_crash_inputs_are_refused(server, http_client, model, body, field):
    pid = triton_pid(server)
    status, answer = post(server, model, body)
    assert status == 400 and answer["error"].startswith(f"{field}: "), (status, answer)
    assert server.process.poll() is None and triton_pid(server) == pid, "tritonserver died"
    good_request_works(http_client)


@pytest.mark.parametrize("body,field", HTTP_JSON_CASES, ids=[f"{i}-{c[1]}" for i, c in enumerate(HTTP_JSON_CASES)])
def test_malformed_http_json_is_400_naming_the_input(server, body, field):
    status, answer = post(server, "stage1", body)
    assert status == 400 and answer["error"].startswith(f"{field}: "), (status, answer)
    assert "Traceback" not in answer["error"] and "/work" not in answer["error"] and len(answer["error"]) < 600


def test_server_serves_after_the_http_attacks(server, http_client, grpc_client):
    pid = triton_pid(server)
    for model, body, _ in HTTP_CRASHES:
        assert post(server, model, body)[0] == 400
    for body, _ in HTTP_JSON_CASES:
        assert post(server, "stage1", body)[0] == 400
    seed = {"name": "seed", "shape": [1], "datatype": "INT64", "data": [7]}
    status, answer = post(server, "stage1", json_request(seed, outputs=("seeds",)))
    assert status == 200 and answer["outputs"][0]["data"] == [7], answer  # a good JSON request still goes through
    good_request_works(http_client)  # and the binary extension (tritonclient's default)
    good_request_works(grpc_client)
    assert server.process.poll() is None and triton_pid(server) == pid, "tritonserver restarted"


def read_answer(s) -> str:
    """What the server sent until it closed the connection."""
    data = b""
    try:
        while part := s.recv(65536):
            data += part
    except OSError:  # reset after the answer: keep what came
        pass
    return data.decode(errors="replace")


def test_http_body_cap_refuses_early_without_reading(server):
    """A 300 MB body is refused when its Content-Length arrives (nothing read), and a chunked one as soon as it passes
    PORTRAIT_HTTP_MAX_BODY: the front (in this process) never holds it, Triton never sees it."""
    import resource
    import select
    import socket

    host, port = server.http_url.rsplit(":", 1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    for framing in ("content-length", "chunked"):
        with socket.create_connection((host, int(port)), timeout=30) as s:
            length = "Content-Length: 314572800" if framing == "content-length" else "Transfer-Encoding: chunked"
            s.sendall(f"POST /v2/models/stage1/infer HTTP/1.1\r\nHost: x\r\n{length}\r\n\r\n".encode())
            chunk, sent, answer = bytes(1 << 20), 0, ""
            while sent < 300 << 20 and not answer:
                if select.select([s], [], [], 0.05)[0]:  # the answer came: read it before the connection is reset
                    answer = read_answer(s)
                    break
                try:
                    s.sendall(chunk if framing == "content-length" else b"100000\r\n" + chunk + b"\r\n")
                except OSError:  # the front answered and closed the connection
                    answer = read_answer(s)
                sent += len(chunk)
        assert answer.startswith("HTTP/1.1 413"), answer[:200]
        assert "PORTRAIT_HTTP_MAX_BODY" in answer
        assert sent < 100 << 20, f"{framing}: {sent >> 20} MiB went in before the refusal"
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 100 * 1024, f"the process grew {grown >> 10} MiB"


def test_echoed_job_id_is_capped(grpc_client):
    """A 5 MiB job_id comes back as a short error, not 5 MiB (issue 20); the cap is in triton_io.to_triton_error."""
    import tritonclient.grpc as g

    embeds, pooled = np.zeros((1, 77, 96), np.float32), np.zeros((1, 64), np.float32)
    inputs = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "negative_prompt_embeds": embeds,
              "negative_pooled_prompt_embeds": pooled, "seeds": np.array([1], np.int64),
              "height": np.array([64], np.int32), "width": np.array([64], np.int32), "steps": np.array([2], np.int32),
              "guidance_scale": np.array([5], np.float32), "guidance_cutoff": np.array([0], np.float32),
              "job_id": np.array([b"0" * (5 << 20)], np.object_)}
    errors = []
    client = g.InferenceServerClient(grpc_client.url)
    client.start_stream(callback=lambda result, error: errors.append(error))
    tensors = []
    for name, array in inputs.items():
        datatype = {np.float32: "FP32", np.int64: "INT64", np.int32: "INT32"}.get(array.dtype.type, "BYTES")
        tensor = g.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    client.async_stream_infer("denoise", tensors)
    client.stop_stream()
    client.close()
    messages = [e.message() for e in errors if e is not None]
    assert messages and all(len(m) < 1000 for m in messages), [len(m) for m in messages]
    assert any(m.startswith("job_id: must be 32 hex digits") and "characters, cut" in m for m in messages), messages
