# syntax=docker/dockerfile:1.7
# ekd-compress: two images from one Dockerfile (BuildKit, Docker 23+), all on CUDA 13.
#
#   train  nvidia/cuda base + torch 2.13.0 (CUDA 13.0 wheel) + TensorRT 10.16: distil, evaluate, export (--trt).
#   serve  python:3.12-slim, NO torch: the project wheel with its base (torch-free serving)
#          dependencies, onnxruntime-gpu 1.31.1 (CUDA 13) and the TensorRT 10 runtime libraries.
#
# Build (needs PyPI and, for TensorRT, NVIDIA's package index pypi.nvidia.com):
#   docker build --target train -t ekd-compress:train .
#   docker build --target serve -t ekd-compress:serve .
# Run (NVIDIA driver >= 580 for CUDA 13, NVIDIA Container Toolkit; both run as uid 1000):
#   docker run --rm --gpus all -v "$PWD/exp:/app/exp" -v "$PWD/data:/data" ekd-compress:train distill recipes/demo.yaml
#   docker run --rm --gpus all -v "$PWD/exp:/app/exp" ekd-compress:train export exp/fsdd --int8 --trt
#   docker run -d --gpus all -p 2700:2700 -v "$PWD/exp/fsdd/bundles/student:/bundle:ro" ekd-compress:serve
#   docker run -d --gpus all -p 2700:2700 -v "$PWD/exp/fsdd/bundles/student:/bundle:ro" ekd-compress:serve /bundle --provider tensorrt
# The serve image's arguments (CMD) follow `ekd-compress serve`; host and port come from the
# entrypoint (0.0.0.0, $EKD_PORT, default 2700: change the port with -e EKD_PORT=N -p N:N, which the
# HEALTHCHECK reads too). EKD_SERVE_TOKEN=... (or --token-file /run/secrets/token) requires a bearer
# token on the websockets and /metrics; /health then answers only {"status": "ok"} without it, which
# is all the HEALTHCHECK needs. An empty EKD_SERVE_TOKEN is refused at start.
# Stopping: `docker stop` sends SIGTERM; the server then drains (every open stream gets its final
# result, then close 1001) for at most --drain-grace seconds (default 8) and exits 0. Docker kills
# the container after its stop timeout (10 s by default): for a longer --drain-grace raise it too,
# e.g. `docker stop -t 40` or `docker run --stop-timeout 40` (compose: stop_grace_period: 40s).
#
# Versions are pinned here and tests/test_dockerfile.py checks them against pyproject.toml: change
# both together. Every CUDA-bound piece is the CUDA 13 build: PyPI's torch 2.13.0 Linux wheel (it
# requires cuda-toolkit 13.0 and cudnn-cu13), onnxruntime-gpu 1.31.1 (links libcudart.so.13 and, for
# its TensorRT provider, libnvinfer.so.10) and TensorRT 10.16.1.11 (the `tensorrt` metapackage
# resolves to tensorrt_cu13).

# --------------------------------------------------------------------------- wheel (build stage)
FROM python:3.12-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ekd_compress ./ekd_compress
COPY export ./export
COPY serve ./serve
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --------------------------------------------------------------------------- train
FROM nvidia/cuda:13.0.2-base-ubuntu24.04 AS train
ARG DEBIAN_FRONTEND=noninteractive
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EKD_DATA=/data \
    MLFLOW_TRACKING_URI=sqlite:////app/exp/mlflow.db

# Ubuntu's python3 is 3.12; libsndfile1 for soundfile/lhotse audio I/O (espeak-ng comes inside the
# espeakng-loader wheel). The base image's `ubuntu` user holds uid 1000: replace it with ekd.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libsndfile1 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid 1000 --user-group ekd

