# comic-reid: `make demo` runs the pipeline end to end on a synthetic corpus; `make test` runs the test suite.
# Both create .venv and install the project on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
STYLE    ?= color
DEMO_PRESET := $(if $(filter inked,$(STYLE)),inked-demo,demo)
DEMO_OUT ?= runs/demo$(if $(filter inked,$(STYLE)),-inked,)
RECIPE   ?= default
# one test process and one local Ray by default (2 cores); PYTEST_ARGS="-n 2 --dist loadfile" runs two processes
# with a file's tests always in the same one (docs/BENCHMARKS.md, "Test suite", has both timings)
PYTEST_ARGS ?=

.PHONY: venv demo test lint bench clean help browser

help:
	@echo "make demo   - set up .venv and run the whole pipeline on a synthetic corpus (outputs in $(DEMO_OUT))"
	@echo "              STYLE=inked: the black-and-white corpus (preset inked-demo, outputs in runs/demo-inked)"
	@echo "make test   - set up .venv, lint, and run the test suite"
	@echo "make bench  - run the benchmarks in tests/bench (not part of CI)"
	@echo "make lint   - ruff check"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/python jobs/pipeline.py --out $(DEMO_OUT) --preset $(DEMO_PRESET) --recipe $(RECIPE)

lint: venv
	$(BIN)/ruff check .

# the review app's browser tests drive Debian's Chromium through Playwright (Playwright's own browser download
# needs the internet); skipped when a chromium is already on PATH. Its recommended packages (audio, printing, desktop
# integration) are left out: headless Chromium does not use them
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium; }

test: venv lint browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(BIN)/python tests/bench/run_all.py

clean:
	rm -rf runs mlruns .pytest_cache
