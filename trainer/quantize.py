"""INT8 static quantisation of a model package, for CPUs (issue 13, item 5).

ONNX Runtime's static quantisation (QDQ format, per-channel weights)
calibrated on images prepared exactly as the daemon prepares them. Only the
convolutions are quantised, except the first, which sees the raw image:
quantising it cost the phantom OCT model 3% of its top-class agreement, and
the classification head stays in float too. The result is a new package
(its own hash, version suffix ``-int8``) whose manifest records how it was
made and the parity measured against the float model on held-out images;
below ``min_agreement`` top-class agreement nothing is written.

Measured (bench/README.md): InceptionV3 runs about twice as fast on two
cores; a model as small as the phantom CNN runs slower, its quantise and
dequantise steps costing more than the arithmetic saved.

Needs ``onnx`` (the ``train`` extra); not TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from domain.errors import TriageError
from model_runtime.classifier import Classifier
from model_runtime.package import MODEL_NAME, Manifest, load_package, write_package

# The bar: at least 99% of top classes unchanged.
MIN_AGREEMENT = 0.99


@dataclasses.dataclass(frozen=True)
class Parity:
    agreement: float  # share of images whose top class is unchanged
    mean_abs_difference: float  # of the class probabilities
    images: int


def _first_convolution(model_path: Path) -> str | None:
    import onnx

    graph = onnx.load(str(model_path)).graph
    return next((node.name for node in graph.node if node.op_type == "Conv"), None)


def _batches(rows: np.ndarray, input_name: str) -> Iterator[dict[str, np.ndarray]]:
    for row in rows:
        yield {input_name: row[None]}


def parity(reference: Classifier, candidate: Classifier, rows: np.ndarray) -> Parity:
    """How far ``candidate`` strays from ``reference`` on prepared ``rows``."""
    expected = reference.predict(rows)
    got = candidate.predict(rows)
    return Parity(
        agreement=float((expected.argmax(axis=1) == got.argmax(axis=1)).mean()),
        mean_abs_difference=float(np.abs(expected - got).mean()),
        images=len(rows),
    )


def quantize_package(
    package: Path,
    out: Path,
    calibration: Sequence[np.ndarray],
    held_out: Sequence[np.ndarray],
    min_agreement: float = MIN_AGREEMENT,
) -> tuple[Manifest, Parity]:
    """Write an INT8 copy of ``package`` to ``out``; its manifest and parity.

    ``calibration`` and ``held_out`` are grey images in [0, 1] (any size),
    prepared here as the daemon prepares them.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration or not held_out:
        raise TriageError("Quantisation needs calibration images and held-out images.")
    manifest, model_path = load_package(package)
    reference = Classifier(package, device="cpu")
    calibration_rows = np.stack([reference.prepare(image) for image in calibration])
    held_out_rows = np.stack([reference.prepare(image) for image in held_out])
    input_name = manifest.input.tensor_name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = _batches(calibration_rows, input_name)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    first = _first_convolution(model_path)
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quantized = Path(folder) / MODEL_NAME
        quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=[first] if first else [],
        )
        onnx_bytes = quantized.read_bytes()
        staged = Path(folder) / "package"
        described = dataclasses.replace(
            manifest,
            version=f"{manifest.version}-int8",
            training={
                **manifest.training,
                "quantization": _description(manifest, calibration_rows, first),
            },
        )
        write_package(staged, onnx_bytes, described)
        measured = parity(reference, Classifier(staged, device="cpu"), held_out_rows)
        if measured.agreement < min_agreement:
            raise TriageError(
                f"The INT8 model keeps the top class of only {measured.agreement:.1%} of "
                f"{measured.images} held-out images (at least {min_agreement:.0%} needed); "
                "nothing written."
            )
        final = dataclasses.replace(
            described,
            training={
                **described.training,
                "quantization": {
                    **described.training["quantization"],
                    "parity": dataclasses.asdict(measured),
                },
            },
        )
        return write_package(out, onnx_bytes, final), measured


def _description(manifest: Manifest, calibration: np.ndarray, first: str | None) -> dict[str, Any]:
    return {
        "method": "onnxruntime static quantization, QDQ, per-channel int8 weights, "
        "uint8 activations, percentile calibration; convolutions only, not the first",
        "excluded_nodes": [first] if first else [],
        "calibration_images": len(calibration),
        "calibration_sha256": hashlib.sha256(calibration.tobytes()).hexdigest(),
        "float_model_sha256": manifest.onnx_sha256,
    }
