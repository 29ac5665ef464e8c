"""infra/ offline: every kustomization renders and says what the deployment relies on; strict schema validation;
the Prometheus rules' unit tests; the adapter, dashboard and image agree with the rules and settings.

Needs the deploy tools (`make deploy-tools`: .venv-deploy with kubectl and kubernetes-validate, Debian's promtool);
a missing tool fails these tests, it never skips them. The image build and the live checks are `make deploy-check`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache

import pytest
import yaml

from portrait.settings import PROJECT_ROOT, get_settings

INFRA = PROJECT_ROOT / "infra"
TOOLS = PROJECT_ROOT / ".venv-deploy" / "bin"
KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/gpu", "canary", "rollout", "kserve", "local", "monitoring"]


def tool(name: str) -> str:
    path = TOOLS / name if (TOOLS / name).exists() else shutil.which(name)
    assert path, f"{name} is missing: run `make deploy-tools` (these checks never skip)"
    return str(path)


@cache
def render(kustomization: str) -> tuple[dict, ...]:
    out = subprocess.run([tool("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone",
                          str(INFRA / "k8s" / kustomization)], check=True, capture_output=True, text=True).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def find(docs, kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def server_container(deployment: dict) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server")


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_and_validates_strictly(kustomization, tmp_path):
    docs = render(kustomization)
    assert docs
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run([tool("kubernetes-validate"), "--strict", "--kubernetes-version", "1.37.0", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kustomization", ["base", "overlays/cpu", "overlays/gpu", "canary", "local"])
def test_every_server_pod_is_locked_down_and_probed_on_the_truthful_health(kustomization):
    deployments = find(render(kustomization), "Deployment")
    assert deployments
    grace = get_settings().grace_period
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        server = server_container(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, container["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], container["name"]
        ports = {p["name"]: p["containerPort"] for p in server["ports"]}
        assert ports["health"] == get_settings().health_port == 8003
        for probe in ("startupProbe", "readinessProbe"):
            assert server[probe]["httpGet"] == {"path": "/v2/health/ready", "port": "health"}, probe
        assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "health"}
        env = env_of(server)
        assert env["PORTRAIT_HOST"] == "0.0.0.0" and env["PORTRAIT_CACHE_DIR"] == "/cache"
        drain = float(env["PORTRAIT_GRACE_PERIOD"])
        pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] > pre_stop + drain + 10, "the kubelet must outwait the drain"
        assert drain == grace
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
        if kustomization == "local":  # podman 4.3 mounts an emptyDir at /dev/shm root-owned: its own tmpfs stays
            assert "/dev/shm" not in mounts
        else:
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["sizeLimit"]
        assert "emptyDir" in volumes[mounts["/cache"]] and "emptyDir" in volumes[mounts["/tmp"]]
        assert server["args"] == ["serve", "--exit-on-failure"]


def test_api_key_comes_from_a_secret_on_a_cluster():
    for kustomization in ("overlays/cpu", "overlays/gpu", "canary"):
        for deployment in find(render(kustomization), "Deployment"):
            key = env_of(server_container(deployment))["PORTRAIT_API_KEY"]
            assert key == {"secretKeyRef": {"name": "portrait-api-key", "key": "api-key"}}


def test_service_ports_and_h2c():
    service = find(render("overlays/cpu"), "Service", "portrait")[0]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c" and ports["grpc"]["port"] == 8001
    assert ports["http"]["port"] == 8000 and ports["metrics"]["port"] == 8002
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "portrait", "track": "stable"}


def test_hpa_scales_on_queue_pressure_and_backlog_served_by_the_adapter():
    hpa = find(render("overlays/cpu"), "HorizontalPodAutoscaler")[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert names == {"portrait_queue_pressure", "portrait_scheduler_backlog"}
    adapter = yaml.safe_load((INFRA / "k8s/monitoring/adapter-config.yaml").read_text())
    served = {rule["name"]["as"]: rule["seriesQuery"].split("{")[0].strip("'") for rule in adapter["rules"]}
    assert set(served) == names
    recorded = {r["record"] for g in yaml.safe_load((INFRA / "prometheus/rules/portrait.rules.yml").read_text())["groups"]
                for r in g["rules"] if "record" in r}
    assert set(served.values()) <= recorded, "the adapter reads series the recording rules do not write"


def test_gpu_capacity_tiers():
    docs = render("overlays/gpu")
    overflow, base = find(docs, "Deployment", "portrait")[0], find(docs, "Deployment", "portrait-ondemand")[0]
    for deployment in (overflow, base):
        server = server_container(deployment)
        assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
        env = env_of(server)
        assert env["PORTRAIT_DEVICE"] == "cuda" and env["PORTRAIT_UNET_BACKEND"] in ("tensorrt", "torch")
        assert list(env).count("PORTRAIT_DEVICE") == 1
    assert base["spec"]["replicas"] == 1
    required = base["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]} in \
        required["nodeSelectorTerms"][0]["matchExpressions"]
    preferred = overflow["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    tiers = [(p["weight"], {e["key"]: e["values"][0] for e in p["preference"]["matchExpressions"]}) for p in preferred]
    assert [w for w, _ in tiers] == [3, 2, 1]
    assert [t["karpenter.sh/capacity-type"] for _, t in tiers] == ["spot", "spot", "on-demand"]
    hpa = find(docs, "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "portrait"  # the floor is not scaled
    assert len(find(docs, "Service")) == 1  # one Service over both tiers (both track=stable)


def test_canary_is_its_own_track_and_the_routes_split_by_weight():
    docs = render("rollout")
    stable, canary = find(docs, "Deployment", "portrait")[0], find(docs, "Deployment", "portrait-canary")[0]
    assert stable["spec"]["selector"]["matchLabels"]["track"] == "stable"
    assert canary["spec"]["selector"]["matchLabels"]["track"] == "canary"
    assert canary["spec"]["template"]["metadata"]["labels"]["track"] == "canary"
    assert find(docs, "Service", "portrait-canary")[0]["spec"]["selector"]["track"] == "canary"
    assert not [h for h in find(docs, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == "portrait-canary"]
    services = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in find(docs, "Service")}
    for kind, port in (("HTTPRoute", 8000), ("GRPCRoute", 8001)):
        route = find(docs, kind)[0]
        backends = route["spec"]["rules"][0]["backendRefs"]
        assert {b["name"]: b["weight"] for b in backends} == {"portrait": 90, "portrait-canary": 10}
        assert all(port in services[b["name"]] and b["port"] == port for b in backends)


def test_kserve_runtime_uses_the_truthful_health_and_kserve_ports():
    docs = render("kserve")
    runtime = find(docs, "ServingRuntime")[0]["spec"]["containers"][0]
    env = env_of(runtime)
    assert env["PORTRAIT_HTTP_PORT"] == "8080" and env["PORTRAIT_GRPC_PORT"] == "9000"
    assert runtime["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    isvc = find(docs, "InferenceService")[0]["spec"]["predictor"]
    assert isvc["model"]["runtime"] == "portrait-triton" and 0 < isvc["canaryTrafficPercent"] < 100


def test_promtool_rule_unit_tests_pass():
    rules = sorted(str(p) for p in (INFRA / "prometheus/rules").glob("*.yml"))
    subprocess.run([tool("promtool"), "check", "rules", *rules], check=True, capture_output=True)
    result = subprocess.run([tool("promtool"), "test", "rules", str(INFRA / "prometheus/tests/portrait.rules.test.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_promtool_fails_a_wrong_expectation(tmp_path):
    """The rule tests can fail: the same test file expecting a pressure of 3 instead of 2 under load."""
    text = (INFRA / "prometheus/tests/portrait.rules.test.yml").read_text()
    wrong = text.replace("            value: 2\n", "            value: 3\n", 1)
    assert wrong != text
    (tmp_path / "rules").mkdir()
    for rule in (INFRA / "prometheus/rules").glob("*.yml"):
        shutil.copy(rule, tmp_path / "rules" / rule.name)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "wrong.test.yml").write_text(wrong)
    result = subprocess.run([tool("promtool"), "test", "rules", str(tmp_path / "tests" / "wrong.test.yml")],
                            capture_output=True, text=True)
    assert result.returncode != 0


def test_dashboard_reads_recorded_series_and_compares_tracks():
    dashboard = json.loads((INFRA / "grafana/portrait.json").read_text())
    recorded = {r["record"] for g in yaml.safe_load((INFRA / "prometheus/rules/portrait.rules.yml").read_text())["groups"]
                for r in g["rules"] if "record" in r}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"portrait:[a-z_0-9:]+", e)}
    assert used <= recorded and {"portrait:error_ratio:rate5m", "portrait:queue_pressure:ratio_rate1m"} <= used
    assert all("track" in e for e in exprs)
    assert {v["name"] for v in dashboard["templating"]["list"]} >= {"track", "datasource"}


def test_image_runs_portrait_serve_as_1000_with_the_health_check():
    text = (INFRA / "Containerfile").read_text()
    assert re.search(r"^ARG BASE=", text, re.M) and "FROM ${BASE}" in text
    assert re.search(r"^USER 1000:1000$", text, re.M)
    assert 'ENTRYPOINT ["/usr/bin/tini", "-g", "--", "portrait"]' in text and 'CMD ["serve", "--exit-on-failure"]' in text
    assert "/v2/health/ready" in text and "HEALTHCHECK" in text
    for variable in ("PORTRAIT_CACHE_DIR=/cache", "HOME=/cache/home", "TMPDIR=/tmp", "HF_HOME=", "MPLCONFIGDIR=",
                     "PORTRAIT_MODELS=", "PORTRAIT_HOST=0.0.0.0"):
        assert variable in text, variable
    gpu = (INFRA / "Containerfile.gpu").read_text()
    assert re.search(r"^ARG BASE=nvcr.io/nvidia/tritonserver:\d\d\.\d\d-py3$", gpu, re.M)
