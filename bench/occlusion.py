"""Benchmark: occlusion maps — cost per image by stride, the fast mode's
fidelity to the exact stride-1 map, and localisation on phantoms.

Small CNN (128x128, the phantom-trained models): every stride is measured on
OCT and chest phantoms. InceptionV3 (299x299): by default built with random
weights (speed does not depend on their values; ``--inception-package`` takes
a trained package instead). Its strides are measured while the time left in
``--budget-seconds`` allows and extrapolated from the measured passes per
second beyond that; its fast-versus-stride-1 fidelity is measured only when
stride 1 itself fits. On an H200 with the CUDA provider the whole run is
sized to finish in under five minutes; on a 2-core CPU, about three.

Run: .venv/bin/python bench/occlusion.py [--device auto|cpu|cuda]
     [--images 3] [--per-class 10] [--inception] [--budget-seconds 240]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from inception_model import SIZE, bound_predict, plain_predict, random_inception_v3

from dicom_io.pixels import decode_instance
from model_runtime.classifier import CUDA, Classifier
from model_runtime.occlusion import (
    BATCH,
    OcclusionMap,
    Predict,
    grid_positions,
    occlusion_map,
    peak,
    peak_in_lesion,
)
from phantoms.demo import ensure_models
from phantoms.files import write_dicom_studies

LESION_CLASSES = {"oct": ("CNV", "DME", "DRUSEN"), "cxr": ("BACTERIA", "VIRUS")}
MODES = (("grid", 20), ("grid", 10), ("grid", 4), ("grid", 1), ("fast", 1))


@dataclasses.dataclass
class Row:
    label: str
    passes: int
    seconds: float
    correlation: float | None = None
    same_top: float | None = None
    measured: bool = True


def label_of(mode: str, stride: int) -> str:
    return "fast" if mode == "fast" else f"stride {stride}"


def passes_at(size: int, stride: int, box: int = 20) -> int:
    return len(grid_positions(size, box, stride)) ** 2 + 1


def fidelity(maps: list[OcclusionMap], exact: list[OcclusionMap]) -> tuple[float, float]:
    """Mean Pearson r with the stride-1 maps, and the share of images whose
    peak lies in the stride-1 map's top region (within 10% of its maximum)."""
    pairs = list(zip(maps, exact, strict=True))
    correlation = float(
        np.mean([np.corrcoef(m.values.ravel(), e.values.ravel())[0, 1] for m, e in pairs])
    )
    same_top = float(np.mean([e.values[peak(m.values)] >= 0.9 * e.values.max() for m, e in pairs]))
    return correlation, same_top


def print_header(title: str) -> None:
    print(f"\n{title}")
    print(f"{'mode':<10}{'passes':>8}{'s/image':>10}{'r vs stride 1':>15}{'same top':>10}")


def print_row(row: Row) -> None:
    r = "-" if row.correlation is None else f"{row.correlation:.4f}"
    top = "-" if row.same_top is None else f"{row.same_top:.0%}"
    note = "" if row.measured else "  (extrapolated)"
    print(f"{row.label:<10}{row.passes:>8}{row.seconds:>10.2f}{r:>15}{top:>10}{note}", flush=True)


def print_table(title: str, rows: list[Row]) -> None:
    print_header(title)
    for row in rows:
        print_row(row)


def phantom_inputs(
    classifier: Classifier, modality: str, count: int, seed: int
) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory() as folder:
        root = write_dicom_studies(modality, Path(folder), count, seed=seed)
        truth = json.loads((root / "lesions.json").read_text())
        urgent = LESION_CLASSES[modality][0]
        paths = [root / rel for rel, rec in sorted(truth.items()) if rec["label"] == urgent]
        return [classifier.prepare(decode_instance(p).image) for p in paths[:count]]


def small_cnn_table(models: Path, modality: str, images: int, device: str) -> None:
    classifier = Classifier(models / modality, device=device)
    inputs = phantom_inputs(classifier, modality, images, seed=5)
    exact = [occlusion_map(classifier.predict, x, mode="grid", stride=1) for x in inputs]
    rows = []
    for mode, stride in MODES:
        maps = (
            exact
            if (mode, stride) == ("grid", 1)
            else [occlusion_map(classifier.predict, x, mode=mode, stride=stride) for x in inputs]
        )
        correlation, same_top = fidelity(maps, exact)
        rows.append(
            Row(
                label_of(mode, stride),
                maps[0].forward_passes,
                float(np.mean([m.seconds for m in maps])),
                correlation,
                same_top,
            )
        )
    binding = "I/O binding" if classifier.binding is not None else "plain run"
    urgent = LESION_CLASSES[modality][0]
    print_table(
        f"small CNN 128x128, {modality.upper()} {urgent} phantoms x{len(inputs)}, "
        f"{classifier.provider} ({binding})",
        rows,
    )


