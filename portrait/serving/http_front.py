"""The validating front of the public HTTP port: no request from outside reaches a Triton code path that can abort.

Triton 2.51's HTTP front end parses the KServe v2 JSON itself and aborts the whole server on some inputs (issue 20):
a `shape` claiming 2^40 elements beside one datum (`std::bad_alloc`, signal 6), `data` nested 100,000 deep (stack
overflow), and it answers 500 to malformed JSON or wraps a JSON width of 4294967360 to 64 in an INT32. gRPC and the
binary extension do not have these paths. So `portrait serve` listens on PORTRAIT_HTTP_PORT with this front (uvicorn +
a small ASGI app, proxying with httpx) and Triton's own HTTP port is on 127.0.0.1 only.

What the front does with each route (docs/reliability.md, "The HTTP front"):
- `POST /v2/models/<m>[/versions/<v>]/infer`: the body is read with a cap (Content-Length first, then as it
  streams), decompressed with the same cap when gzip/deflate, its JSON part parsed strictly (UTF-8, no duplicate
  keys, no NaN, bounded nesting) and checked against the model's config fetched from Triton at start (names,
  datatypes, rank and fixed dims, batch, element counts against `data` or `binary_data_size` and the binary tail,
  every number in its datatype's range and of its type, no lone surrogates); then the same bytes go on to Triton.
  Refused: 400 (413 for sizes) with a JSON `{"error": "<input>: <what and the limit>"}` naming the input.
- `generate` / `generate_stream`: refused (404). Their JSON maps to inputs by another rule that would need its own
  validator, and no client of ours uses them: the decoupled models stream over gRPC.
- The restricted APIs (repository, shared memory, logging, trace): passed through only with the key header
  (X-Portrait-Key); without it 403 here, the body never read.
- Every other GET (health, metadata, config, stats) passes through; any other route or method: 404 / 405.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import struct
import sys
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass

logger = logging.getLogger("portrait.front")

ECHO_LIMIT = 200  # characters of a client's value (a name, a model) echoed in an error
MAX_DEPTH = 16  # JSON nesting: {"inputs": [{"data": [[[...]]]}]} needs 3 + the input's rank
MAX_ID_CHARS = 256
MAX_PARAMETER_CHARS = 4096
BODY_TIMEOUT = 60.0  # seconds to receive a body (a client that trickles it holds a connection, not the server)
INFER_ROUTE = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/(?P<action>infer|generate|generate_stream)$")
RESTRICTED_ROUTE = re.compile(r"^/v2/(repository|systemsharedmemory|cudasharedmemory|logging|trace)(/|$)"
                              r"|^/v2/models/[^/]+(/versions/[^/]+)?/trace(/|$)")
HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding",
               "inference-header-content-length", "upgrade", "te", "trailer", "proxy-connection"}

INT_RANGES = {f"INT{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)}
INT_RANGES.update({f"UINT{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)})
FLOAT_MAX = {"FP16": 65504.0, "BF16": 3.3895313892515355e38, "FP32": 3.4028234663852886e38, "FP64": sys.float_info.max}
ITEM_SIZE = {"BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "BF16": 2, "INT32": 4, "UINT32": 4,
             "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8}


def capped(value, limit: int = ECHO_LIMIT) -> str:
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class Refused(Exception):
    """A request the front answers itself: `status` and `{"error": message}`; the message names the field."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(f"{field}: {message}")
        self.status = status


@dataclass(frozen=True)
class TensorSpec:
    datatype: str  # the request's name for it: INT32, FP32, BYTES ...
    dims: tuple[int, ...]  # -1: any
    optional: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """What the front checks a request against: from the model's config as Triton serves it."""

    name: str
    inputs: dict[str, TensorSpec]
    outputs: tuple[str, ...]
    max_batch_size: int = 0

    @classmethod
    def from_config(cls, config: dict) -> ModelSpec:
        def spec(t: dict) -> TensorSpec:
            datatype = t.get("data_type", "TYPE_INVALID").removeprefix("TYPE_")
            return TensorSpec("BYTES" if datatype == "STRING" else datatype, tuple(int(d) for d in t.get("dims", [])),
                              bool(t.get("optional", False)))

        return cls(config["name"], {t["name"]: spec(t) for t in config.get("input", [])},
                   tuple(t["name"] for t in config.get("output", [])), int(config.get("max_batch_size", 0) or 0))


