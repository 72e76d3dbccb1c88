#!/usr/bin/env bash
# The GPU benchmark, as run on a CUDA machine (the H100 numbers in BENCHMARKS.md).
#
#   benchmarks/gpu_suite.sh build bench:1b bench:8b
#
# Stages, each skipped when its output is already there (so a second call on
# the same machine picks up where the first stopped):
#   build      python3 scripts/build_lib.py --backend cuda --cuda-arch $CUDA_ARCH --bench
#              then prints mullama.system_info() (the CUDA device must be listed)
#   model:P    benchmarks/make_model.py --preset P (random weights, Q4_K_M)
#   bench:P    model:P, then benchmarks/run.py --ngl all on it
#   batched:P  model:P, then benchmarks/batched.py (engine and server vs llama-batched-bench) on it
#   divergence:P  model:P, then benchmarks/divergence.py (batched greedy vs a lone Context) on it
#   sampling:P model:P, then benchmarks/sampling.py (sampled vs greedy, host and device paths) on it
#   burst:P    model:P, then benchmarks/burst.py (load phases on one server against fresh servers,
#              and llama-server from the same build) on it
#   lls:P      model:P, then benchmarks/logprobs_lora_state.py (the cost of logprobs; saved state's size and time)
#   spec:T:D   models T and D, then benchmarks/speculative.py: T with D as its draft model, and prompt
#              lookup, against llama-speculative-simple and llama-lookup from the same build
#   kv:P       model:P, then benchmarks/kv_cache.py (each KV-cache type's size and speed) on it
#   mtmd:P     a model of preset P with SmolVLM's vocabulary (MTMD_VOCAB, default .devsrc/smolvlm-vocab.gguf)
#              and a random SigLIP-B/16 projector for it (benchmarks/make_mmproj.py), then
#              benchmarks/multimodal.py (image encode time against llama-mtmd-cli from the same build)
#   sampling-tests  tests/test_sampling.py with every layer on the GPU (MULLAMA_TEST_NGL=-1), the
#              reference comparisons on the 1b model
# Environment: OUT (results, default /tmp/mullama-bench), MODELS (default
# /tmp/mullama-models), THREADS (8), REPS (5), CUDA_ARCH (90), LLAMA_SRC (llama.cpp
# source; default native/llama.cpp, or .devsrc/llama.cpp when only that exists),
# VOCAB (GGUF whose tokenizer is copied; default: make_model.py's own choice),
# MAKE_MODEL_ARGS (extra make_model.py arguments, e.g. --synthetic-vocab), DEADLINE (seconds since the start after which no new stage begins).
#
# For a machine without network access, prepare a git-ignored .devsrc/ here and carry it:
#   .devsrc/llama.cpp   trimmed copy of native/llama.cpp (CMakeLists.txt cmake ggml (less the backends
#                       not built) src include common vendor gguf-py scripts LICENSE licenses
#                       tools/CMakeLists.txt tools/llama-bench tools/batched-bench tools/server tools/mtmd
#                       examples/lookup examples/speculative-simple
#                       and tools/ui's CMakeLists.txt, ui.cpp.in, ui.h.in, sources.cmake; ~28 MB;
#                       benchmarks/devsrc.sh makes it and the vocabulary below)
#   .devsrc/ggml-vocab-llama-bpe.gguf   llama.cpp's Llama-3 vocab (128256 tokens), for VOCAB=
#   .whl/*.whl          the server's wheels (starlette, uvicorn and theirs) for the machine's Python
#   .devsrc/pylib       llama-cpp-python's Python package (site-packages/llama_cpp without lib/ and
#                       server/) and diskcache, to run llama-cpp-python on mullama's CUDA libllama
#   .devsrc/smollm2-vocab.gguf   make_model.py --extract-vocab SmolLM2.gguf (for VOCAB=)
#   .devsrc/cccl/*.whl  the pinned nvidia-cuda-cccl wheel (native/pin.json), which build_lib.py
#                       otherwise downloads when the toolkit's CCCL predates CUB's DeviceTopK
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mullama-bench}
MODELS=${MODELS:-/tmp/mullama-models}
THREADS=${THREADS:-8}
REPS=${REPS:-5}
CUDA_ARCH=${CUDA_ARCH:-90}
DEADLINE=${DEADLINE:-100000}
if [ -z "${LLAMA_SRC:-}" ]; then
    LLAMA_SRC=native/llama.cpp
    [ -f "$LLAMA_SRC/CMakeLists.txt" ] || LLAMA_SRC=.devsrc/llama.cpp
fi
mkdir -p "$OUT" "$MODELS"
export PYTHONUNBUFFERED=1
# the server's dependencies, carried as wheels (the machine reaches no index)
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import starlette, uvicorn" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