def localisation(models: Path, per_class: int, device: str) -> None:
    print(
        "\nlocalisation (fast mode, mean fill): largest drop inside a lesion box, "
        f"{per_class} per class"
    )
    total: list[bool] = []
    for modality, seed in (("oct", 7), ("cxr", 8)):
        classifier = Classifier(models / modality, device=device)
        with tempfile.TemporaryDirectory() as folder:
            root = write_dicom_studies(modality, Path(folder), per_class, seed=seed)
            truth = json.loads((root / "lesions.json").read_text())
            hits: dict[str, list[bool]] = {}
            for relative, record in sorted(truth.items()):
                if record["label"] not in LESION_CLASSES[modality]:
                    continue
                image = decode_instance(root / relative).image
                result = occlusion_map(classifier.predict, classifier.prepare(image))
                hits.setdefault(record["label"], []).append(
                    peak_in_lesion(result, image.shape[0], image.shape[1], record["boxes"])
                )
        for label, found in hits.items():
            total.extend(found)
            print(f"  {label:<9} {sum(found)}/{len(found)} = {sum(found) / len(found):.0%}")
    print(f"  {'all':<9} {sum(total)}/{len(total)} = {sum(total) / len(total):.0%}")


def inception_under_test(package: Path | None, device: str) -> tuple[Predict, str, np.ndarray]:
    """(predict, provider, one model input), with I/O binding on CUDA as the daemon does.

    A trained package gets one of its own modality's urgent phantoms; the
    random-weights model a random image.
    """
    if package is not None:
        classifier = Classifier(package, device=device)
        modality = classifier.manifest.modality.value
        image = phantom_inputs(classifier, modality, 1, seed=5)[0]
        return classifier.predict, classifier.provider, image
    session, provider = random_inception_v3(device)
    image = np.random.default_rng(0).random((SIZE, SIZE, 3)).astype(np.float32)
    if provider == CUDA:
        return bound_predict(session, provider), provider, image
    return plain_predict(session), provider, image


def inception_table(package: Path | None, device: str, budget: float) -> None:
    predict, provider, image = inception_under_test(package, device)
    size = image.shape[0]
    predict(np.repeat(image[None], BATCH, axis=0))  # warm-up: kernels, buffers
    deadline = time.perf_counter() + budget
    started = time.perf_counter()
    measured = occlusion_map(predict, image, mode="grid", stride=20)
    rate = measured.forward_passes / (time.perf_counter() - started)
    print(f"\nInceptionV3 {size}x{size} on {provider}: {rate:.1f} forward passes/s (stride 20)")
    what = "trained package" if package is not None else "random weights"
    print_header(f"InceptionV3 {size}x{size} ({what}), 1 image, {provider}, budget {budget:.0f} s")

    def fits(passes: int) -> bool:
        return time.perf_counter() + passes / rate <= deadline

    # Stride 1 first, when it fits: every other row is compared with it.
    exact = None
    if fits(passes_at(size, 1)):
        exact = occlusion_map(predict, image, mode="grid", stride=1)
    for mode, stride in MODES:
        label = label_of(mode, stride)
        passes = passes_at(size, 1) // 20 if mode == "fast" else passes_at(size, stride)
        if (mode, stride) == ("grid", 1) and exact is not None:
            result = exact
        elif (mode, stride) == ("grid", 20):
            result = measured
        elif (mode, stride) != ("grid", 1) and fits(passes):
            result = occlusion_map(predict, image, mode=mode, stride=stride)
            rate = result.forward_passes / result.seconds
        else:
            print_row(Row(label, passes, passes / rate, measured=False))
            continue
        row = Row(label, result.forward_passes, result.seconds)
        if exact is not None:
            row.correlation, row.same_top = fidelity([result], [exact])
        print_row(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--images", type=int, default=3, help="phantoms per small-CNN table")
    parser.add_argument(
        "--per-class", type=int, default=10, help="phantoms per class, localisation"
    )
    parser.add_argument("--state-dir", default="var/bench")
    parser.add_argument("--inception", action="store_true", help="also time InceptionV3 at 299")
    parser.add_argument("--inception-package", type=Path, help="a trained InceptionV3 package")
    parser.add_argument(
        "--budget-seconds", type=float, default=240, help="InceptionV3 measuring time"
    )
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    state = Path(args.state_dir).absolute()
    ensure_models(state)
    models = state / "models"
    for modality in ("oct", "cxr"):
        small_cnn_table(models, modality, args.images, args.device)
    localisation(models, args.per_class, args.device)
    if args.inception or args.inception_package:
        inception_table(args.inception_package, args.device, args.budget_seconds)


if __name__ == "__main__":
    main()
