"""Tracing: with PORTRAIT_OTEL_ENDPOINT set, Triton's OpenTelemetry mode exports OTLP/HTTP, and one request to a BLS
model yields one trace whose spans include the child requests it made (BLS requests carry request.trace())."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from portrait.settings import get_settings


def spans_of(export_request: bytes) -> list[dict]:
    """The spans of an OTLP/HTTP ExportTraceServiceRequest in its JSON encoding (what Triton's exporter sends):
    resourceSpans -> scopeSpans -> spans, each with traceId, spanId, parentSpanId (absent or "" for a root), name."""
    found = []
    for resource in json.loads(export_request).get("resourceSpans", []):
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                found.append({"trace_id": span["traceId"], "span_id": span["spanId"],
                              "parent_span_id": span.get("parentSpanId", ""), "name": span["name"]})
    return found


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: POST /v1/traces."""

    def __init__(self):
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/traces":
                    receiver.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/v1/traces"

    def spans(self) -> list[dict]:
        return [s for body in list(self.bodies) for s in spans_of(body)]


def test_reader_reads_a_span():
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "ab" * 16, "spanId": "01" * 8, "parentSpanId": "02" * 8, "name": "denoise"},
        {"traceId": "ab" * 16, "spanId": "02" * 8, "name": "stage1"}]}]}]}).encode()
    assert spans_of(body) == [
        {"trace_id": "ab" * 16, "span_id": "01" * 8, "parent_span_id": "02" * 8, "name": "denoise"},
        {"trace_id": "ab" * 16, "span_id": "02" * 8, "parent_span_id": "", "name": "stage1"}]


def test_trace_flags_only_when_an_endpoint_is_set():
    from portrait.serving.server import trace_flags

    settings = get_settings()
    assert trace_flags(dataclasses.replace(settings, otel_endpoint=None)) == []
    flags = trace_flags(dataclasses.replace(settings, otel_endpoint="http://collector:4318/v1/traces", otel_rate=10))
    assert "--trace-config=mode=opentelemetry" in flags
    assert "--trace-config=opentelemetry,url=http://collector:4318/v1/traces" in flags
    assert "--trace-config=rate=10" in flags


@pytest.fixture(scope="module")
def traced_server(models_dir):
    from portrait.serving.server import TritonServer

    receiver = Receiver()
    settings = dataclasses.replace(get_settings(), otel_endpoint=receiver.url, otel_rate=1)
    server = TritonServer.create(settings, free_ports=True).start(timeout=900)  # a loaded shared machine starts slowly
    try:
        yield server, receiver
    finally:
        server.stop()
        receiver.http.shutdown()


def test_one_request_is_one_trace_with_bls_children(traced_server):
    from clients import connect
    from portrait.params import Stage1Params

    server, receiver = traced_server
    with connect(server.grpc_url, "grpc") as client:
        client.stage1(Stage1Params(prompt="a portrait, oil painting", width=64, height=64, steps=2, seed=1))
    children = {"text_encoder", "denoise", "vae_decoder"}
    deadline = time.monotonic() + 30  # the exporter batches spans and sends them a few seconds later
    while time.monotonic() < deadline and not children <= {s["name"] for s in receiver.spans()}:
        time.sleep(0.5)
    spans = receiver.spans()
    (Path(get_settings().cache_dir) / "test_infra_tracing_spans.json").write_text(json.dumps(spans, indent=1))
    listing = [(s["name"], s["span_id"], s["parent_span_id"]) for s in spans]
    assert len({s["trace_id"] for s in spans}) == 1, listing  # one request, one trace
    roots = [s for s in spans if not s["parent_span_id"]]
    assert len(roots) == 1, listing  # the frontend's request span
    ids = {s["span_id"] for s in spans}
    assert all(s["parent_span_id"] in ids for s in spans if s is not roots[0]), listing
    stage1 = [s for s in spans if s["name"] == "stage1"]
    assert len(stage1) == 1, listing
    # the BLS children of stage1 (text encoding, the scheduler's loop, the VAE decode) hang under its span
    assert children <= {s["name"] for s in spans if s["parent_span_id"] == stage1[0]["span_id"]}, listing