# llama-cpp-python without a CUDA build of its own: its Python package, pointed at
# mullama's libllama (same llama.cpp commit) through LLAMA_CPP_LIB_PATH.
if [ -d .devsrc/pylib/llama_cpp ] && ! python3 -c "import llama_cpp" 2>/dev/null; then
    export PYTHONPATH=$PWD/.devsrc/pylib${PYTHONPATH:+:$PYTHONPATH}
    export LLAMA_CPP_LIB_PATH=$PWD/mullama/lib
    LCP_NOTE="llama-cpp-python: its Python package only, loading mullama's own CUDA libllama (LLAMA_CPP_LIB_PATH), so the two differ only in their Python layers"
fi

stage_build() {
    if [ -f mullama/lib/libggml-cuda.so ] && grep -q '"backend": "cuda"' mullama/lib/build_info.json 2>/dev/null; then
        echo "== build: already there"
    else
        echo "== build: CUDA (arch $CUDA_ARCH) + llama-bench from $LLAMA_SRC, $(nproc) CPUs"
        local s=$(date +%s)
        if ls .devsrc/cccl/*.whl >/dev/null 2>&1; then
            mkdir -p "${MULLAMA_CACHE:-$HOME/.cache/mullama}/sdist" && cp .devsrc/cccl/*.whl "${MULLAMA_CACHE:-$HOME/.cache/mullama}/sdist/"
        fi
        python3 scripts/build_lib.py --backend cuda --cuda-arch "$CUDA_ARCH" --bench --source-dir "$LLAMA_SRC" \
            > "$OUT/build.log" 2>&1
        local rc=$?
        echo "== build: rc=$rc, $(( $(date +%s) - s ))s wall"
        tail -n 3 "$OUT/build.log"
        [ $rc -eq 0 ] || return $rc
    fi
    python3 -c "import mullama; print(mullama.system_info())"
}

stage_model() {
    local p=$1 f=$MODELS/llama-$1.Q4_K_M.gguf
    [ -f "$f" ] && return 0
    local tmp=/tmp
    # the F16 intermediate in memory when there is room (an 8B one is ~15 GB)
    if [ "$(df --output=avail -B1G /dev/shm 2>/dev/null | tail -n1 | tr -d ' ')" -gt 24 ] 2>/dev/null; then tmp=/dev/shm; fi
    echo "== model:$p ($(elapsed)s)"
    python3 benchmarks/make_model.py --preset "$p" --out "$f" --tmp-dir "$tmp" ${VOCAB:+--vocab-from "$VOCAB"} ${MAKE_MODEL_ARGS:-}
}

stage_bench() {
    local p=$1
    stage_model "$p" || return $?
    echo "== bench:$p ($(elapsed)s)"
    python3 benchmarks/run.py --model "$MODELS/llama-$p.Q4_K_M.gguf" --ngl all -t "$THREADS" --reps "$REPS" \
        --label "gpu-llama-$p-q4_k_m" --json "$OUT/gpu-$p.json" --markdown "$OUT/gpu.md" --log-dir "$OUT/logs-$p" \
        ${LCP_NOTE:+--note "$LCP_NOTE"} \
        --note "Model: random weights, llama-3 shapes, made by benchmarks/make_model.py --preset $p (make_model.py ${MAKE_MODEL_ARGS:-${VOCAB:+--vocab-from $(basename "$VOCAB")}})"
}

stage_batched() {
    stage_model "$1" || return $?
    echo "== batched:$1 ($(elapsed)s)"
    python3 benchmarks/batched.py --model "$MODELS/llama-$1.Q4_K_M.gguf" --ngl 99 --threads "$THREADS" \
        --reps "${BATCHED_REPS:-2}" --markdown "$OUT/batched.md" ${BATCHED_ARGS:-}
}

stage_burst() {
    stage_model "$1" || return $?
    echo "== burst:$1 ($(elapsed)s)"
    python3 benchmarks/burst.py --model "$MODELS/llama-$1.Q4_K_M.gguf" --ngl -1 --threads "$THREADS" \
        --parallel 32 --n-ctx 512 --requests "${BURST_REQUESTS:-3}" --json "$OUT/burst-$1.json" \
        --markdown "$OUT/burst.md" ${BURST_ARGS:-} 2>&1 | tee -a "$OUT/burst.txt"
}

stage_divergence() {
    stage_model "$1" || return $?
    echo "== divergence:$1 ($(elapsed)s)"
    python3 benchmarks/divergence.py --model "$MODELS/llama-$1.Q4_K_M.gguf" --ngl 99 | tee -a "$OUT/divergence.txt"
}

stage_sampling() {
    stage_model "$1" || return $?
    echo "== sampling:$1 ($(elapsed)s)"
    python3 benchmarks/sampling.py --model "$MODELS/llama-$1.Q4_K_M.gguf" --ngl -1 --threads "$THREADS" \
        --reps "$REPS" --json "$OUT/sampling-$1.json" | tee -a "$OUT/sampling.txt"
}

stage_lls() {
    stage_model "$1" || return $?
    echo "== lls:$1 ($(elapsed)s)"
    python3 benchmarks/logprobs_lora_state.py --model "$MODELS/llama-$1.Q4_K_M.gguf" --ngl all --threads "$THREADS" \
        --reps "$REPS" --out "$OUT/logprobs-state-$1.json" | tee -a "$OUT/logprobs-state.txt"
}

stage_sampling_tests() {
    # a small untied model with peaked logits: the 1b preset ties its output to token
    # embeddings cut from one random pool, so some tokens tie exactly
    local m=$MODELS/peaked-small.gguf
    [ -f "$m" ] || python3 benchmarks/make_model.py --preset tiny --n-embd 1024 --n-layer 4 --n-head 8 --n-head-kv 4 \
        --n-ff 2048 --ftype q8_0 --logit-scale 4 ${VOCAB:+--vocab-from "$VOCAB"} --out "$m" || return $?
    echo "== sampling-tests ($(elapsed)s)"
    MULLAMA_TEST_NGL=-1 MULLAMA_TEST_SAMPLING_MODEL="$m" \
        python3 -m pytest -q -p no:cacheprovider tests/test_sampling.py > "$OUT/sampling-tests.txt" 2>&1
    tail -n 30 "$OUT/sampling-tests.txt"
    return 0
}

stage_spec() {
    local t=${1%%:*} d=${1#*:}
    stage_model "$t" || return $?
    stage_model "$d" || return $?
    echo "== spec:$t:$d ($(elapsed)s)"
    local bins
    bins=$(dirname "$(find "${MULLAMA_CACHE:-$HOME/.cache/mullama}/build" -name llama-speculative-simple -type f | head -n1)")
    python3 benchmarks/speculative.py --model "$MODELS/llama-$t.Q4_K_M.gguf" \
        --draft-model "$MODELS/llama-$d.Q4_K_M.gguf" --ngl 99 --threads "$THREADS" --bin-dir "$bins" \
        --task "${SPEC_TASK:-copy}" --max-tokens "${SPEC_TOKENS:-256}" --json "$OUT/spec-$t-$d.json" 2>&1 \
        | tee -a "$OUT/spec.txt"
}

stage_kv() {
    stage_model "$1" || return $?
    echo "== kv:$1 ($(elapsed)s)"
    python3 benchmarks/kv_cache.py --model "$MODELS/llama-$1.Q4_K_M.gguf" --ngl all --threads "$THREADS" \
        --out "$OUT/kv-$1.json" 2>&1 | tee -a "$OUT/kv.txt"
}

stage_mtmd() {
    local p=$1 f=$MODELS/llama-$1-smolvlm.Q4_K_M.gguf mm=$MODELS/mmproj-base-$1.gguf n_embd
    if [ ! -f "$f" ]; then
        echo "== model:$p with SmolVLM's vocabulary ($(elapsed)s)"
        python3 benchmarks/make_model.py --preset "$p" --out "$f" --vocab-from "${MTMD_VOCAB:-.devsrc/smolvlm-vocab.gguf}" \
            || return $?
    fi
    n_embd=$(python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from make_model import PRESETS; print(PRESETS['$p']['n_embd'])")
    [ -f "$mm" ] || python3 benchmarks/make_mmproj.py --n-embd "$n_embd" --out "$mm" || return $?
    echo "== mtmd:$p ($(elapsed)s)"
    local bins
    bins=$(dirname "$(find "${MULLAMA_CACHE:-$HOME/.cache/mullama}/build" -name llama-mtmd-cli -type f | head -n1)")
    python3 benchmarks/multimodal.py --model "$f" --mmproj "$mm" --bin-dir "$bins" --ngl -1 --threads "$THREADS" \
        --reps "${MTMD_REPS:-5}" --json "$OUT/mtmd-$p.json" 2>&1 | tee -a "$OUT/mtmd.txt"
}

for st in "$@"; do
    if [ "$(elapsed)" -ge "$DEADLINE" ]; then
        echo "== $st: skipped, past DEADLINE=${DEADLINE}s"
        continue
    fi
    case $st in
        build) stage_build || exit $? ;;
        model:*) stage_model "${st#model:}" || exit $? ;;
        bench:*) stage_bench "${st#bench:}" || exit $? ;;
        batched:*) stage_batched "${st#batched:}" || exit $? ;;
        burst:*) stage_burst "${st#burst:}" || exit $? ;;
        divergence:*) stage_divergence "${st#divergence:}" || exit $? ;;
        sampling:*) stage_sampling "${st#sampling:}" || exit $? ;;
        lls:*) stage_lls "${st#lls:}" || exit $? ;;
        spec:*) stage_spec "${st#spec:}" || exit $? ;;
        kv:*) stage_kv "${st#kv:}" || exit $? ;;
        mtmd:*) stage_mtmd "${st#mtmd:}" || exit $? ;;
        sampling-tests) stage_sampling_tests || exit $? ;;
        *) echo "unknown stage $st"; exit 2 ;;
    esac
done
echo "== done in $(elapsed)s"
