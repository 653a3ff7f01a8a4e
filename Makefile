# semtrack — set-up and run targets. Each target creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SAMPLE := sample_images/nasicon_synthetic
XVFB   := xvfb-run -a -s "-screen 0 1280x1024x24"
APT_PACKAGES := xvfb xauth libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
	libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-shape0 libgl1-mesa-dri libegl1 libfontconfig1 \
	libdbus-1-3

.PHONY: demo test bench system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core napari_plugin/pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]" -e "napari_plugin[testing]"
	touch $@

$(VENV)/.bench: $(VENV)/.dev
	$(BIN)/pip install --quiet -e ".[bench]"
	touch $@

## Set up and run the main job on the bundled sample series (results/ and results/report.html).
demo: $(VENV)/.core
	$(BIN)/semtrack run $(SAMPLE) --out results/

## napari's tests need an X server: install Xvfb and Qt's libraries when missing (as root, Debian).
system-deps:
	@if ! command -v xvfb-run >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	  else \
	    echo "xvfb-run not found and not root: install $(APT_PACKAGES), or napari tests will be skipped"; \
	  fi; \
	fi

## Set up and run the whole test suite (core + napari plugin, headless).
test: $(VENV)/.dev system-deps
	@if command -v xvfb-run >/dev/null 2>&1; then \
	  QT_QPA_PLATFORM=xcb $(XVFB) $(BIN)/python -m pytest; \
	else \
	  $(BIN)/python -m pytest; \
	fi

## Speed, memory and accuracy benchmarks (tables on stdout, CSVs in benchmarks/out/).
bench: $(VENV)/.bench
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) results benchmarks/out test-artifacts
