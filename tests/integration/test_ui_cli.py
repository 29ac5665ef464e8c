"""`portrait ui` as an operator runs it: with no server at PORTRAIT_URL it starts an embedded Triton, and SIGTERM
stops Streamlit and that Triton within the grace period it documents, leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from portrait.app.cli import UI_GRACE_PERIOD
from portrait.serving.server import free_port, port_open


def descendants(pid: int) -> set[int]:
    """Every process below pid (children, their children ...), from /proc."""
    parent_of = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent_of[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_ui_and_embedded_server_within_the_grace_period(models_dir, tmp_path):
    port, nobody = free_port(), free_port()
    env = {**os.environ, "PORTRAIT_URL": f"127.0.0.1:{nobody}", "PORTRAIT_STORE": str(tmp_path / "store")}
    log = tmp_path / "ui.log"
    with open(log, "wb") as out:
        ui = subprocess.Popen([sys.executable, "-m", "portrait.app.cli", "ui", "--port", str(port)], env=env,
                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600  # the embedded server loads the tiny set first
        while not port_open("127.0.0.1", port):
            assert ui.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        below = descendants(ui.pid)
        assert len(below) >= 2, below  # streamlit and tritonserver (with its stubs)
        started = time.monotonic()
        ui.send_signal(signal.SIGTERM)
        code = ui.wait(UI_GRACE_PERIOD + 5)  # a little slack for a loaded machine's scheduling
        took = time.monotonic() - started
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
    assert code == 0, log.read_text()[-3000:]
    assert took <= UI_GRACE_PERIOD + 1, f"exited {took:.1f} s after SIGTERM; the grace period is {UI_GRACE_PERIOD} s"
    time.sleep(1)
    assert not [pid for pid in below if alive(pid)], "processes left behind after portrait ui exited"