# torch first, pinned: the project's range (>=2.4,<2.14) alone could pull another build.
RUN pip install --no-cache-dir torch==2.13.0
# TensorRT's libraries and bindings are wheels on NVIDIA's index (PyPI holds stubs that fetch them).
RUN pip install --no-cache-dir --extra-index-url https://pypi.nvidia.com tensorrt==10.16.1.11
# The project's other dependencies, pinned to the versions its test suite passes with.
RUN pip install --no-cache-dir \
        click==8.4.0 \
        espeakng-loader==0.2.4 \
        jiwer==4.0.0 \
        kaldi-native-fbank==1.23.0 \
        lhotse==1.33.0 \
        lightning==2.6.6 \
        lilcom==1.8.2 \
        matplotlib==3.11.2 \
        mlflow==3.17.2 \
        numpy==2.4.6 \
        omegaconf==2.4.0 \
        onnx==1.23.2 \
        onnxruntime==1.32.0 \
        prometheus-client==0.26.0 \
        pyyaml==6.0.3 \
        rich==15.0.0 \
        scipy==1.17.1 \
        sentencepiece==0.2.3 \
        soundfile==0.14.0 \
        tqdm==4.70.1 \
        websockets==17.4

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ekd_compress ./ekd_compress
COPY export ./export
COPY serve ./serve
COPY recipes ./recipes
# Everything above already satisfies the requirements: this adds the project (with the train
# extra's packages and the trt extra's tensorrt, already here) without touching the pinned versions.
RUN pip install --no-cache-dir "./[train,trt]" \
    && mkdir -p /app/exp /data \
    && chown 1000:1000 /app /app/exp /data

USER 1000:1000
VOLUME ["/app/exp", "/data"]
HEALTHCHECK --interval=60s --timeout=20s --start-period=10s --retries=3 CMD ["ekd-compress", "--version"]
ENTRYPOINT ["ekd-compress"]
CMD ["--help"]

# --------------------------------------------------------------------------- serve
FROM python:3.12-slim-bookworm AS serve
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    EKD_PORT=2700

RUN useradd --create-home --uid 1000 --user-group ekd

# The TensorRT 10 runtime libraries only (libnvinfer, libnvonnxparser): onnxruntime's TensorRT
# provider loads them; no TensorRT Python bindings are needed to serve.
RUN pip install --no-cache-dir --extra-index-url https://pypi.nvidia.com tensorrt-cu13-libs==10.16.1.11
# The project's base dependencies (what serve/ and ekd_compress/contract/ import), pinned, and
# onnxruntime-gpu with its CUDA 13 and cuDNN 9 wheels and uvloop (the `gpu` extra).
RUN pip install --no-cache-dir \
        "onnxruntime-gpu[cuda,cudnn]==1.31.1" \
        click==8.4.0 \
        kaldi-native-fbank==1.23.0 \
        numpy==2.4.6 \
        prometheus-client==0.26.0 \
        sentencepiece==0.2.3 \
        uvloop==0.23.0 \
        websockets==17.4
# onnxruntime does not search the pip-installed CUDA/cuDNN/TensorRT libraries by itself: register
# their folders with the dynamic loader, and fail the build here if one is missing.
RUN site="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && find "$site/nvidia" "$site/tensorrt_libs" -name 'lib*.so*' -printf '%h\n' | sort -u > /etc/ld.so.conf.d/ekd-gpu-wheels.conf \
    && ldconfig \
    && cache="$(ldconfig -p)" \
    && for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcufft.so.12 libcudnn.so.9 libnvinfer.so.10 libnvonnxparser.so.10; do \
           case "$cache" in *"$lib"*) ;; *) echo "missing $lib" >&2; exit 1 ;; esac; \
       done

# The project itself with its base dependencies (already pinned above, so pip adds nothing): they
# are the torch-free serving install; torch comes only with the `train` extra.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir /wheels/ekd_compress-*.whl \
    && ekd-compress serve --help > /dev/null \
    && python -c "import onnxruntime as o; assert {'CUDAExecutionProvider', 'TensorrtExecutionProvider'} <= set(o.get_available_providers())" \
    && if python -c "import torch" 2> /dev/null; then echo "torch must not be in the serve image" >&2; exit 1; fi

USER 1000:1000
WORKDIR /home/ekd
VOLUME ["/bundle"]
EXPOSE 2700
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('EKD_PORT', '2700'), timeout=4)"]
ENTRYPOINT ["/bin/sh", "-c", "exec ekd-compress serve --host 0.0.0.0 --port \"${EKD_PORT:-2700}\" \"$@\"", "ekd-compress-serve"]
CMD ["/bundle", "--provider", "cuda"]
