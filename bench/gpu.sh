#!/usr/bin/env bash
# The GPU path, proven on a lent device in one session (issue 13, item 6).
#
# onnxruntime-gpu (a 255 MB wheel) and the InceptionV3 ONNX file together
# exceed what one device call carries (64 MiB), so they travel in chunks:
#
#   here:      bench/gpu.sh prepare          # wheel + models -> .gpu1/ ... .gpuN/
#   device:    bench/gpu.sh carry K          # one call per chunk, back to back,
#                                            # carry: [".gpuK"]
#   device:    bench/gpu.sh run              # join, verify, install, measure
#
# The machine keeps /tmp only while it is warm (about 30 s after a call), so
# the calls must follow each other at once; "run" says which chunks are
# missing if the machine was given back in between. Figures go to $OUT
# (gpu.txt, gpu.json); copy them into bench/README.md.
set -euo pipefail

WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
CHUNK=58M
STAGE=/tmp/triage-gpu
HERE=$(cd "$(dirname "$0")/.." && pwd)

prepare() {
    local work
    work=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 -d "$work" onnxruntime-gpu==1.31.1
    mkdir -p "$work/payload/models"
    # InceptionV3 with random weights, exported as the trainer exports.
    "$HERE/.venv/bin/python" -c "
import sys; sys.path.insert(0, '$HERE/bench')
from pathlib import Path
from inception_model import save_random_inception_v3
save_random_inception_v3(Path('$work/payload/inception_v3.onnx'))" 2>/dev/null
    # The phantom-trained small models (trained once, cached under var/bench).
    "$HERE/.venv/bin/python" -c "
from pathlib import Path
from phantoms.demo import ensure_models
ensure_models(Path('$HERE/var/bench'))" 2>/dev/null
    for modality in oct cxr; do
        mkdir -p "$work/payload/models/$modality"
        cp "$HERE/var/bench/models/$modality/"{manifest.json,model.onnx} "$work/payload/models/$modality/"
    done
    mv "$work/$WHEEL" "$work/payload/"
    tar -C "$work" -cf "$work/payload.tar" payload
    rm -rf "$HERE"/.gpu[0-9]*
    (cd "$work" && split -b "$CHUNK" -d -a 1 payload.tar part.)
    local count=0
    for part in "$work"/part.*; do
        count=$((count + 1))
        mkdir -p "$HERE/.gpu$count"
        mv "$part" "$HERE/.gpu$count/"
    done
    sha256sum "$work/payload.tar" | cut -d' ' -f1 >"$HERE/.gpu1/payload.sha256"
    echo "$count" >"$HERE/.gpu1/chunks"
    rm -rf "$work"
    echo "prepared $count chunks: .gpu1 ... .gpu$count (each call carries one)"
}

carry() {
    mkdir -p "$STAGE/parts"
    cp "$HERE/.gpu$1"/* "$STAGE/parts/"
    echo "chunk $1 on the device: $(ls "$STAGE/parts" | tr '\n' ' ')"
}

run() {
    local parts=$STAGE/parts
    if [[ ! -f $parts/chunks ]]; then
        echo "no chunks here: the machine is fresh; carry them again from 1" >&2
        exit 3
    fi
    local expected
    expected=$(cat "$parts/chunks")
    if [[ $(ls "$parts"/part.* | wc -l) -ne $expected ]]; then
        echo "have $(ls "$parts"/part.* | wc -l) of $expected chunks; carry the rest" >&2
        exit 3
    fi
    cat "$parts"/part.* >"$STAGE/payload.tar"
    echo "$(cat "$parts/payload.sha256")  $STAGE/payload.tar" | sha256sum -c --quiet
    tar -C "$STAGE" -xf "$STAGE/payload.tar"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$STAGE/site" \
        "$STAGE/payload/$WHEEL"
    local site
    site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # CUDA 13 and cuDNN 9 come from the nvidia-* wheels of the image's Python.
    LD_LIBRARY_PATH=$(find "$site/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
    export LD_LIBRARY_PATH
    export PYTHONPATH=$STAGE/site:$HERE
    export PYTHONUNBUFFERED=1
    nvidia-smi || true
    python3 "$HERE/bench/gpu.py" --payload "$STAGE/payload" --device cuda --out "${OUT:-$STAGE/out}" "$@"
}

case "${1:-}" in
    prepare) prepare ;;
    carry) carry "$2" ;;
    run) shift; run "$@" ;;
    *) echo "usage: bench/gpu.sh prepare | carry K | run [bench/gpu.py options]" >&2; exit 2 ;;
esac
