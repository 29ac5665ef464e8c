#!/bin/sh
# The offline half of `make deploy-check`: render every kustomization, validate, lint, promtool. Fails on the first
# problem. Needs .venv-deploy (make deploy-tools) and Debian's prometheus (promtool).
set -eu
cd "$(git rev-parse --show-toplevel)"
bin=.venv-deploy/bin
out=build/deploy/rendered
rm -rf "$out" && mkdir -p "$out"
for k in base overlays/cpu overlays/gpu canary rollout kserve local monitoring; do
    "$bin/kubectl" kustomize --load-restrictor LoadRestrictionsNone "infra/k8s/$k" > "$out/$(echo "$k" | tr / -).yaml"
done
echo "rendered: $(ls "$out" | tr '\n' ' ')"
# strict schemas of Kubernetes 1.37 (the newest kubernetes-validate knows); CRDs (Gateway API, KServe) have no
# schema there: reported as a warning, not validated
"$bin/kubernetes-validate" --strict --kubernetes-version 1.37.0 --quiet "$out"/*.yaml
echo "kubernetes-validate --strict (1.37.0): ok"
"$bin/checkov" -d "$out" --framework kubernetes --compact --quiet --skip-download
"$bin/yamllint" -c infra/yamllint.yaml --strict infra/
echo "yamllint: ok"
promtool check rules infra/prometheus/rules/*.yml
(cd infra/prometheus && promtool check config local.yml)
promtool test rules infra/prometheus/tests/*.test.yml
