#!/bin/sh
# The offline half of `make deploy-check`: render every kustomization with plain `kubectl kustomize` (kustomize's
# default load restrictor, as `kubectl apply -k`, Argo CD and Flux build), validate, lint, promtool. Fails on the
# first problem. Needs .venv-deploy (make deploy-tools) and Debian's prometheus (promtool).
set -eu
cd "$(git rev-parse --show-toplevel)"
bin=.venv-deploy/bin
out=build/deploy/rendered
rm -rf "$out" && mkdir -p "$out"
# every kustomization an operator applies (components are built as part of them)
for file in $(grep -l '^kind: Kustomization' $(find infra/k8s -name kustomization.yaml | sort)); do
    k=${file#infra/k8s/}; k=${k%/kustomization.yaml}
    "$bin/kubectl" kustomize "infra/k8s/$k" > "$out/$(echo "$k" | tr / -).yaml"
done
echo "rendered: $(ls "$out" | tr '\n' ' ')"
# built-in kinds: strict schemas of Kubernetes 1.37 (the newest kubernetes-validate knows); it cannot see CRDs
"$bin/kubernetes-validate" --strict --kubernetes-version 1.37.0 --quiet "$out"/*.yaml
echo "kubernetes-validate --strict (1.37.0): ok"
# custom resources (Gateway API, KServe, Prometheus Operator): their CRDs' own schemas, vendored in infra/schemas
"$bin/python" infra/validate_crds.py "$out"/*.yaml
"$bin/checkov" -d "$out" --framework kubernetes --compact --quiet --skip-download
"$bin/yamllint" -c infra/yamllint.yaml --strict infra/
echo "yamllint: ok"
promtool check rules infra/prometheus/rules/*.yml
# the local stack's Prometheus config, as its ConfigMap mounts it (rules beside it)
stack=build/deploy/rendered/stack-prometheus
mkdir -p "$stack"
"$bin/python" -c "
import sys, yaml, pathlib
for d in yaml.safe_load_all(open('$out/local.yaml')):
    if d and d['kind'] == 'ConfigMap' and d['metadata']['name'] == 'portrait-prometheus-rules':
        for key, text in d['data'].items():
            pathlib.Path('$stack', key).write_text(text)"
(cd "$stack" && promtool check config prometheus.yml)
promtool test rules infra/prometheus/tests/*.test.yml
# the Prometheus Operator's rules are the rule files (a stale render fails)
"$bin/python" infra/prometheus/operator_rules.py | diff -u infra/k8s/monitoring-operator/prometheusrule.yaml -
echo "PrometheusRule: the rule files, rendered"
