"""Export a Keras classifier (base and head in one graph) to a model package.

The conversion is tf2onnx's ``from_keras`` at opset 15 with a dynamic batch
dimension. Before the package is written, ONNX Runtime and Keras are run on
held-out images: the softmax may differ by at most 1e-4 and the top class
must be the same, or nothing is written. The result goes into the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from domain.errors import TriageError
from model_runtime.package import Manifest, write_package

logger = logging.getLogger(__name__)

ONNX_OPSET = 15
MAX_ABS_DIFFERENCE = 1e-4


def to_onnx(model: Any, manifest: Manifest) -> bytes:
    """Convert ``model`` with one input named ``manifest.input.tensor_name``."""
    import tensorflow as tf
    import tf2onnx

    spec = manifest.input
    signature = (
        tf.TensorSpec(
            (None, spec.height, spec.width, spec.channels), tf.float32, name=spec.tensor_name
        ),
    )
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=ONNX_OPSET)
    return bytes(proto.SerializeToString())


def parity(onnx_bytes: bytes, model: Any, inputs: np.ndarray, tensor_name: str) -> dict[str, Any]:
    """Compare ONNX Runtime with Keras on ``inputs``; raise if they disagree."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    exported = np.asarray(session.run(None, {tensor_name: inputs})[0])
    expected = np.asarray(model.predict(inputs, verbose=0))
    difference = float(np.max(np.abs(exported - expected)))
    same_top = bool(np.all(exported.argmax(axis=1) == expected.argmax(axis=1)))
    if difference > MAX_ABS_DIFFERENCE or not same_top:
        raise TriageError(
            f"The ONNX export disagrees with Keras (max |difference| {difference:.2e}, "
            f"same top class: {same_top}); refusing to write the package."
        )
    return {"images": len(inputs), "max_abs_difference": difference, "same_top_class": same_top}


def export_package(model: Any, manifest: Manifest, out: Path, check_inputs: np.ndarray) -> Manifest:
    """Convert, check parity, write the package; return the manifest as written."""
    onnx_bytes = to_onnx(model, manifest)
    check = parity(onnx_bytes, model, check_inputs, manifest.input.tensor_name)
    logger.info(
        "ONNX parity on %d held-out images: max |onnx - keras| = %.2e",
        check["images"],
        check["max_abs_difference"],
    )
    checked = dataclasses.replace(
        manifest, training={**manifest.training, "onnx_parity": check, "onnx_opset": ONNX_OPSET}
    )
    return write_package(out, onnx_bytes, checked)
