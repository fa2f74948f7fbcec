"""Benchmark: batch inference throughput through the daemon's Classifier.

Images per second by batch size, with a plain ``session.run`` and with
ONNX Runtime I/O binding, for the phantom-trained small CNN (128x128) and,
with ``--inception``, InceptionV3 at 299x299 (random weights; speed does not
depend on their values). Every figure is the median of ``--repeats`` timed
runs after one warm-up run. Also the latency of one whole phantom study
through decode + prepare + classify, as the pipeline does it.

Run: .venv/bin/python bench/inference.py [--device auto|cpu|cuda] [--inception]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from inception_model import SIZE, bound_predict, plain_predict, random_inception_v3

from daemon.pipeline import classify_file
from model_runtime.classifier import Classifier
from model_runtime.occlusion import Predict
from phantoms.demo import ensure_models
from phantoms.files import write_dicom_studies

BATCH_SIZES = (1, 8, 32, 64)


def images_per_second(predict: Predict, batch: np.ndarray, repeats: int) -> float:
    predict(batch)  # warm-up: kernels, buffers
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict(batch)
        timings.append(time.perf_counter() - started)
    return len(batch) / statistics.median(timings)


def throughput_table(
    title: str, predictors: dict[str, Predict], shape: tuple[int, int, int], repeats: int
) -> None:
    print(f"\n{title}")
    print(f"{'batch':>6}" + "".join(f"{name:>16}" for name in predictors) + "   (images/s)")
    rng = np.random.default_rng(0)
    for size in BATCH_SIZES:
        batch = rng.random((size, *shape), dtype=np.float32)
        rates = [images_per_second(predict, batch, repeats) for predict in predictors.values()]
        print(f"{size:>6}" + "".join(f"{rate:>16.1f}" for rate in rates), flush=True)


def small_cnn(models: Path, device: str, repeats: int) -> None:
    for modality in ("oct", "cxr"):
        plain = Classifier(models / modality, device=device, io_binding=False)
        bound = Classifier(models / modality, device=device, io_binding=True)
        spec = plain.manifest.input
        throughput_table(
            f"small CNN {spec.height}x{spec.width} ({modality}) on {plain.provider}",
            {"plain run": plain.predict, "I/O binding": bound.predict},
            (spec.height, spec.width, spec.channels),
            repeats,
        )


def study_latency(models: Path, device: str) -> None:
    """Decode + prepare + classify of whole phantom files, as the pipeline does."""
    with tempfile.TemporaryDirectory() as folder:
        for modality in ("oct", "cxr"):
            classifier = Classifier(models / modality, device=device)
            root = write_dicom_studies(modality, Path(folder), 3, seed=13)
            files = sorted(root.rglob("*.dcm"))
            classify_file(files[0], classifier)  # warm-up
            for all_frames in (False, True) if modality == "oct" else (False,):
                started = time.perf_counter()
                for path in files:
                    classify_file(path, classifier, all_frames)
                each = (time.perf_counter() - started) / len(files) * 1000
                what = "all B-scans" if all_frames else "one image"
                print(f"  {modality} ({what}): {each:.1f} ms per file, {len(files)} files")


def inception(device: str, repeats: int) -> None:
    session, provider = random_inception_v3(device)
    throughput_table(
        f"InceptionV3 {SIZE}x{SIZE} (random weights) on {provider}",
        {"plain run": plain_predict(session), "I/O binding": bound_predict(session, provider)},
        (SIZE, SIZE, 3),
        repeats,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--state-dir", default="var/bench")
    parser.add_argument("--inception", action="store_true", help="also InceptionV3 at 299")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    state = Path(args.state_dir).absolute()
    ensure_models(state)
    small_cnn(state / "models", args.device, args.repeats)
    print("\nwhole files through decode, prepare and classify (the pipeline's step):")
    study_latency(state / "models", args.device)
    if args.inception:
        inception(args.device, args.repeats)


if __name__ == "__main__":
    main()
