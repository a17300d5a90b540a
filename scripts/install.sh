#!/usr/bin/env bash
# Create (or refresh) the virtual environment with the whole metabench stack:
# torch + torchvision, learn2learn (built from source: its 0.2.0 sdist does not build on
# Python 3.11 as shipped), pandas, tabulate, pluggy and metabench itself (editable).
# Idempotent: it does nothing when pyproject.toml and this script are unchanged since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${METABENCH_VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
# torch + torchvision (learn2learn imports torchvision). Override for another platform, e.g.
# METABENCH_TORCH="torch==2.9.1 torchvision==0.24.1" (aarch64) or a CUDA build of your choice.
read -r -a TORCH_PINS <<< "${METABENCH_TORCH:-torch==2.14.1 torchvision==0.29.1}"
L2L_VERSION=0.2.0

fingerprint=$( (cat pyproject.toml scripts/install.sh; echo "${TORCH_PINS[*]}") | sha256sum | cut -d' ' -f1)
stamp="$VENV/.metabench-installed"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$fingerprint" ]]; then
    exit 0
fi

echo "metabench: installing into $VENV (a few minutes the first time)" >&2
"$PYTHON" -m venv "$VENV"
pip() {  # quiet, minus the harmless notes about this machine's empty local index folders
    "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2)
}

# 1. torch first, pinned, so nothing later pulls a different multi-GB build.
pip install --quiet "${TORCH_PINS[@]}"

# 2. Everything else in one resolution. numpy<2 because learn2learn's qpth requires it.
pip install --quiet "${TORCH_PINS[@]}" "numpy<2" gym scipy requests tqdm qpth Cython -e ".[test,ray,db,tensorboard,mlflow]"

# 3. learn2learn: regenerate its Cython output for this Python, then build without isolation.
if ! "$VENV/bin/python" -c "import importlib.metadata as m; m.version('learn2learn')" >/dev/null 2>&1; then
    build_dir=$(mktemp -d)
    trap 'rm -rf "$build_dir"' EXIT
    # --no-build-isolation: prepare its metadata with the Cython installed above, not a source build of Cython.
    pip download --quiet --no-deps --no-binary learn2learn --no-build-isolation \
        "learn2learn==$L2L_VERSION" -d "$build_dir"
    tar xzf "$build_dir/learn2learn-$L2L_VERSION.tar.gz" -C "$build_dir"
    cython="$(cd "$VENV" && pwd)/bin/cython"
    (cd "$build_dir/learn2learn-$L2L_VERSION" && "$cython" -3 learn2learn/data/*.pyx)
    pip install --quiet --no-deps --no-build-isolation "$build_dir/learn2learn-$L2L_VERSION"
fi

echo "$fingerprint" > "$stamp"
