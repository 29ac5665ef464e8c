# Every target installs what it needs into .venv/ (Python) and the system (Debian packages).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PORTRAIT_MODELS ?= $(CURDIR)/weights/tiny
WEIGHTS := $(PORTRAIT_MODELS)/sdxl/model_index.json

.PHONY: demo test install weights serve ui benchmark full-size-check clean

demo: $(STAMP) $(WEIGHTS)
	@mkdir -p out/demo
	$(PY) -c "import PIL.Image as I, skimage, pathlib; p = pathlib.Path(skimage.__file__).parent / 'data/astronaut.png'; I.open(p).save('out/demo/face.png')"
	$(VENV)/bin/portrait generate --prompt "portrait of a woman img, oil painting, warm rim light, detailed" \
		--negative-prompt "blurry, low quality" --face out/demo/face.png --seed 42 --out out/demo/portrait.png
	$(VENV)/bin/portrait detail --image out/demo/face.png --face out/demo/face.png \
		--prompt "portrait photo of a woman img, detailed skin" --seed 42 --out out/demo/face_detailed.png

test: $(STAMP) $(WEIGHTS)
	$(PY) -m pytest -q

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
	touch $(STAMP)

weights: $(WEIGHTS)

$(WEIGHTS): | $(STAMP)
	$(VENV)/bin/portrait weights

serve: $(STAMP) $(WEIGHTS)
	$(VENV)/bin/portrait serve

ui: $(STAMP) $(WEIGHTS)
	$(VENV)/bin/portrait ui

benchmark: $(STAMP) $(WEIGHTS)
	$(PY) scripts/benchmark

# real dimensions on CPU: builds weights/full (SDXL base 1.0 + PhotoMaker V2 shapes, random, ~8 GB) if missing,
# serves it, runs one portrait request and compares stage 1 with diffusers; needs ~17 GB free RAM (docs/memory.md)
full-size-check: $(STAMP)
	$(PY) scripts/full_size_check --models $(CURDIR)/weights/full --out $(CURDIR)/out/full_size

clean:
	rm -rf $(VENV) out .cache weights .pytest_cache
