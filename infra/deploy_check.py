"""The live part of `make deploy-check`: the image under podman, a real Prometheus scraping it, SIGTERM.

1. Runs the image as the cluster would (--read-only root, tmpfs /cache and /tmp, a memory /dev/shm, uid 1000, ports
   published on 127.0.0.1 only) and waits for the supervisor's /v2/health/ready.
2. Checks uid 1000, that the root filesystem refuses writes, the image's HEALTHCHECK (`podman healthcheck run`), the
   second model repository (ensembles/) in the image, and the restricted APIs: 403 with the server's message without
   the key, 200 with it.
3. Starts Debian's Prometheus (loopback) with infra/prometheus/prometheus.yml, its Kubernetes discovery replaced by
   a static target carrying the pod labels Kubernetes discovery would give (so the relabelling runs for real), the
   recording rules and the alert rules.
4. A bounded load (a fixed number of stage1 requests, two at a time, and one `portrait generate` through the
   published gRPC port, whose PNG is checked for content), then asks Prometheus for the recorded series and the
   alert rules' state: every rule evaluated without error, none firing on a healthy server.
5. SIGTERM (podman stop) with a request in flight: the request is answered, the container exits 0 after draining,
   and Prometheus then sees the target down (PortraitTargetDown pending).

Usage: .venv/bin/python infra/deploy_check.py [--image localhost/portrait:cpu] [--requests 6]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PORTS = {"http": 18000, "grpc": 18001, "metrics": 18002, "health": 18003}
PROMETHEUS_PORT = 19090
NAME = "portrait-deploy-check"
# podman settings for this kind of host (runc, cgroupfs, no ulimits), as the Makefile exports them
os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "infra/podman/containers.conf"))


def say(message: str) -> None:
    print(f"[deploy-check] {message}", flush=True)


def podman(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], check=check, text=True, capture_output=capture)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def http_post(url: str, payload: dict, headers: dict | None = None, timeout: float = 5.0) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def wait_for(what: str, probe, timeout: float, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(every)
    raise SystemExit(f"[deploy-check] FAILED: {what} not within {timeout:.0f} s")


def run_container(image: str, grace: int, log: Path) -> subprocess.Popen:
    """`podman run` attached (its exit status is the container's; its output, the supervisor's, goes to `log`)."""
    podman("rm", "-f", NAME, check=False)
    publish = [a for name, port in PORTS.items() for a in ("-p", f"127.0.0.1:{port}:{8000 + list(PORTS).index(name)}")]
    process = subprocess.Popen(
        ["podman", "run", "--name", NAME, "--read-only", "--tmpfs", "/tmp:rw,mode=1777",
         "--tmpfs", "/cache:rw,mode=1777,size=2g", "--shm-size", "1g",
         "-e", "PORTRAIT_API_KEY=deploy-check-key", "-e", f"PORTRAIT_GRACE_PERIOD={grace}", *publish, image],
        stdout=open(log, "w"), stderr=subprocess.STDOUT)
    say(f"started {image} as {NAME} (output: {log}); waiting for /v2/health/ready")

    def ready():
        if process.poll() is not None:
            raise SystemExit(f"[deploy-check] FAILED: the container exited {process.returncode}:\n{log.read_text()[-4000:]}")
        return http_get(f"http://127.0.0.1:{PORTS['health']}/v2/health/ready")[0] == 200

    wait_for("the container's readiness", ready, timeout=900, every=3)
    say("ready: " + http_get(f"http://127.0.0.1:{PORTS['health']}/v2/health/ready")[1])
    return process


def check_container() -> None:
    uid = podman("exec", NAME, "id", "-u").stdout.strip()
    assert uid == "1000", f"runs as uid {uid}"
    write = podman("exec", NAME, "sh", "-c", "touch /opt/portrait/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write
    health = podman("healthcheck", "run", NAME, check=False)
    assert health.returncode == 0, f"HEALTHCHECK: {health.stdout} {health.stderr}"
    # before any request: every outcome's counter exists at 0 from load, so rate() sees a first failure
    metrics = http_get(f"http://127.0.0.1:{PORTS['metrics']}/metrics")[1]
    outcomes = set(re.findall(r'portrait_requests_total\{[^}]*model="stage1"[^}]*outcome="(\w+)"', metrics))
    if outcomes != {"success", "invalid_arg", "cancelled", "unavailable", "internal"}:
        say(f"WARNING: before the first request stage1 exports outcomes {sorted(outcomes)}: "
            "portrait.serving.metrics.register is not called at load (triton_io.setup)")
    ensembles = podman("exec", NAME, "test", "-f", "/opt/portrait/ensembles/portrait/config.pbtxt", check=False)
    assert ensembles.returncode == 0, "the image lacks ensembles/portrait (the second model repository)"
    index = f"http://127.0.0.1:{PORTS['http']}/v2/repository/index"
    status, body = http_post(index, {})
    assert status == 403 and "X-Portrait-Key" in body, f"the repository API without the key: {status} {body}"
    keyed = http_post(index, {}, {"X-Portrait-Key": "deploy-check-key"})
    assert keyed[0] == 200 and "portrait" in keyed[1], f"the repository API with the key: {keyed}"
    say(f"uid {uid}; root filesystem read-only; HEALTHCHECK healthy; ensembles/ present; repository API 403 without "
        f"the key ({body.strip()[:80]}), 200 with it")


def prometheus_config(directory: Path) -> Path:
    """infra/prometheus/prometheus.yml with Kubernetes discovery swapped for a static target carrying the meta labels
    that discovery would attach to the pod (Debian's Prometheus is built without Kubernetes discovery)."""
    config = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "portrait")
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{PORTS['metrics']}"], "labels": {
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
        "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "portrait",
        "__meta_kubernetes_pod_label_track": "canary",
        "__meta_kubernetes_pod_container_port_name": "metrics",
        "__meta_kubernetes_pod_name": "portrait-check-0",
        "__meta_kubernetes_namespace": "portrait",
        "__meta_kubernetes_pod_node_name": "localhost"}}]
    config["global"] = {"scrape_interval": "2s", "evaluation_interval": "2s"}
    (directory / "rules").mkdir()
    for group_file in (ROOT / "infra/prometheus/rules").glob("*.yml"):
        shutil.copy(group_file, directory / "rules" / group_file.name)
    rules = yaml.safe_load((directory / "rules/portrait.rules.yml").read_text())
    for group in rules["groups"]:
        group["interval"] = "2s"  # the recorded series appear within seconds of the load
    (directory / "rules/portrait.rules.yml").write_text(yaml.safe_dump(rules))
    config["rule_files"] = [str(directory / "rules" / "*.yml")]
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run(["promtool", "check", "config", str(path)], check=True)
    return path


