#!/usr/bin/env bash
# The GPU check of one freshly lent GPU machine, as one table (bench/gpu_check.py says what each
# row measures). Sized to finish within 8 minutes on one H200.
#
#   bash bench/gpu_check.sh --prepare   # here, online: wheels of what the GPU machine lacks -> bench/gpu_wheels/
#   bash bench/gpu_check.sh [ARGS]      # there (offline): install the carried wheels, run the checks
#                                       # ARGS go to bench/gpu_check.py (--only varlen train, --cpu-dry-run)
#
# The GPU machine's image has Python 3.12, torch 2.11 (CUDA 13), transformers 5.17, accelerate,
# torchvision and triton, but no DeepSpeed, Hydra, webdataset, math-verify, ... and no network.
# Without CUDA every row is reported "skipped" and the exit status is 0.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="$REPO/bench/gpu_wheels"
SITE="${PONDER_GPU_SITE:-/tmp/ponder_gpu_site}"

# What ponder imports on the checked paths and the GPU image lacks (wheels for CPython 3.12).
BINARY=(hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions hydra-core omegaconf
        webdataset braceexpand math-verify latex2sympy2_extended)
# Only source distributions on PyPI: built into pure-Python wheels here.
SDIST=(deepspeed antlr4-python3-runtime)

# The interpreter: $PONDER_PYTHON, the GPU image's, this checkout's venv, or python3.
pick_python() {
    local candidate
    for candidate in "${PONDER_PYTHON:-}" /opt/torch/.venv/bin/python3 "$REPO/.venv/bin/python" python3; do
        if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1; then
            echo "$candidate"
            return
        fi
    done
    echo python3
}

# NAME==VERSION as installed in our venv, so the GPU machine runs the versions we test with.
pinned() {
    local version
    version="$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null)"
    if [[ -n "$version" ]]; then echo "$1==$version"; else echo "$1"; fi
}

prepare() {
    local specs=() name
    rm -rf "$WHEELS" && mkdir -p "$WHEELS" || return 1
    for name in "${BINARY[@]}"; do specs+=("$(pinned "$name")"); done
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        -d "$WHEELS" "${specs[@]}" || return 1
    specs=()
    for name in "${SDIST[@]}"; do specs+=("$(pinned "$name")"); done
    # DS_BUILD_OPS=0: no compiled ops (ponder passes torch's AdamW; DeepSpeed JIT-builds any op it needs).
    DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WHEELS" "${specs[@]}" || return 1
    ls -1 "$WHEELS"
    du -sh "$WHEELS"
}

has_cuda() {
    "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1
}

install_wheels() {
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "gpu_check: no wheels in bench/gpu_wheels (run 'bash bench/gpu_check.sh --prepare' where pip works" \
             "and carry bench/gpu_wheels); checks that need them are skipped" >&2
        return 0
    fi
    rm -rf "$SITE" && mkdir -p "$SITE"
    if "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHEELS"/*.whl; then
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu_check: installing bench/gpu_wheels failed; checks that need them are skipped" >&2
    fi
}

PY="$(pick_python)"
if [[ "${1:-}" == "--prepare" ]]; then
    prepare
    exit $?
fi
cd "$REPO" || exit 1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if has_cuda; then
    install_wheels
fi
"$PY" "$REPO/bench/gpu_check.py" "$@"
