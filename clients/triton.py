"""One client over tritonclient's gRPC or HTTP module: the two share the same call shapes."""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from portrait.errors import Cancelled, InvalidInput, PortraitError, ServerError, Unavailable
from portrait.params import MODELS, DetailParams, FaceIdentities, Stage1Params, detail_params_for, stage1_params_for

# Triton datatype of each request field, from the schema (portrait/params.py; tests/unit/test_schema.py checks the
# config.pbtxt files against it)
STAGE1_TYPES = MODELS["stage1"].types
DETAIL_TYPES = MODELS["face_detailer"].types
PORTRAIT_STAGE1 = MODELS["portrait"].fields_of(Stage1Params)  # the portrait model's fields read from the Stage1Params
PORTRAIT_DETAIL = tuple(n for n in MODELS["portrait"].fields if n not in PORTRAIT_STAGE1)  # ... and stage 2's own
FIELD_ERROR = re.compile(r"([A-Za-z_]+): (.*)", re.S)  # the models' InvalidInput form: "field: limit"
NUMPY_TYPES = {"BOOL": np.bool_, "BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32}


IDENTITY_RESULTS = ("face_identity", "similarity", "similarity_before")


@dataclass(frozen=True)
class IdentityCheck:
    """Per face (rows as `boxes`): the identity it was given and how close it came (stages.DetailResult)."""

    face_identity: np.ndarray  # [F] int32: identity (or face-prompt slot) 0..K-1, -1 none
    similarity: np.ndarray  # [F, K] float32: ArcFace cosine of the detailed face to each identity
    similarity_before: np.ndarray  # [F, K] float32: the same before detailing

    @classmethod
    def read(cls, out: dict, faces: int) -> IdentityCheck:
        empty = {"face_identity": np.full(faces, -1, np.int32), "similarity": np.zeros((faces, 0), np.float32),
                 "similarity_before": np.zeros((faces, 0), np.float32)}
        return cls(*(out[n] if out.get(n) is not None else empty[n] for n in IDENTITY_RESULTS))


@dataclass(frozen=True)
class DetailOutput:
    image: np.ndarray  # [H, W, 3] uint8
    mask: np.ndarray  # [H, W] uint8, 0 where the input's pixels are untouched
    boxes: np.ndarray  # [F, 4] float32
    faces_found: int
    identity: IdentityCheck | None = None


PORTRAIT_RESULTS = ("base_image", "mask", "image", "boxes", "seed", "truncated_tokens", *IDENTITY_RESULTS)


@dataclass(frozen=True)
class PortraitOutput:
    base_image: np.ndarray  # [H, W, 3] uint8, stage 1
    mask: np.ndarray  # [H, W] uint8, stage 2's paste-back alpha (all 0 without stage 2 or faces)
    image: np.ndarray  # [H, W, 3] uint8, final
    boxes: np.ndarray  # [F, 4] faces detailed
    seed: int
    truncated_tokens: int = 0
    identity: IdentityCheck | None = None


@dataclass(frozen=True)
class Stage1Output:
    images: np.ndarray  # [B, H, W, 3] uint8
    seeds: list[int]
    truncated_tokens: int


UNAVAILABLE_PREFIX = "service unavailable"  # the models' Unavailable form (portrait/serving/triton_io.py)


def translate_error(error: Exception) -> PortraitError:
    """InferenceServerException -> InvalidInput (field named by the server), Unavailable (draining, restarting,
    unreachable: retry) or ServerError."""
    status, message = str(getattr(error, "status", lambda: "")() or ""), getattr(error, "message", lambda: str(error))()
    message = message or str(error)
    if "UNAVAILABLE" in status or status == "503" or message.strip().startswith(UNAVAILABLE_PREFIX):
        return Unavailable(f"server unavailable (retry later or on another replica): {message}")
    if not status and FIELD_ERROR.match(message):  # gRPC streams carry the message without the status code
        status = "INVALID_ARG"
    if "INVALID_ARG" in status or status == "400" or "INVALID_ARGUMENT" in status:
        message = re.sub(r"^\[request id: [^\]]*\]\s*", "", message.strip())
        ours = FIELD_ERROR.match(message)
        if ours:
            return InvalidInput(ours.group(1), ours.group(2))
        core = (re.search(r"input '([^']+)'", message)  # Triton core's dtype/shape checks
                or re.search(r"missing required input\(s\) \['([^']+)'", message))
        return InvalidInput(core.group(1) if core else "request", message)
    return ServerError(f"{status or 'error'}: {message}".strip())


def as_portrait_error(error: Exception) -> PortraitError:
    if type(error).__name__ == "InferenceServerException":
        return translate_error(error)
    if isinstance(error, ConnectionError):
        return Unavailable(f"server unavailable (retry later or on another replica): {type(error).__name__}: {error}")
    return ServerError(f"{type(error).__name__}: {error}")


def field_arrays(params, types: dict[str, str], names=None) -> dict[str, tuple[str, np.ndarray]]:
    """Request arrays {name: (datatype, array)} for the params fields in `names` (default: all of `types`)."""
    return {n: (types[n], encode_value(types[n], getattr(params, n))) for n in (names or types)}


def face_identities(faces=None, identities=None, face_prompts=()) -> FaceIdentities:
    """`faces`: one identity's photos (encoded), or `identities`: several, each a list of photos; `face_prompts`:
    one per identity (or, without photos, per face). Checked here as the server checks them (params.FaceIdentities)."""
    if faces and identities:
        raise InvalidInput("id_images", "give one identity (faces) or several (identities), not both")
    groups = [list(faces)] if faces else [list(g) for g in identities or ()]
    return FaceIdentities(tuple(tuple(bytes(p) for p in g) for g in groups), tuple(face_prompts or ()))


def identity_arrays(people: FaceIdentities) -> dict[str, tuple[str, np.ndarray]]:
    """The id_images / id_groups / face_prompts inputs (FaceIdentities.to_arrays); {} without them."""
    arrays = {}
    for name, (datatype, values) in people.to_arrays().items():
        array = np.empty(len(values), dtype=np.object_) if datatype == "BYTES" else np.array(values, NUMPY_TYPES[datatype])
        if datatype == "BYTES":
            array[:] = values
        arrays[name] = (datatype, array)
    return arrays


def check_portrait_request(params: Stage1Params, detail: DetailParams | None, people: FaceIdentities) -> None:
    """The `portrait` model's rules, checked before anything travels."""
    if params.batch_size != 1:
        raise InvalidInput("batch_size", "the portrait model makes one image per request")
    if (people.count or people.face_prompts) and detail is None:
        raise InvalidInput("id_images" if people.count else "face_prompts",
                           "need stage 2 (detail): identity is injected there")
    if detail is not None:
        people.check_with(detail.max_faces, detail.assign, params.prompt)


def encode_value(datatype: str, value) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([value.encode("utf-8")], dtype=np.object_)
    return np.array([value], dtype=NUMPY_TYPES[datatype])


class TritonClient:
    """Calls the portrait models on one server; `protocol` is "grpc" or "http"."""

    def __init__(self, url: str, protocol: str = "grpc", timeout: float = 600.0):
        if protocol == "grpc":
            import tritonclient.grpc as module
        elif protocol == "http":
            import tritonclient.http as module
        else:
            raise ValueError(f"protocol must be grpc or http, got {protocol!r}")
        self.module, self.protocol, self.url, self.timeout = module, protocol, url, timeout
        kwargs = {"network_timeout": timeout, "connection_timeout": timeout} if protocol == "http" else {}
        self.client = module.InferenceServerClient(url, **kwargs)

    def is_ready(self) -> bool:
        try:
            return bool(self.client.is_server_ready())
        except Exception:
            return False

    def _inputs(self, arrays: dict[str, tuple[str, np.ndarray]]) -> list:
        inputs = []
        for name, (datatype, array) in arrays.items():
            tensor = self.module.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    def infer(self, model: str, arrays: dict[str, tuple[str, np.ndarray]], outputs: list[str]) -> dict[str, np.ndarray]:
        """Raw call: `arrays` maps input name -> (Triton datatype, array)."""
        requested = [self.module.InferRequestedOutput(n) for n in outputs]
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            result = self.client.infer(model, self._inputs(arrays), outputs=requested, **kwargs)
        except Exception as error:
            raise as_portrait_error(error) from None
        return {n: result.as_numpy(n) for n in outputs}

    def stream(self, model: str, arrays: dict[str, tuple[str, np.ndarray]], outputs: list[str]) -> Iterator[dict[str, np.ndarray]]:
        """A decoupled model's responses in order (gRPC streaming); each yields the outputs it carries."""
        if self.protocol != "grpc":
            raise ServerError("streaming needs the gRPC protocol")
        responses: queue.Queue = queue.Queue()
        try:
            self.client.start_stream(callback=lambda result, error: responses.put((result, error)))
        except Exception as error:
            raise as_portrait_error(error) from None
        finished = False
        try:
            try:
                self.client.async_stream_infer(model, self._inputs(arrays),
                                               outputs=[self.module.InferRequestedOutput(n) for n in outputs],
                                               enable_empty_final_response=True)
            except Exception as error:
                raise as_portrait_error(error) from None
            while True:
                try:
                    result, error = responses.get(timeout=self.timeout)
                except queue.Empty:
                    raise ServerError(f"no response from {model} within {self.timeout:.0f} s") from None
                if error is not None:
                    raise as_portrait_error(error)
                found = {n: result.as_numpy(n) for n in outputs}
                found = {n: a for n, a in found.items() if a is not None}
                if found:
                    yield found
                if result.get_response().parameters["triton_final_response"].bool_param:
                    finished = True
                    return
        finally:
            # a consumer that stops early (closes the generator, an exception) cancels the request on the server
            self.client.stop_stream(cancel_requests=not finished)

    def stage1(self, params: Stage1Params) -> Stage1Output:
        """Text-to-image; validated here first so bad values fail before any network round trip."""
        arrays = field_arrays(params, STAGE1_TYPES)
        out = self.infer("stage1", arrays, ["images", "seeds", "truncated_tokens"])
        return Stage1Output(out["images"], [int(s) for s in out["seeds"]], int(out["truncated_tokens"][0]))

    def detail(self, image: bytes, params: DetailParams, faces: list[bytes] | None = None,
               identities: list[list[bytes]] | None = None, face_prompts: list[str] | None = None) -> DetailOutput:
        """Stage 2 on an encoded image (PNG/JPEG bytes); no face found comes back unchanged with faces_found 0.
        `faces`: one person's encoded photos (PhotoMaker V2), or `identities`: up to 4 people, each 1-4 photos, one
        face each (params.assign: order or match); the prompt (and each of `face_prompts`) then holds
        "<class word> img". The result says which face got whom and how close it came (`identity`)."""
        people = face_identities(faces, identities, face_prompts)
        people.check_with(params.max_faces, params.assign, params.prompt)  # before the photos travel
        arrays = {**field_arrays(params, DETAIL_TYPES), **identity_arrays(people)}
        arrays["image"] = ("BYTES", np.array([image], dtype=np.object_))
        out = self.infer("face_detailer", arrays, ["image", "mask", "boxes", "faces_found", *IDENTITY_RESULTS])
        return DetailOutput(out["image"], out["mask"], out["boxes"], int(out["faces_found"][0]),
                            IdentityCheck.read(out, len(out["boxes"])))

    def portrait(self, params: Stage1Params, detail: DetailParams | None,
                 progress: Callable[[str, int, int], None] | None = None,
                 cancel: threading.Event | None = None, faces: list[bytes] | None = None,
                 identities: list[list[bytes]] | None = None, face_prompts: list[str] | None = None) -> PortraitOutput:
        """Stage 1 then (unless `detail` is None) stage 2, streaming (stage, step, num_steps) to `progress`.
        Stage 2 takes its strength / max_faces / margin / work_size / style_strength from `detail`; the rest from
        `params` (detail_params_for). `faces`: encoded identity photos (PhotoMaker V2, needs stage 2); the prompt then
        holds "<class word> img" and stage 1 runs on the prompt without the trigger word; or `identities` (several
        people, one face each) and `face_prompts`, as in `detail`.
        Setting `cancel` stops the request on the server within a step and raises Cancelled here."""
        people = face_identities(faces, identities, face_prompts)
        check_portrait_request(params, detail, people)
        arrays = field_arrays(params, STAGE1_TYPES, PORTRAIT_STAGE1)
        arrays["detail"] = ("BOOL", np.array([detail is not None]))
        if detail is not None:
            arrays.update(field_arrays(detail, DETAIL_TYPES, PORTRAIT_DETAIL))
        arrays.update(identity_arrays(people))
        final = {}
        stream = self.stream("portrait", arrays, ["stage", "step", "num_steps", *PORTRAIT_RESULTS])
        try:
            for out in stream:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled")
                if "step" in out and progress is not None:
                    progress(out["stage"][0].decode(), int(out["step"][0]), int(out["num_steps"][0]))
                final.update({k: v for k, v in out.items() if k in PORTRAIT_RESULTS})
        finally:
            stream.close()  # on any early exit (cancel, an exception in `progress`) this cancels the server's request
        return PortraitOutput(final["base_image"], final["mask"], final["image"], final["boxes"], int(final["seed"][0]),
                              int(final["truncated_tokens"][0]), IdentityCheck.read(final, len(final["boxes"])))

    def portrait_in_two_requests(self, params: Stage1Params, detail: DetailParams | None,
                                 faces: list[bytes] | None = None, identities: list[list[bytes]] | None = None,
                                 face_prompts: list[str] | None = None) -> PortraitOutput:
        """What the `portrait` model does, as two plain requests (stage1, then face_detailer on its PNG), for HTTP,
        which has no streaming: the same checks, the same stage-1 prompt and the same stage-2 params (the rules are
        params.stage1_params_for and params.detail_params_for, which the portrait model calls too)."""
        from portrait.images import encode_png

        people = face_identities(faces, identities, face_prompts)
        check_portrait_request(params, detail, people)
        first = self.stage1(stage1_params_for(params, with_identity=bool(people.count)))
        base, truncated = first.images[0], first.truncated_tokens
        if detail is None:
            return PortraitOutput(base, np.zeros(base.shape[:2], np.uint8), base, np.zeros((0, 4), np.float32),
                                  params.seed, truncated, IdentityCheck.read({}, 0))
        stage2 = detail_params_for(params, **{n: getattr(detail, n) for n in PORTRAIT_DETAIL})
        out = self.detail(encode_png(base), stage2, identities=list(people.photos), face_prompts=list(people.face_prompts))
        return PortraitOutput(base, out.mask, out.image, out.boxes, params.seed, truncated, out.identity)

    def model_statistics(self, model: str) -> dict:
        """Triton's inference statistics for one model as a plain dict (both protocols)."""
        if self.protocol == "grpc":
            from google.protobuf.json_format import MessageToDict

            stats = MessageToDict(self.client.get_inference_statistics(model), preserving_proto_field_name=True)
        else:
            stats = self.client.get_inference_statistics(model)
        return stats["model_stats"][0]

    def close(self) -> None:
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(url: str, protocol: str = "grpc", timeout: float = 600.0) -> TritonClient:
    return TritonClient(url, protocol, timeout)
