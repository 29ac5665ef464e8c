"""The `portrait` command line as a user runs it."""

import os
import signal
import subprocess
import time

import numpy as np
from PIL import Image

from portrait.serving.server import free_port
from tests.helpers import PORTRAIT_CLI, TOLERANCE, max_diff, package_file, run_cli


def test_generate_uses_the_running_server(server, tmp_path):
    out = tmp_path / "base.png"
    done = run_cli(["generate", "--prompt", "portrait of a woman", "--seed", "3", "--width", "128", "--height", "96",
                   "--batch-size", "2", "--out", str(out)], env={"PORTRAIT_URL": server.grpc_url})
    assert done.returncode == 0, done.stderr
    assert "starting an embedded" not in done.stderr
    assert str(out) in done.stdout and "seed 3" in done.stdout and "seed 4" in done.stdout
    assert np.array(Image.open(out)).shape == (96, 128, 3)
    assert (tmp_path / "base_1.png").exists()


def test_generate_over_http(server, tmp_path):
    """HTTP has no streaming, so the CLI sends stage1 then face_detailer as two requests where gRPC streams the
    `portrait` model: the same arguments and seed give the same base, mask and final image (within TOLERANCE: rows
    batched together in the shared UNet may differ by a level)."""
    args = ["generate", "--prompt", "a portrait", "--width", "96", "--height", "64", "--steps", "2", "--seed", "5"]
    outs = {"http": tmp_path / "http.png", "grpc": tmp_path / "grpc.png"}
    for protocol, out in outs.items():
        url = server.http_url if protocol == "http" else server.grpc_url
        done = run_cli(args + ["--protocol", protocol, "--url", url, "--out", str(out)])
        assert done.returncode == 0, done.stderr
        assert "starting an embedded" not in done.stderr and f"{out}  (seed 5)" in done.stdout
    for suffix, shape in (("", (64, 96, 3)), ("_base", (64, 96, 3)), ("_mask", (64, 96))):
        http, grpc = (np.array(Image.open(out.with_name(f"{out.stem}{suffix}.png"))) for out in outs.values())
        assert http.shape == grpc.shape == shape, (suffix, http.shape, grpc.shape)
        assert max_diff(http, grpc) <= TOLERANCE, suffix
    assert np.array(Image.open(tmp_path / "http_base.png")).std() > 0  # a generated picture, not a blank one


def test_bad_arguments_give_one_line_errors(server, tmp_path):
    done = run_cli(["generate", "--prompt", "x", "--width", "100", "--out", str(tmp_path / "x.png")],
                   env={"PORTRAIT_URL": server.grpc_url})
    assert done.returncode == 2
    assert done.stderr.strip() == "error: width: must be a multiple of 8 in [64, 2048], got 100"


def test_generate_starts_an_embedded_server_when_none_answers(models_dir, tmp_path):
    out = tmp_path / "embedded.png"
    done = run_cli(["generate", "--prompt", "a portrait", "--width", "64", "--height", "64", "--steps", "2",
                   "--out", str(out)], env={"PORTRAIT_URL": f"localhost:{free_port()}"})
    assert done.returncode == 0, done.stderr
    assert "starting an embedded one" in done.stderr and out.exists()


def test_serve_prints_endpoints_and_stops_cleanly_on_sigint(models_dir):
    ports = {f"PORTRAIT_{k}_PORT": str(free_port()) for k in ("HTTP", "GRPC", "METRICS", "HEALTH")}
    proc = subprocess.Popen(PORTRAIT_CLI + ["serve"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **ports})
    try:
        first = proc.stdout.readline()
        assert f"gRPC 127.0.0.1:{ports['PORTRAIT_GRPC_PORT']}" in first, first
        from clients import connect

        assert connect(f"localhost:{ports['PORTRAIT_GRPC_PORT']}").is_ready()
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)  # a second signal at once (Ctrl-C plus a supervisor's TERM) must not hang it
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stdout.read()
        time.sleep(1)
        assert not connect(f"localhost:{ports['PORTRAIT_GRPC_PORT']}").is_ready()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_help_lists_the_commands():
    done = run_cli(["--help"])
    for command in ("serve", "generate", "detail", "sweep", "ui", "weights", "prompt"):
        assert command in done.stdout


def test_generate_from_an_idea_runs_the_agent_then_generation(server, tmp_path):
    out = tmp_path / "idea.png"
    done = run_cli(["generate", "--idea", "ocean calm", "--width", "64", "--height", "64", "--steps", "2", "--out", str(out)],
                   env={"PORTRAIT_URL": server.grpc_url, "PORTRAIT_PROMPT_CACHE_DIR": "off"})
    assert done.returncode == 0, done.stderr
    assert "prompt: portrait of" in done.stderr and "negative prompt: lowres" in done.stderr
    assert out.exists()
    bad = run_cli(["generate", "--idea", "", "--out", str(out)], env={"PORTRAIT_URL": server.grpc_url})
    assert bad.returncode == 2 and bad.stderr.startswith("error: idea:")


def test_detail_writes_the_image_and_its_mask(server, tmp_path):
    source = tmp_path / "astronaut.png"
    Image.fromarray(package_file("skimage", "data/astronaut.png")).resize((256, 256)).save(source)
    out = tmp_path / "detailed.png"
    done = run_cli(["detail", "--image", str(source), "--prompt", "portrait photo", "--steps", "4", "--work-size", "128",
                   "--out", str(out)], env={"PORTRAIT_URL": server.grpc_url})
    assert done.returncode == 0, done.stderr
    assert "1 face(s) detailed" in done.stderr
    assert np.array(Image.open(out)).shape == (256, 256, 3)
    assert np.array(Image.open(tmp_path / "detailed_mask.png")).max() == 255
    missing = run_cli(["detail", "--image", str(tmp_path / "nope.png"), "--prompt", "x"], env={"PORTRAIT_URL": server.grpc_url})
    assert missing.returncode == 2 and missing.stderr.startswith("error: image: cannot be read")


def test_stopping_a_server_leaves_no_process_behind(models_dir):
    from portrait.serving.server import TritonServer

    server = TritonServer.create(free_ports=True).start()
    group = server.process.pid
    server.stop()
    left = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes left in the server's group: {left}"


def test_ui_serves_the_app_and_stops_on_signals(server):
    """`portrait ui` against a running server: the app answers, and two quick signals stop it and its Streamlit."""
    import urllib.request

    port = free_port()
    proc = subprocess.Popen(PORTRAIT_CLI + ["ui", "--port", str(port), "--url", server.grpc_url], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert f"portrait UI on http://localhost:{port}" in proc.stdout.readline()
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and status is None:
            try:
                status = urllib.request.urlopen(f"http://localhost:{port}/", timeout=2).status
            except OSError:
                time.sleep(0.5)
        assert status == 200
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        left = subprocess.run(["pgrep", "-f", f"server.port {port}"], capture_output=True, text=True).stdout.split()
        assert left == [], f"streamlit still running: {left}"
        assert server.process.poll() is None  # a server it did not start is left alone
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
