#!/usr/bin/env bash
# Prepare .devsrc/ (git-ignored) for a CUDA machine without network access
# (benchmarks/gpu_suite.sh's header says what it holds): a trimmed copy of the
# pinned llama.cpp source, only what the CUDA and --bench builds read, and
# llama.cpp's Llama-3 vocabulary for make_model.py --vocab-from.
#
#   python3 scripts/build_lib.py   # fetches native/llama.cpp first
#   bash benchmarks/devsrc.sh
set -euo pipefail
cd "$(dirname "$0")/.."
src=native/llama.cpp
dst=.devsrc/llama.cpp
[ -f "$src/CMakeLists.txt" ] || { echo "devsrc.sh: $src is missing; run python3 scripts/build_lib.py first" >&2; exit 1; }
rm -rf "$dst"
mkdir -p "$dst/ggml/src" "$dst/tools/ui" "$dst/examples"
cp -r "$src"/{CMakeLists.txt,cmake,src,include,common,vendor,gguf-py,scripts,LICENSE,licenses} "$dst/"
cp -r "$src"/ggml/{CMakeLists.txt,cmake,include} "$dst/ggml/" 2>/dev/null || cp -r "$src"/ggml/{CMakeLists.txt,include} "$dst/ggml/"
# ggml's core and the backends built there (the CPU one, CUDA, RPC), not the others
for f in "$src"/ggml/src/*; do
    case "$(basename "$f")" in
        ggml-blas|ggml-cann|ggml-et|ggml-hexagon|ggml-hip|ggml-metal|ggml-musa|ggml-opencl|ggml-openvino|ggml-sycl|\
        ggml-virtgpu|ggml-vulkan|ggml-webgpu|ggml-zdnn|ggml-zendnn) ;;
        *) cp -r "$f" "$dst/ggml/src/" ;;
    esac
done
# the other backends' CMakeLists only, which ggml's own CMakeLists may name
for b in ggml-blas ggml-hip ggml-metal ggml-musa ggml-opencl ggml-sycl ggml-vulkan; do
    [ -d "$src/ggml/src/$b" ] && mkdir -p "$dst/ggml/src/$b" && cp "$src/ggml/src/$b/CMakeLists.txt" "$dst/ggml/src/$b/" 2>/dev/null || true
done
mkdir -p "$dst/tools"
cp "$src/tools/CMakeLists.txt" "$dst/tools/"
cp -r "$src"/tools/{llama-bench,batched-bench,server,mtmd} "$dst/tools/"
cp "$src"/tools/ui/{CMakeLists.txt,ui.cpp.in,ui.h.in,sources.cmake} "$dst/tools/ui/"
cp -r "$src"/examples/{lookup,speculative-simple} "$dst/examples/"
cp "$src/models/ggml-vocab-llama-bpe.gguf" .devsrc/
# SmolVLM's vocabulary (SmolLM2's and the image template's tokens), for the multimodal benchmark's text model
vision=$(python3 -c "import sys; sys.path.insert(0, 'scripts'); from make_vision_model import ensure_vision_model; print(ensure_vision_model()['model'])")
python3 benchmarks/make_model.py --extract-vocab "$vision" --out .devsrc/smolvlm-vocab.gguf
# the pinned CCCL (native/pin.json), which build_lib.py fetches when the toolkit's predates CUB's DeviceTopK
mkdir -p .devsrc/cccl
python3 -c "import json; c = json.load(open('native/pin.json'))['cuda_cccl']; print(c['name'] + '==' + c['version'])" \
    | xargs python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 -d .devsrc/cccl
du -sh "$dst"
