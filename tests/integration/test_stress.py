"""The CI-sized stress run (issue 20): concurrent portrait streams and face_detailer calls, a tenth of the streams
cancelled by their client, and the HTTP inputs that used to abort tritonserver sent in between, against `portrait
serve` exactly as an operator runs it. No good request may fail and the server may not restart. The full run is
`make stress` (12 streams x 3000 requests); docs/reliability.md has its figures."""

from __future__ import annotations

import json
import subprocess
import sys

from portrait.settings import PROJECT_ROOT


def test_concurrent_streams_with_cancellations_and_crash_inputs(tmp_path, models_dir):
    report = tmp_path / "stress.json"
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "stress"), "--clients", "8", "--requests", "80",
                           "--cancel", "0.1", "--crash-inputs-every", "20", "--json", str(report),
                           "--log", str(tmp_path / "serve.log")],
                          capture_output=True, text=True, timeout=1200)
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["failed"] == 0, result["failures"]
    assert result["server_restarts"] == 0
    assert result["crash_inputs_other"] == [] and result["crash_inputs_refused"] >= 3
    assert result["ok"] + result["cancelled"] == 80 and result["cancelled"] > 0
    assert done.returncode == 0, done.stdout[-2000:]
