"""Benchmark: occlusion maps — cost per image by stride, the fast mode's
fidelity to the exact stride-1 map, and localisation on phantoms.

Small CNN (128x128): every stride is measured. InceptionV3 (299x299, random
weights: speed does not depend on their values): stride 20 is measured and
the others are extrapolated from its passes per second, since stride 1 takes
tens of minutes on a CPU. Run on a machine with CUDA to measure the GPU.

Run: .venv/bin/python bench/occlusion.py [--images 3] [--inception]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from daemon.demo import ensure_models
from daemon.inference import Classifier
from daemon.occlusion import grid_positions, occlusion_map, peak, to_source_geometry
from dicom_io.phantom_files import write_dicom_studies
from dicom_io.pixels import decode_instance

LESION_CLASSES = {"oct": ("CNV", "DME", "DRUSEN"), "cxr": ("BACTERIA", "VIRUS")}


def passes_at(size: int, stride: int, box: int = 20) -> int:
    return len(grid_positions(size, box, stride)) ** 2 + 1


def small_cnn_table(models: Path, images: int) -> None:
    classifier = Classifier(models / "oct", device="auto")
    with tempfile.TemporaryDirectory() as folder:
        root = write_dicom_studies("oct", Path(folder), images, seed=5)
        truth = json.loads((root / "lesions.json").read_text())
        paths = [root / rel for rel, rec in sorted(truth.items()) if rec["label"] == "CNV"]
        inputs = [classifier.prepare(decode_instance(p).image) for p in paths[:images]]
    print(f"\nsmall CNN 128x128 on {classifier.provider}, {len(inputs)} OCT CNV phantoms")
    print(f"{'mode':<10}{'passes':>8}{'s/image':>10}{'r vs stride 1':>15}{'same top':>10}")
    exact = [occlusion_map(classifier.predict, x, mode="grid", stride=1) for x in inputs]
    for mode, stride in (("grid", 20), ("grid", 10), ("grid", 4), ("grid", 1), ("fast", 1)):
        maps = [occlusion_map(classifier.predict, x, mode=mode, stride=stride) for x in inputs]
        seconds = float(np.mean([m.seconds for m in maps]))
        correlation = float(
            np.mean(
                [
                    np.corrcoef(m.values.ravel(), e.values.ravel())[0, 1]
                    for m, e in zip(maps, exact, strict=True)
                ]
            )
        )
        same_top = np.mean(
            [
                e.values[peak(m.values)] >= 0.9 * e.values.max()
                for m, e in zip(maps, exact, strict=True)
            ]
        )
        label = "fast" if mode == "fast" else f"stride {stride}"
        print(
            f"{label:<10}{maps[0].forward_passes:>8}{seconds:>10.2f}{correlation:>15.4f}"
            f"{same_top:>10.0%}"
        )


def localisation(models: Path, per_class: int) -> None:
    print(
        f"\nlocalisation (fast mode): largest drop inside the lesion region, {per_class} per class"
    )
    for modality, seed in (("oct", 7), ("cxr", 8)):
        classifier = Classifier(models / modality, device="auto")
        with tempfile.TemporaryDirectory() as folder:
            root = write_dicom_studies(modality, Path(folder), per_class, seed=seed)
            truth = json.loads((root / "lesions.json").read_text())
            hits: dict[str, list[bool]] = {}
            for relative, record in sorted(truth.items()):
                if record["label"] not in LESION_CLASSES[modality]:
                    continue
                decoded = decode_instance(root / relative)
                result = occlusion_map(classifier.predict, classifier.prepare(decoded.image))
                rows, cols = decoded.image.shape
                row, col = peak(to_source_geometry(result.values, rows, cols))
                margin = result.box * max(rows, cols) / result.values.shape[0] / 2
                boxes = record["boxes"]
                inside = (
                    min(b[0] for b in boxes) - margin <= col <= max(b[2] for b in boxes) + margin
                    and min(b[1] for b in boxes) - margin
                    <= row
                    <= max(b[3] for b in boxes) + margin
                )
                hits.setdefault(record["label"], []).append(inside)
        for label, values in hits.items():
            print(f"  {label:<9} {sum(values)}/{len(values)} = {sum(values) / len(values):.0%}")


def inception_table() -> None:
    import keras
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    base = keras.applications.InceptionV3(
        include_top=False, weights=None, pooling="avg", input_shape=(299, 299, 3)
    )
    inputs = keras.Input((299, 299, 3), name="image")
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(base(inputs)))
    proto, _ = tf2onnx.convert.from_keras(
        model,
        input_signature=(tf.TensorSpec((None, 299, 299, 3), tf.float32, name="image"),),
        opset=15,
    )
    session = ort.InferenceSession(
        proto.SerializeToString(), providers=ort.get_available_providers()
    )

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {"image": batch.astype(np.float32)})[0])

    image = np.random.default_rng(0).random((299, 299, 3)).astype(np.float32)
    started = time.perf_counter()
    measured = occlusion_map(predict, image, mode="grid", stride=20)
    rate = measured.forward_passes / (time.perf_counter() - started)
    print(
        f"\nInceptionV3 299x299 on {session.get_providers()[0]}: {rate:.1f} passes/s "
        f"(measured at stride 20)"
    )
    print(f"{'mode':<10}{'passes':>8}{'s/image':>10}")
    for label, passes in (
        ("stride 20", passes_at(299, 20)),
        ("stride 10", passes_at(299, 10)),
        ("stride 4", passes_at(299, 4)),
        ("stride 1", passes_at(299, 1)),
        ("fast", passes_at(299, 1) // 20),
    ):
        note = "" if label == "stride 20" else " (extrapolated)"
        print(f"{label:<10}{passes:>8}{passes / rate:>10.1f}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--state-dir", default="var/bench")
    parser.add_argument("--inception", action="store_true", help="also time InceptionV3")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    state = Path(args.state_dir).absolute()
    ensure_models(state)
    small_cnn_table(state / "models", args.images)
    localisation(state / "models", args.per_class)
    if args.inception:
        inception_table()


if __name__ == "__main__":
    main()
