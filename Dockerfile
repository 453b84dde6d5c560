# ekd-compress, first version: one image that trains and evaluates (CPU, or GPU when the
# torch wheel that pip resolves is a CUDA build). Multi-stage train/serve targets come
# with the serving work. Build:  docker build -t ekd-compress .
# Run the demo:                  docker run --rm -v $PWD/exp:/app/exp ekd-compress distill recipes/demo.yaml
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 ekd
WORKDIR /app

# torch first and pinned, so the project's torch range cannot pull another build
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md ./
COPY ekd_compress ./ekd_compress
COPY export ./export
COPY serve ./serve
COPY recipes ./recipes
RUN pip install --no-cache-dir .

USER ekd
ENTRYPOINT ["ekd-compress"]
CMD ["--help"]