def query(expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = http_get(url)
    assert status == 200, (status, body)
    return json.loads(body)["data"]["result"]


def stage1(seed: int, steps: int = 4, size: int = 128):
    sys.path.insert(0, str(ROOT))
    from clients import connect
    from portrait.params import Stage1Params

    with connect(f"127.0.0.1:{PORTS['grpc']}", "grpc") as client:
        return client.stage1(Stage1Params(prompt="portrait of a woman, oil painting", width=size, height=size,
                                          steps=steps, seed=seed)).images


def warm_up() -> None:
    """One request, then wait until Prometheus holds the counters it created: a rate needs a sample before the
    load (the models create their metric series on first use)."""
    stage1(100)
    wait_for("the request counters in Prometheus", lambda: query('portrait_requests_total{model="stage1"}'), 60)
    time.sleep(5)  # two more scrapes at 2 s


def load(requests: int, out: Path) -> None:
    one = stage1
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, range(requests)))
    assert len(results) == requests and all(r.shape[-1] == 3 for r in results)
    say(f"{requests} stage1 requests answered")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [str(ROOT / ".venv/bin/portrait"), "generate", "--url", f"127.0.0.1:{PORTS['grpc']}",
               "--prompt", "portrait of a woman, oil painting, warm light", "--seed", "7", "--width", "128",
               "--height", "128", "--steps", "4", "--out", str(out)]
    subprocess.run(command, check=True, timeout=600)
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert pixels.shape[:2] == (128, 128) and pixels.std() > 1.0, f"{out}: {pixels.shape}, std {pixels.std()}"
    say(f"portrait generate through the container's gRPC port wrote {out} ({pixels.shape[1]}x{pixels.shape[0]}, "
        f"pixel std {pixels.std():.1f})")


def check_prometheus() -> None:
    def scraped():
        return query('up{job="portrait"} == 1')

    up = wait_for("Prometheus scraping the container", scraped, timeout=60)
    labels = up[0]["metric"]
    assert labels.get("track") == "canary" and labels.get("pod") == "portrait-check-0", labels  # relabelled
    time.sleep(8)  # a few scrape and rule evaluations after the load
    expected = {
        "portrait:queue_pressure:ratio_rate1m": {"pod": "portrait-check-0", "track": "canary", "namespace": "portrait"},
        "portrait:requests:rate5m": {"track": "canary", "model": "stage1", "outcome": "success"},
        "portrait:error_ratio:rate5m": {"track": "canary"},
        "portrait:request_duration_seconds:p95_5m": {"track": "canary", "model": "stage1"},
        "portrait:scheduler_steps:rate1m": {"pod": "portrait-check-0", "track": "canary"},
    }
    if query("portrait_scheduler_backlog"):
        expected["portrait:scheduler_backlog:max"] = {"pod": "portrait-check-0", "track": "canary"}
    else:
        say("WARNING: the server exports no portrait_scheduler_backlog yet: its recording rule cannot be checked")
    for record, want in expected.items():
        series = [s for s in query(record) if all(s["metric"].get(k) == v for k, v in want.items())]
        assert series, f"{record}{want}: no series (got {query(record)})"
        say(f"{record}{want} = {series[0]['value'][1]}")
    requests = float(query('sum(portrait:requests:rate5m{model="stage1", outcome="success"})')[0]["value"][1])
    assert requests > 0, requests
    error_ratio = float(query('portrait:error_ratio:rate5m{track="canary"}')[0]["value"][1])
    assert error_ratio == 0.0, f"errors under a load that should all succeed: {error_ratio}"
    check_alert_rules(firing_allowed=set())


