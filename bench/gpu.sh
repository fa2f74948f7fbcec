#!/usr/bin/env bash
# The GPU path, proven on a lent device in one session (issue 13, item 6).
#
# onnxruntime-gpu (a 255 MB wheel) and the InceptionV3 ONNX file together
# exceed what one device call carries (64 MiB), so they travel in chunks:
#
#   here:      bench/gpu.sh prepare          # wheels + models -> .gpu1/ ... .gpuN/
#   device:    bench/gpu.sh carry K          # one call per chunk, back to back,
#                                            # carry: [".gpuK"]
#   device:    bench/gpu.sh run              # join, verify, install; bench/gpu.py
#   device:    bench/gpu.sh daemon           # the daemon itself on CUDA: the flood
#                                            # bench (bench/batching.py), then the demo
#
# The daemon's own dependencies travel as Python 3.12 wheels (the device's
# Python); numpy, pillow and prometheus-client are the device image's own.
#
# The machine keeps /tmp only while it is warm (about 30 s after a call), so
# the calls must follow each other at once; "run" says which chunks are
# missing if the machine was given back in between. Figures go to $OUT
# (gpu.txt, gpu.json); copy them into bench/README.md.
set -euo pipefail

WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
# The daemon's dependencies that the device image lacks, at pyproject.toml's
# versions, with what they need in turn (highdicom: pyjpegls; alembic: mako).
DAEMON_WHEELS=(pydicom==3.0.2 pynetdicom==3.0.4 highdicom==0.28.2 pyjpegls==1.5.1
    pylibjpeg==2.1.0 pylibjpeg-libjpeg==2.5.0 pylibjpeg-openjpeg==2.6.0 pylibjpeg-rle==2.2.0
    sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3)
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
    local platforms=(--platform manylinux2014_x86_64)
    for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d "$work/payload/wheels" "${DAEMON_WHEELS[@]}"
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

install() {
    local parts=$STAGE/parts
    if [[ -f $STAGE/site/.installed ]]; then
        return
    fi
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
        "$STAGE/payload/$WHEEL" "$STAGE"/payload/wheels/*.whl
    touch "$STAGE/site/.installed"
}

environment() {
    local site
    site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # CUDA 13 and cuDNN 9 come from the nvidia-* wheels of the image's Python.
    LD_LIBRARY_PATH=$(find "$site/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
    export LD_LIBRARY_PATH
    export PYTHONPATH=$STAGE/site:$HERE
    export PYTHONUNBUFFERED=1
}

run() {
    install
    environment
    nvidia-smi || true
    python3 "$HERE/bench/gpu.py" --payload "$STAGE/payload" --device cuda --out "${OUT:-$STAGE/out}" "$@"
}

daemon() {
    install
    environment
    local out=${OUT:-$STAGE/out}
    mkdir -p "$out"
    # Triage under a flood through the daemon's decode workers and batcher,
    # against bare ONNX Runtime at the same batch size, on CUDA.
    python3 "$HERE/bench/batching.py" --device cuda --inception-onnx "$STAGE/payload/inception_v3.onnx" \
        --decode-workers "${DECODE_WORKERS:-8}" --batches "${BATCHES:-1,32,128}" "$@" \
        2>&1 | tee "$out/batching.txt" || echo "batching.py failed: $?"
    # The demo: a real `triage serve` process on CUDA, phantom studies pushed
    # to it, SRs back at a demo PACS. No LD_LIBRARY_PATH: the daemon loads
    # CUDA and cuDNN from the nvidia-* wheels itself (preload_dlls).
    env -u LD_LIBRARY_PATH TRIAGE_MODELS_DEVICE=cuda TRIAGE_LOGGING_LEVEL=DEBUG \
        python3 -m daemon.cli demo --state-dir "$STAGE/demo" >"$out/demo.txt" 2>&1 \
        || echo "demo failed: $?"
    echo "images triaged on CUDA in the demo: $(grep -c 'on CUDAExecutionProvider' "$out/demo.txt" || true)"
    grep -m6 -E "triaged:|urgent referral|CUDA|preload|provider" "$out/demo.txt" || true
    tail -5 "$out/demo.txt"
}

case "${1:-}" in
    prepare) prepare ;;
    carry) carry "$2" ;;
    run) shift; run "$@" ;;
    daemon) shift; daemon "$@" ;;
    *) echo "usage: bench/gpu.sh prepare | carry K | run [gpu.py options] | daemon [batching.py options]" >&2; exit 2 ;;
esac
