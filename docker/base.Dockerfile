# neo-base: Python 3.11, PyTorch and libs/neo (the core install, no service extras); each service's image adds
# its own extra (`pip install -e '/app[serve]'` ...), so the UI image carries no DeepSpeed and serving no Gradio.
# CPU by default; for GPU nodes build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim AS neo-base
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 NEO_HOME=/neo
RUN apt-get update && apt-get install -y --no-install-recommends build-essential curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# torch first, from the index of the wanted build, at the version constraints.txt pins
COPY constraints.txt ./
RUN pip install --index-url "$TORCH_INDEX" -r constraints.txt
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services ./services
COPY data ./data
RUN pip install -c constraints.txt -e .
VOLUME ["/neo"]