def alert_rules() -> dict[str, dict]:
    status, body = http_get(f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/rules?type=alert")
    assert status == 200, (status, body)
    return {r["name"]: r for g in json.loads(body)["data"]["groups"] for r in g["rules"]}


def check_alert_rules(firing_allowed: set[str], expect_active: str | None = None) -> None:
    """The alert rules as the live Prometheus evaluates them: all loaded, none in error, only the expected ones
    pending or firing (and `expect_active` among them, waited for)."""
    names = {r["alert"] for r in yaml.safe_load((ROOT / "infra/prometheus/rules/portrait.alerts.yml").read_text())
             ["groups"][0]["rules"]}

    def evaluated():
        rules = alert_rules()
        if set(rules) != names or any(r.get("health") != "ok" for r in rules.values()):
            return None
        if expect_active and rules[expect_active]["state"] == "inactive":
            return None
        return rules

    rules = wait_for("the alert rules evaluated" + (f" with {expect_active} active" if expect_active else ""),
                     evaluated, timeout=60)
    states = {name: r["state"] for name, r in rules.items() if r["state"] != "inactive"}
    # pending is allowed (e.g. queue pressure under the check's own load on a small machine: a real condition, not
    # yet held for its `for:`); firing only where expected. PortraitNotReady reads kube-state-metrics, absent here.
    unexpected = {name for name, state in states.items() if state == "firing"} - firing_allowed - {expect_active}
    assert not unexpected, f"alerts firing on a healthy server: {sorted(unexpected)}"
    say(f"alert rules: {len(rules)} evaluated, health ok; not inactive: {states or 'none'}")


def in_flight(model: str) -> float:
    status, body = http_get(f"http://127.0.0.1:{PORTS['metrics']}/metrics")
    for line in body.splitlines():
        if line.startswith("portrait_in_flight_requests{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def stop_container(process: subprocess.Popen, grace: int, log: Path) -> None:
    """SIGTERM while a longer request runs: the drain must answer it, then exit 0."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(stage1, 999, 40, 256)
        wait_for("a request in flight", lambda: pending.done() or in_flight("stage1") >= 1, timeout=30, every=0.2)
        assert not pending.done(), "the in-flight request ended before SIGTERM: make it longer"
        say("SIGTERM (podman stop) with a stage1 request in flight")
        stopper = subprocess.Popen(["podman", "stop", "-t", str(grace + 30), NAME], stdout=subprocess.DEVNULL)
        images = pending.result(timeout=grace + 30)
        assert images.shape[-1] == 3, images.shape
        say(f"the in-flight request was answered during the drain ({images.shape[-3]}x{images.shape[-2]})")
        stopper.wait(grace + 60)
    code = process.wait(60)
    text = log.read_text()
    assert code == 0, f"exit code {code} after SIGTERM:\n{text[-3000:]}"
    assert "draining" in text and "shared-memory regions removed" in text, text[-3000:]
    say("exited 0 after draining; shared-memory regions removed")
    # the only target is down: absent(up == 1) holds too
    check_alert_rules(firing_allowed={"PortraitTargetsAbsent"}, expect_active="PortraitTargetDown")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="localhost/portrait:cpu")
    parser.add_argument("--requests", type=int, default=6, help="stage1 requests of the bounded load")
    parser.add_argument("--grace", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "build/deploy/check/generate.png")
    args = parser.parse_args()
    prometheus = None
    with tempfile.TemporaryDirectory(prefix="portrait-prometheus-") as tmp:
        try:
            log = args.out.parent / "container.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            container = run_container(args.image, args.grace, log)
            check_container()
            config = prometheus_config(Path(tmp))
            prometheus = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
                 f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
                stdout=open(Path(tmp) / "prometheus.log", "w"), stderr=subprocess.STDOUT)
            wait_for("Prometheus ready", lambda: http_get(f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready")[0] == 200, 60)
            warm_up()
            load(args.requests, args.out)
            check_prometheus()
            stop_container(container, args.grace, log)
        finally:
            if prometheus is not None:
                prometheus.terminate()
                prometheus.wait(30)
            podman("rm", "-f", NAME, check=False)
    say("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
