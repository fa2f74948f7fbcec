"""Benchmark: INT8 static quantisation on the CPU, parity and speed (issue 13, item 5).

The phantom-trained small models are quantised with ``trainer.quantize``
(calibration: phantoms of every class), then compared with their float
originals on held-out phantoms: top-class agreement and the mean absolute
difference of the probabilities. Speed, images/s through ``Classifier`` at
several batch sizes, float against INT8 in the same run; with
``--inception``, InceptionV3 at 299 too (random weights: its speed only,
since the parity of untrained weights says nothing).

Run: .venv/bin/python bench/int8.py [--held-out 100] [--inception-onnx FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from timing import images_per_second

from model_runtime.classifier import Classifier
from phantoms import trained_models
from phantoms.images import labels_for, render
from trainer.quantize import quantize_package


def phantoms(modality: str, per_class: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = labels_for(modality)
    return [render(modality, label, rng).image for label in labels for _ in range(per_class)]


def speed_table(title: str, float_model: Path, int8_model: Path, rows: np.ndarray, args) -> None:
    plain, quantized = Classifier(float_model, "cpu"), Classifier(int8_model, "cpu")
    print(f"\n{title}: images/s")
    print(f"{'batch':>6}{'float32':>10}{'int8':>10}{'int8/float':>12}")
    for size in (int(b) for b in args.batches.split(",")):
        batch = np.resize(rows, (size, *rows.shape[1:]))
        a = images_per_second(plain.predict, batch, args.seconds)
        b = images_per_second(quantized.predict, batch, args.seconds)
        print(f"{size:>6}{a:>10.1f}{b:>10.1f}{b / a:>12.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=50, help="phantoms per class")
    parser.add_argument("--held-out", type=int, default=100, help="phantoms per class")
    parser.add_argument("--batches", default="1,16,32")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--inception-onnx", type=Path, help="InceptionV3 ONNX (random weights)")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    packages = trained_models.committed_packages()
    assert packages is not None, "phantoms/trained is stale: make phantom-models"
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        print(f"{'model':<14}{'held-out':>9}{'agreement':>11}{'mean |dp|':>11}")
        for modality, package in packages.items():
            held_out = phantoms(modality, args.held_out, seed=2)
            with contextlib.redirect_stdout(io.StringIO()):  # the quantiser's ranges
                _manifest, parity = quantize_package(
                    package,
                    folder / modality,
                    phantoms(modality, args.calibration, seed=1),
                    held_out,
                    min_agreement=0.0,
                )
            print(
                f"{'small ' + modality:<14}{parity.images:>9}{parity.agreement:>11.2%}"
                f"{parity.mean_abs_difference:>11.4f}",
                flush=True,
            )
            float_classifier = Classifier(package, "cpu")
            rows = np.stack([float_classifier.prepare(image) for image in held_out[:32]])
            speed_table(f"small CNN {modality} 128x128", package, folder / modality, rows, args)
        if args.inception_onnx:
            from batching import inception_package

            package = inception_package(folder, args.inception_onnx)
            images = phantoms("oct", 8, seed=3)
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_package(package, folder / "inception-int8", images, images, 0.0)
            rows = np.stack([Classifier(package, "cpu").prepare(image) for image in images])
            speed_table(
                "InceptionV3 299x299 (random weights)",
                package,
                folder / "inception-int8",
                rows,
                args,
            )


if __name__ == "__main__":
    main()
