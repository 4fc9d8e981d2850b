#!/usr/bin/env bash
# DP vs non-DP training throughput and peak GPU memory, fp32 and bf16, default and larger model.
#
#   bench/gpu.sh                       on a GPU machine, from anywhere: writes $OUT/gpu_results.md
#                                      ($OUT defaults to bench/results)
#   bench/gpu.sh --cpu-smoke           on any machine: a couple of CPU steps of a tiny model, to check
#                                      the script end to end (its numbers mean nothing; writes
#                                      $OUT/gpu_smoke.md, $OUT defaulting to /tmp/helixfed-gpu-smoke)
#   bench/gpu.sh download-wheels [DIR] on a machine with pip access: the wheels a GPU image without
#                                      internet lacks (opacus, pydantic and their needs), into DIR
#                                      (default .whl; keep it out of git, carry it to the GPU machine)
#
# Python: a python3 whose torch sees a GPU is used as it is, since a lent GPU machine has its own CUDA
# torch and no internet; otherwise a fresh venv gets torch==2.13.0 (for --cpu-smoke the project's
# .venv is used when it exists). Missing packages (the GPU image lacks opacus and pydantic) go to
# $SITE, from the wheels in $WHEELS (default .whl) when that exists, else from the package index.
# Everything runs under `timeout` so the whole script ends within 8 minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WHEELS=${WHEELS:-.whl}
VENV=${VENV:-/tmp/helixfed-gpu-venv}
SITE=${SITE:-/tmp/helixfed-gpu-site}
NEEDED_MODULES="opacus pydantic yaml numpy scipy"

download_wheels() {
    local dir=${1:-.whl}
    # The GPU image's python3 is CPython 3.12 on x86-64 (see the device notes); pip matches tags exactly.
    local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
                     --platform manylinux2014_x86_64)
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$dir" opacus==1.6.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types \
        typing-inspection typing-extensions
    echo "wheels in $dir: $(ls "$dir" | tr '\n' ' ')"
}

choose_python() {
    # The GPU image's python3 lives in a venv of its own (/opt/torch/.venv): a venv made from it would
    # not see its torch, so it is used directly and missing packages go to $SITE on PYTHONPATH.
    if python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "using the machine's CUDA torch: $(python3 -c 'import torch; print(torch.__version__)')" >&2
        PY=python3
    elif [ "$SMOKE" = 1 ] && [ -x .venv/bin/python ]; then
        PY=.venv/bin/python
    else
        echo "no CUDA torch here: installing torch==2.13.0 into $VENV" >&2
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
        PY="$VENV/bin/python"
        "$PY" -m pip install -q torch==2.13.0
    fi
}

packages_for() {
    case $1 in
        opacus) echo "opacus==1.6.0 opt-einsum" ;;
        pydantic) echo "pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions" ;;
        yaml) echo pyyaml ;;
        *) echo "$1" ;;
    esac
}

install_missing() {
    local missing=()
    for module in $NEEDED_MODULES; do
        "$PY" -c "import $module" 2>/dev/null || missing+=("$module")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing into $SITE for: ${missing[*]}" >&2
    if [ -d "$WHEELS" ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
    else
        # shellcheck disable=SC2046  # one word per package
        "$PY" -m pip install -q --no-deps --target "$SITE" $(for m in "${missing[@]}"; do packages_for "$m"; done)
    fi
}

main() {
    if [ "${1:-}" = download-wheels ]; then
        download_wheels "${2:-.whl}"
        return 0
    fi
    SMOKE=0
    [ "${1:-}" = --cpu-smoke ] && SMOKE=1
    if [ "$SMOKE" = 1 ]; then OUT=${OUT:-/tmp/helixfed-gpu-smoke}; else OUT=${OUT:-bench/results}; fi
    mkdir -p "$OUT"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    choose_python
    install_missing
    local name=gpu_results.md
    [ "$SMOKE" = 1 ] && name=gpu_smoke.md
    timeout 420 "$PY" bench/gpu_bench.py --out "$OUT/$name" --budget-s 330 "$@"
    echo "wrote $OUT/$name"
}

# Sourcing the file (e.g. to try one function) defines the functions and runs nothing.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
