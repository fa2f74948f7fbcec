"""Benchmark: bottleneck extraction and head training on this machine's CPU.

Prints images/s for InceptionV3 (299x299) and the small CNN (128x128), and
the wall time to train the softmax head on 100,000 cached 2048-dimensional
feature vectors exactly as the trainer does (Adam, lr 0.001, batches of
1,000, 100 epochs = 10,000 steps, holdout evaluated after every step).
Extraction speed does not depend on the weights' values, so random weights
stand in for ImageNet's, which cannot be downloaded here.

Run: .venv/bin/python bench/training_speed.py [--images 64] [--vectors 100000]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from phantoms.files import write_jpeg_dataset
from trainer.backbones import BACKBONES, build_base
from trainer.bottlenecks import load_batch
from trainer.head import train_head


def extraction_rate(backbone_name: str, paths: list[Path], batch: int = 32) -> float:
    backbone = BACKBONES[backbone_name]
    base = build_base(backbone, None)
    base.predict(load_batch(paths[:batch], backbone.input_spec), verbose=0)  # warm up
    started = time.perf_counter()
    for start in range(0, len(paths), batch):
        images = load_batch(paths[start : start + batch], backbone.input_spec)
        base.predict(images, verbose=0)
    return len(paths) / (time.perf_counter() - started)


def head_seconds(vectors: int, epochs: int) -> tuple[float, int]:
    rng = np.random.default_rng(0)
    classes = 4
    centres = rng.normal(0, 1, (classes, 2048)).astype(np.float32)
    labels = rng.integers(0, classes, vectors)
    features = centres[labels] + rng.normal(0, 3, (vectors, 2048)).astype(np.float32)
    hold_labels = rng.integers(0, classes, 1000)
    hold = centres[hold_labels] + rng.normal(0, 3, (1000, 2048)).astype(np.float32)
    started = time.perf_counter()
    result = train_head(features, labels, hold, hold_labels, classes, epochs=epochs)
    return time.perf_counter() - started, len(result.history["train_loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as folder:
        root = write_jpeg_dataset("oct", Path(folder), args.images // 4 + 1, seed=1)
        paths = sorted(root.rglob("*.jpeg"))[: args.images]
        for name in ("inception_v3", "small_cnn"):
            print(
                f"bottleneck extraction, {name}: {extraction_rate(name, paths):.1f} images/s "
                f"({len(paths)} OCT phantoms, batch 32)"
            )
    seconds, steps = head_seconds(args.vectors, args.epochs)
    print(
        f"head training, {args.vectors} x 2048 features, batch 1000, {args.epochs} epochs "
        f"({steps} steps, holdout of 1000 after each): {seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
