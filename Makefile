# `make demo` and `make test` each create .venv on first use and install the package with its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,export,explain,bench,volumes]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/densenet demo --config configs/digits_demo.yaml

test: $(STAMP) chromium
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# The report's browser tests need headless Chromium: Debian's package, installed when missing and possible
# (as root, or with password-less sudo); otherwise those tests are skipped.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  command -v apt-get >/dev/null && SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n) && \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium is not installed: the report's browser tests will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
