#!/bin/sh
# Builds the CUDA conformance test and the benchmark example without network (README.md here).
# Run from the repository root. Binaries: $CARGO_TARGET_DIR (default target-cuda)/release.
set -u
here=$(cd "$(dirname "$0")" && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda} DOCS_RS=1 PATH="$here:$PATH"
build() {
    cargo build --release -p segloss -p segloss-gpu-check --features segloss-gpu-check/cuda-nvrtc \
        --example loss_bench --test gpu_conformance 2>&1
}
build > "$here/out.log" || true
if grep -q "undefined symbol" "$here/out.log"; then
    sh "$here/stubs.sh" "$here/out.log" && build | tail -n 3
else
    tail -n 3 "$here/out.log"
fi
