"""The models' metrics never go through Triton's custom-metrics IPC (it crashes tritonserver under concurrent
requests, issue 20): they are prometheus_client multiprocess files, merged and served by portrait serve's metrics
endpoint beside Triton's own metrics, with the supervisor's restart counter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
import urllib.request
from pathlib import Path

from portrait.serving import metrics
from portrait.serving.server import MetricsEndpoint, free_port, rotate_log
from portrait.settings import PROJECT_ROOT

MODEL_CODE = [*PROJECT_ROOT.glob("model_repository/*/1/model.py"), *PROJECT_ROOT.glob("ensembles/*/1/model.py"),
              *(PROJECT_ROOT / "portrait").rglob("*.py")]


def test_no_model_uses_tritons_custom_metrics_api():
    users = [str(p.relative_to(PROJECT_ROOT)) for p in MODEL_CODE if re.search(r"=\s*\w+\.MetricFamily\b|MetricFamily\(",
                                                                                p.read_text())]
    assert users == []


WRITER = """
import os, sys
from portrait.serving import metrics
metrics.register("stage1")
start = metrics.started("stage1")
metrics.finished("stage1", "success", start)
metrics.finished("stage1", "invalid_arg")
if len(sys.argv) > 1:
    metrics.started("stage1")  # stays in flight: this process exits without finishing it
print(os.getpid())
"""


def write_in_a_model_process(directory: Path, *args: str) -> int:
    env = {**os.environ, metrics.MULTIPROC_ENV: str(directory), "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, "-c", WRITER, *args], env=env, capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def sample(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_endpoint_merges_processes_counts_restarts_and_drops_dead_gauges(tmp_path):
    directory = tmp_path / "metrics"

    class Server:  # what MetricsEndpoint reads of a TritonServer
        metrics_dir = directory
        settings = types.SimpleNamespace(host="127.0.0.1")
        metrics_port = free_port()
        restarts = 2

        def triton_metrics_text(self):
            return 'nv_inference_pending_request_count{model="stage1",version="1"} 0\n'

    endpoint = MetricsEndpoint(Server()).start()  # before the model processes, as in portrait serve
    first = write_in_a_model_process(directory)
    dead = write_in_a_model_process(directory, "leave-one-in-flight")
    try:
        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{Server.metrics_port}/metrics", timeout=5) as r:
                return r.read().decode()

        text = scrape()
        assert text.startswith("nv_inference_pending_request_count")  # Triton's own metrics come first
        assert sample(text, 'portrait_requests_total{model="stage1",outcome="success"}') == 2.0  # both processes
        assert sample(text, 'portrait_requests_total{model="stage1",outcome="invalid_arg"}') == 2.0
        for outcome in ("cancelled", "unavailable", "internal"):  # present at 0 from the start
            assert sample(text, f'portrait_requests_total{{model="stage1",outcome="{outcome}"}}') == 0.0
        assert sample(text, 'portrait_in_flight_requests{model="stage1"}') == 1.0
        assert sample(text, "portrait_server_restarts_total") == 2.0

        metrics.process_dead(directory, dead)  # what the supervisor does for a stub that is gone
        text = scrape()
        assert sample(text, 'portrait_in_flight_requests{model="stage1"}') == 0.0
        assert sample(text, 'portrait_requests_total{model="stage1",outcome="success"}') == 2.0  # counters stay
        assert first != dead
    finally:
        endpoint.stop()


def test_a_new_supervisor_keeps_counters_and_drops_old_live_gauges(tmp_path):
    directory = metrics.prepare_directory(tmp_path / "metrics")
    write_in_a_model_process(directory, "leave-one-in-flight")
    metrics.prepare_directory(directory)  # the next start: every earlier model process is gone
    text = metrics.exposition(directory)
    assert sample(text, 'portrait_requests_total{model="stage1",outcome="success"}') == 1.0
    assert sample(text, 'portrait_in_flight_requests{model="stage1"}') in (None, 0.0)


def test_triton_logs_are_rotated_not_truncated(tmp_path):
    log = tmp_path / "tritonserver-8001.log"
    for run in range(7):
        rotate_log(log, keep=5)
        log.write_text(f"run {run}\n")
    assert log.read_text() == "run 6\n"
    assert [log.with_name(f"{log.name}.{i}").read_text() for i in range(1, 6)] == [f"run {r}\n" for r in (5, 4, 3, 2, 1)]
    assert not log.with_name(f"{log.name}.6").exists()
