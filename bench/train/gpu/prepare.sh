#!/usr/bin/env bash
# Prepare, on this CPU machine, what bench/train/gpu/run.sh needs on a lent GPU machine (the device tool):
# .gpu/whl — wheels of the trainer's Python packages that the GPU image lacks (pydantic, pydantic-settings,
# DeepSpeed and their own missing needs), for that image's Python (3.12 unless PYVER says otherwise);
# .gpu/tokenizer — the demo tokenizer the bench tokenizes the sample corpus with (trained here once).
# .gpu/ is git-ignored; the device call carries it:
#   run(command="bash bench/train/gpu/run.sh", carry=[".gpu"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}
DEST=${DEST:-.gpu}
mkdir -p "$DEST/whl"
# the versions this checkout's venv runs, so both machines train with the same code paths
pkgs=$($PY -m pip freeze | grep -i -E '^(pydantic|pydantic[-_]core|pydantic[-_]settings|python[-_]dotenv|annotated[-_]types|typing[-_]inspection|hjson)==')
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST/whl" $pkgs
# DeepSpeed is published as a source distribution: its wheel is pure Python (ops build at run time, if ever)
ds=$($PY -m pip freeze | grep -i '^deepspeed==')
ls "$DEST"/whl/deepspeed-*.whl >/dev/null 2>&1 || $PY -m pip wheel -q --no-deps --no-build-isolation "$ds" -w "$DEST/whl"
if [ ! -f "$DEST/tokenizer/tokenizer.json" ]; then  # the demo tokenizer: `neo up`'s size on the sample corpus
  "$(dirname "$PY")/neo" tokenizer train data/sample/*.jsonl.gz --out "$DEST/tokenizer" --vocab-size 8000
fi
du -sh "$DEST"
ls "$DEST/whl"
