# One command each, from a fresh clone (needs python3 >= 3.10 with venv):
#   make demo   set up, then label generated sample images with the stand-in module
#   make test   set up, then run the test suite (what CI runs: .ci/run)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test system-deps clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Headless Chromium renders the HTML report in its test (Debian packages).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "install the Debian packages chromium and chromium-driver for the report test"; fi; }

# Needs no data: the sample images are generated (pipeline/samples.py).
demo: install
	$(BIN)/python -m pipeline.samples .cache/demo-images
	$(BIN)/python -m pipeline --config configs/demo.yaml

# One worker per core, a test module per worker at a time (module fixtures,
# e.g. the GCS emulator and its runs, stay in one process): 7.6 instead of
# 11-12 minutes on 2 cores, as many tests wait on TF start-up or retries.
test: install system-deps
	$(BIN)/python -m pytest -n auto --dist loadfile

clean:
	rm -rf $(VENV) .cache demo-out test-artifacts *.egg-info