@dataclass(frozen=True)
class Limits:
    max_body: int = 64 * 2**20  # bytes of a whole body (binary tail included), after decompression
    max_json: int = 8 * 2**20  # bytes of its JSON part

    @property
    def max_elements(self) -> int:  # every element takes at least a byte of body
        return self.max_body


# --- the checks (pure: bytes in, the JSON part's length out) ----------------------------------------------------------

def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:  # Python keeps the last, Triton's parser the first: checked must be what Triton reads
            raise Refused("request", f"the key '{capped(key)}' appears twice in one JSON object")
        seen[key] = value
    return seen


def _no_constant(name):
    raise Refused("request", f"{name} is not JSON (numbers must be finite)")


def _depth_ok(value) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list) and not set(map(type, item)).isdisjoint((dict, list)):  # (a flat list: in C)
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return True


def _is_text(value) -> bool:
    """UTF-8 encodable (a lone surrogate from a \\ud800 escape is not)."""
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def parse_json(data: bytes):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Refused("request", f"the JSON is not UTF-8 (byte {error.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise Refused("request", f"the JSON nests deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as error:
        raise Refused("request", f"not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    except ValueError as error:  # an integer of more than 4300 digits
        raise Refused("request", f"not valid JSON ({capped(error, 80)})") from None
    if not _depth_ok(value):
        raise Refused("request", f"the JSON nests deeper than {MAX_DEPTH} levels")
    return value


def _check_scalar_parameters(field: str, parameters) -> dict:
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise Refused(field, "parameters must be a JSON object")
    for key, value in parameters.items():
        if len(key) > ECHO_LIMIT or not _is_text(key):
            raise Refused(field, f"parameter names must be UTF-8 text of at most {ECHO_LIMIT} characters")
        if isinstance(value, str):
            if len(value) > MAX_PARAMETER_CHARS or not _is_text(value):
                raise Refused(field, f"parameter '{key}' must be UTF-8 text of at most {MAX_PARAMETER_CHARS} characters")
        elif isinstance(value, bool):
            pass
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**64:
                raise Refused(field, f"parameter '{key}' must fit 64 bits, got {capped(value, 40)}")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise Refused(field, f"parameter '{key}' must be finite")
        else:
            raise Refused(field, f"parameter '{key}' must be a string, number or boolean")
    for key in ("priority", "timeout", "sequence_id"):
        value = parameters.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64) \
                and not (key == "sequence_id" and isinstance(value, str)):
            raise Refused(field, f"parameter '{key}' must be an unsigned 64-bit integer")
    for key in ("sequence_start", "sequence_end", "binary_data_output", "binary_data"):
        if key in parameters and not isinstance(parameters[key], bool):
            raise Refused(field, f"parameter '{key}' must be true or false")
    return parameters


def _element_check(name: str, datatype: str):
    """A function that says what is wrong with one `data` element of `datatype` (None: fine)."""
    if datatype == "BYTES":
        return lambda v: None if isinstance(v, str) and _is_text(v) else "must be UTF-8 strings (no lone surrogates)"
    if datatype == "BOOL":
        return lambda v: None if isinstance(v, bool) else "must be true or false"
    if datatype in INT_RANGES:
        lo, hi = INT_RANGES[datatype]

        def check_int(v):
            if isinstance(v, bool) or not isinstance(v, int):
                return f"must be integers ({datatype}), got {capped(json.dumps(v), 40)}"
            if not lo <= v <= hi:
                return f"must be in [{lo}, {hi}] ({datatype}), got {capped(v, 40)}"
            return None

        return check_int
    if datatype in FLOAT_MAX:
        top = FLOAT_MAX[datatype]

        def check_float(v):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return f"must be numbers ({datatype}), got {capped(json.dumps(v), 40)}"
            if (isinstance(v, float) and not math.isfinite(v)) or abs(v) > top:
                return f"must be finite and within the range of {datatype}, got {capped(v, 40)}"
            return None

        return check_float
    raise Refused(name, f"datatype {capped(datatype, 20)} is not supported")


def _check_data(name: str, datatype: str, data, count: int) -> None:
    """`data` (flat or nested as the shape) holds exactly `count` elements of `datatype`. The common case runs in C
    (type sets, min, max); the slow per-element check only finds the element to name."""
    flat = data if isinstance(data, list) else [data]  # Triton takes a lone scalar for a one-element tensor
    while list in set(map(type, flat)):  # nested: one level at a time (depth is bounded by parse_json)
        flat = [v for item in flat for v in (item if type(item) is list else (item,))]
        if len(flat) > count:
            break
    if len(flat) != count:
        if len(flat) > count:
            raise Refused(name, f"data holds more elements than its shape's {count}")
        raise Refused(name, f"data holds {len(flat)} elements, its shape {count}")
    kinds, fine = set(map(type, flat)), True
    if datatype == "BYTES":
        fine = kinds <= {str} and _is_text("".join(flat))
    elif datatype == "BOOL":
        fine = kinds <= {bool}
    elif datatype in INT_RANGES:
        lo, hi = INT_RANGES[datatype]
        fine = kinds <= {int} and (not flat or (lo <= min(flat) and max(flat) <= hi))
    elif datatype in FLOAT_MAX:  # (JSON has no NaN or infinity: parse_json refused them; an int is never one)
        fine = kinds <= {int, float} and (not flat or max(map(abs, flat)) <= FLOAT_MAX[datatype])
    if not fine:
        check = _element_check(name, datatype)
        problem = next(p for p in map(check, flat) if p)
        raise Refused(name, f"data {problem}")


def _check_bytes_tail(name: str, tail: memoryview, count: int) -> None:
    """A BYTES tensor in binary: `count` elements, each a 4-byte little-endian length and that many bytes."""
    offset = 0
    for _ in range(count):
        if offset + 4 > len(tail):
            raise Refused(name, f"binary_data_size {len(tail)} ends inside its elements (the shape holds {count})")
        (size,) = struct.unpack_from("<I", tail, offset)
        offset += 4 + size
        if offset > len(tail):
            raise Refused(name, f"binary_data_size {len(tail)} ends inside its elements (the shape holds {count})")
    if offset != len(tail):
        raise Refused(name, f"binary_data_size {len(tail)} holds more than the shape's {count} elements ({offset} bytes)")


def _check_shape(name: str, shape, spec: TensorSpec, model: ModelSpec, limits: Limits) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise Refused(name, "shape must be a list of integers")
    dims = ((-1,) if model.max_batch_size > 0 else ()) + spec.dims
    if len(shape) != len(dims):
        raise Refused(name, f"shape {capped(shape, 80)} has rank {len(shape)}, the model takes rank {len(dims)} "
                            f"({list(dims)}, -1: any)")
    count = 1
    for d, want in zip(shape, dims):
        if d < 0 or (want != -1 and d != want):
            raise Refused(name, f"shape {capped(shape, 80)} does not match the model's dims {list(dims)} (-1: any)")
        count *= d
        if count > limits.max_elements:
            raise Refused(name, f"shape {capped(shape, 80)} holds more than {limits.max_elements} elements")
    if model.max_batch_size > 0 and not 1 <= shape[0] <= model.max_batch_size:
        raise Refused(name, f"the batch (first dimension) must be in [1, {model.max_batch_size}], got {shape[0]}")
    return count


def check_infer_request(body: bytes, header_length: int | None, model: ModelSpec, limits: Limits,
                        trusted: bool = False) -> None:
    """Raise Refused unless `body` (JSON, or JSON + binary tail of `header_length` JSON bytes) is a request Triton
    parses safely for `model`. `trusted` (the API key was sent): shared-memory inputs allowed."""
    if header_length is None:
        header_length = len(body)
    if not 0 <= header_length <= len(body):
        raise Refused("Inference-Header-Content-Length", f"must be in [0, {len(body)}] (the body's size), got {header_length}")
    if header_length > limits.max_json:
        raise Refused("request", f"the JSON part must be at most {limits.max_json} bytes (PORTRAIT_HTTP_MAX_JSON), "
                                 f"got {header_length}; send tensors as binary data", 413)
    request = parse_json(body[:header_length])
    tail = memoryview(body)[header_length:]
    if not isinstance(request, dict):
        raise Refused("request", "must be a JSON object")
    unknown = set(request) - {"id", "parameters", "inputs", "outputs"}
    if unknown:
        raise Refused("request", f"unknown key '{capped(sorted(unknown)[0])}' (a request has id, parameters, inputs, outputs)")
    if "id" in request and not (isinstance(request["id"], str) and len(request["id"]) <= MAX_ID_CHARS and _is_text(request["id"])):
        raise Refused("id", f"must be UTF-8 text of at most {MAX_ID_CHARS} characters")
    _check_scalar_parameters("parameters", request.get("parameters"))
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise Refused("inputs", "must be a non-empty list of input objects")
    offset, names = 0, set()
    for tensor in inputs:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise Refused("inputs", "each input must be an object with a name")
        name = tensor["name"]
        field = capped(name) if _is_text(name) else "inputs"
        spec = model.inputs.get(name)
        if spec is None:
            raise Refused(field, f"is not an input of model '{model.name}' (it takes {', '.join(model.inputs)})")
        if name in names:
            raise Refused(name, "is given twice")
        names.add(name)
        extra = set(tensor) - {"name", "shape", "datatype", "parameters", "data"}
        if extra:
            raise Refused(name, f"unknown key '{capped(sorted(extra)[0])}' (an input has name, shape, datatype, parameters, data)")
        datatype = tensor.get("datatype")
        if datatype != spec.datatype:
            raise Refused(name, f"data-type is '{capped(datatype, 20)}', but model '{model.name}' expects '{spec.datatype}'")
        count = _check_shape(name, tensor.get("shape"), spec, model, limits)
        parameters = _check_scalar_parameters(name, tensor.get("parameters"))
        shm = [k for k in parameters if k.startswith("shared_memory")]
        has_binary = "binary_data_size" in parameters
        if sum(map(bool, (shm, has_binary, "data" in tensor))) != 1:
            raise Refused(name, "needs exactly one of data, binary_data_size or shared memory")
        if shm:
            if not trusted:
                raise Refused(name, "shared-memory inputs need the API key (X-Portrait-Key)", 403)
            continue
        if "data" in tensor:
            _check_data(name, datatype, tensor["data"], count)
            continue
        size = parameters["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise Refused(name, f"binary_data_size must be a non-negative integer, got {capped(size, 40)}")
        if offset + size > len(tail):
            raise Refused(name, f"binary_data_size {size} runs past the {len(tail)} bytes after the JSON "
                                f"(Inference-Header-Content-Length)")
        if datatype == "BYTES":
            _check_bytes_tail(name, tail[offset:offset + size], count)
        elif size != count * ITEM_SIZE[datatype]:
            raise Refused(name, f"binary_data_size must be {count * ITEM_SIZE[datatype]} ({count} x {datatype}), got {size}")
        offset += size
    if offset != len(tail):
        raise Refused("request", f"{len(tail)} bytes follow the JSON, but the inputs' binary_data_size add up to {offset}")
    missing = [n for n, s in model.inputs.items() if not s.optional and n not in names]
    if missing:
        raise Refused(missing[0], f"is required (model '{model.name}')")
    outputs = request.get("outputs", [])
    if not isinstance(outputs, list):
        raise Refused("outputs", "must be a list of output objects")
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str) or set(output) - {"name", "parameters"}:
            raise Refused("outputs", "each output must be an object with a name (and parameters)")
        if output["name"] not in model.outputs:
            raise Refused("outputs", f"'{capped(output['name'])}' is not an output of model '{model.name}' "
                                     f"(it has {', '.join(model.outputs)})")
        parameters = _check_scalar_parameters(output["name"], output.get("parameters"))
        if any(k.startswith("shared_memory") for k in parameters) and not trusted:
            raise Refused(output["name"], "shared-memory outputs need the API key (X-Portrait-Key)", 403)
        classes = parameters.get("classification")
        if classes is not None and not (isinstance(classes, int) and not isinstance(classes, bool) and 0 <= classes <= 1000):
            raise Refused(output["name"], "classification must be an integer in [0, 1000]")


# --- reading a body with limits -------------------------------------------------------------------------------------

async def read_body(receive_chunks, headers: dict[str, str], limits: Limits) -> bytes:
    """The body, refused (413) as soon as it passes the cap: a 300 MB upload is never held. gzip / deflate bodies
    (Triton accepts them) are inflated here with the same cap, so no compressed bomb reaches Triton."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refused("Content-Length", "must be a non-negative integer")
        if int(declared) > limits.max_body:
            raise Refused("request", f"the body must be at most {limits.max_body} bytes (PORTRAIT_HTTP_MAX_BODY), "
                                     f"Content-Length says {declared}", 413)
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise Refused("Content-Encoding", f"must be gzip, deflate or identity, got {capped(encoding, 40)}", 415)
    inflate = None if encoding == "identity" else zlib.decompressobj(wbits=47)  # 47: zlib or gzip header
    parts, size = [], 0
    async for chunk in receive_chunks:
        if inflate is not None:
            chunk = inflate.decompress(chunk, limits.max_body + 1 - size)
            if inflate.unconsumed_tail:  # it inflates past the cap
                raise Refused("request", f"the body must be at most {limits.max_body} bytes (PORTRAIT_HTTP_MAX_BODY) "
                                         "once inflated", 413)
        size += len(chunk)
        if size > limits.max_body:
            raise Refused("request", f"the body must be at most {limits.max_body} bytes (PORTRAIT_HTTP_MAX_BODY)", 413)
        parts.append(chunk)
    if inflate is not None and not inflate.eof:
        raise Refused("Content-Encoding", f"the {encoding} body is truncated")
    return b"".join(parts)


# --- the ASGI app ---------------------------------------------------------------------------------------------------

def fetch_model_specs(triton_url: str, api_key: str, timeout: float = 10.0) -> dict[str, ModelSpec]:
    """Every ready model's config from Triton (the repository index needs the key)."""
    index = urllib.request.Request(f"http://{triton_url}/v2/repository/index", data=b"{}", method="POST",
                                   headers={"X-Portrait-Key": api_key, "Content-Type": "application/json"})
    with urllib.request.urlopen(index, timeout=timeout) as r:
        models = [m["name"] for m in json.load(r) if m.get("state") == "READY"]
    specs = {}
    for name in models:
        with urllib.request.urlopen(f"http://{triton_url}/v2/models/{name}/config", timeout=timeout) as r:
            specs[name] = ModelSpec.from_config(json.load(r))
    return specs


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


class FrontApp:
    """The ASGI app: checks, then proxies to Triton's HTTP port on 127.0.0.1 (httpx, streamed both ways)."""

    def __init__(self, upstream: str, api_key: str, models: dict[str, ModelSpec], limits: Limits):
        self.upstream, self.api_key, self.models, self.limits = upstream, api_key, models, limits
        self.client = None
        self.checking = None  # bounds the threads parsing big JSON at once (memory)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.lifespan(receive, send)
        if scope["type"] != "http":
            return
        from starlette.requests import Request

        request = Request(scope, receive)
        try:
            response = await self.handle(request)
        except Refused as refused:
            response = self.refusal(refused)
        except Exception as error:  # noqa: BLE001 (an answer, never a traceback, for whatever went wrong here)
            logger.error("internal error in the HTTP front", exc_info=error)
            from starlette.responses import Response

            response = Response(error_body(f"internal error in the HTTP front ({type(error).__name__}); see the "
                                           "server log"), 500, media_type="application/json")
        await response(scope, receive, send)

    async def lifespan(self, receive, send):
        import httpx

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # trust_env=False: a proxy set in the environment must not see the traffic
                self.client = httpx.AsyncClient(base_url=f"http://{self.upstream}", trust_env=False,
                                                timeout=httpx.Timeout(None, connect=10.0),
                                                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
                self.checking = asyncio.Semaphore(4)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def refusal(self, refused: Refused):
        from starlette.responses import Response

        headers = {"Connection": "close"} if refused.status in (408, 413) else None  # the rest of the body is not read
        return Response(error_body(str(refused)), refused.status, headers=headers, media_type="application/json")

    def has_key(self, request) -> bool:
        given = request.headers.get("x-portrait-key", "")
        return bool(self.api_key) and hmac.compare_digest(given.encode(), self.api_key.encode())

    async def handle(self, request):
        path, method = request.url.path, request.method
        if RESTRICTED_ROUTE.match(path):
            if not self.has_key(request):
                raise Refused("request", "This API is restricted, expecting header 'X-Portrait-Key'", 403)
            return await self.forward(request, await self.body(request) if method == "POST" else None)
        route = INFER_ROUTE.match(path)
        if route and method == "POST":
            model = self.models.get(route["model"])
            if route["action"] != "infer":
                raise Refused("request", f"{route['action']} is not served on this port; use /infer, or gRPC for "
                                         "streaming (docs/reliability.md)", 404)
            if model is None:
                raise Refused("request", f"model '{capped(route['model'])}' is not served here", 404)
            body = await self.body(request)
            header = request.headers.get("inference-header-content-length")
            if header is not None and not header.strip().isdigit():
                raise Refused("Inference-Header-Content-Length", f"must be a non-negative integer, got {capped(header, 40)}")
            length = None if header is None else int(header)
            if len(body) > 256 * 1024:  # a big JSON takes a while to parse: off the event loop, a few at a time
                async with self.checking:
                    await asyncio.to_thread(check_infer_request, body, length, model, self.limits, self.has_key(request))
            else:
                check_infer_request(body, length, model, self.limits, self.has_key(request))
            return await self.forward(request, body, length)
        if method in ("GET", "HEAD") and path.startswith("/v2"):
            return await self.forward(request, None)
        raise Refused("request", f"{method} {capped(path, 80)} is not served on this port", 404 if method in ("GET", "POST") else 405)

    async def body(self, request) -> bytes:
        try:
            return await asyncio.wait_for(read_body(request.stream(), request.headers, self.limits), BODY_TIMEOUT)
        except TimeoutError:
            raise Refused("request", f"the body did not arrive within {BODY_TIMEOUT:g} s", 408) from None

    async def forward(self, request, body: bytes | None, header_length: int | None = None):
        import httpx
        from starlette.background import BackgroundTask
        from starlette.responses import Response, StreamingResponse

        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_HEADERS]
        if header_length is not None:
            headers.append(("Inference-Header-Content-Length", str(header_length)))
        url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        outgoing = self.client.build_request(request.method, url, headers=headers, content=body)
        try:
            upstream = await self.client.send(outgoing, stream=True)
        except httpx.HTTPError as error:
            logger.warning("Triton did not answer %s %s: %s", request.method, capped(request.url.path, 80),
                           type(error).__name__)
            return Response(error_body("service unavailable (the inference server is restarting or unreachable); "
                                       "retry"), 503, media_type="application/json")
        kept = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS - {"content-length",
                                                                                              "content-encoding",
                                                                                              "inference-header-content-length"}}
        return StreamingResponse(self.relay(upstream), upstream.status_code, headers=kept,
                                 background=BackgroundTask(upstream.aclose))

    async def relay(self, upstream):
        import httpx

        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as error:  # Triton went away mid-answer: the client's connection is cut, as before
            logger.warning("Triton's answer broke off: %s", type(error).__name__)
            raise


class HttpFront:
    """The front on host:port in a thread of this process (uvicorn, h11 with bounded headers)."""

    def __init__(self, host: str, port: int, upstream: str, api_key: str, models: dict[str, ModelSpec],
                 limits: Limits):
        self.host, self.port = host, port
        self.app = FrontApp(upstream, api_key, models, limits)
        self.server = None
        self.thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> HttpFront:
        import uvicorn

        from portrait.errors import ServerError

        config = uvicorn.Config(self.app, host=self.host, port=self.port, http="h11", lifespan="on",
                                log_level="warning", access_log=False, timeout_keep_alive=30,
                                timeout_graceful_shutdown=5, h11_max_incomplete_event_size=64 * 1024,
                                limit_concurrency=1024, server_header=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="http-front")
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"the HTTP front could not listen on {self.host}:{self.port} (in use?)")
            time.sleep(0.02)
        return self

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(15)
        self.server = self.thread = None
