#!/usr/bin/env bash
# Downloads, here (where PyPI is reachable), the wheels that benchmarks/gpu_check.sh installs on a
# GPU machine without network: the project's dependencies that its image lacks. That image has
# Python 3.12, torch 2.11, lightning, torchmetrics, tensorboard, pyarrow, numpy, pyyaml and
# typing-extensions, but neither polars nor jsonargparse.
#
#   bash benchmarks/fetch_gpu_wheels.sh          # into .whl/ at the repo root (git-ignored)
#
# Versions are pinned to what the project is tested with; keep one version of each (two stop the
# offline install). scikit-surprise is not fetched: it ships no wheels, and the GPU check skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${WHEEL_DIR:-.whl}
PYTHON=${PYTHON:-python3}
WHEELS=(
    polars==2.1.0                # polars 2.x: a thin package ...
    polars-runtime-32==2.1.0     # ... and its compiled runtime
    jsonargparse==4.53.0         # LightningCLI's parser; needs PyYAML (present there)
    docstring-parser==0.18.0     # jsonargparse[signatures]: help text from Args: blocks
    typeshed-client==2.15.0      # jsonargparse[signatures]: stub lookup; needs typing-extensions
)
mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$DEST" "${WHEELS[@]}"
ls -l "$DEST"
