# neo-base: Python 3.11, PyTorch and libs/neo plus every service package (one pyproject).
# CPU by default; for GPU nodes build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim AS neo-base
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 NEO_HOME=/neo
RUN apt-get update && apt-get install -y --no-install-recommends build-essential curl \
    && rm -rf /var/lib/apt/lists/*
# torch first, from the index of the wanted build, pinned like pyproject.toml
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services ./services
COPY data ./data
RUN pip install -e .
VOLUME ["/neo"]
