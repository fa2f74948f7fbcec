"""Export a Keras classifier to ONNX with tf2onnx and write a model package.

The exported graph is checked against Keras on real inputs before the
package is written: a package never holds a model that disagrees with the
one that was trained.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from daemon.errors import TriageError
from storage.model_package import Manifest, write_package

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
MAX_ABS_DIFFERENCE = 1e-4


def to_onnx(model: Any, manifest: Manifest) -> bytes:
    """Convert ``model`` to ONNX with input ``manifest.input.tensor_name``."""
    import tensorflow as tf
    import tf2onnx

    spec = manifest.input
    signature = (
        tf.TensorSpec(
            (None, spec.height, spec.width, spec.channels), tf.float32, name=spec.tensor_name
        ),
    )

    @tf.autograph.experimental.do_not_convert
    def serve(image: Any) -> dict[str, Any]:
        return {"probabilities": model(image, training=False)}

    function = tf.function(serve, input_signature=signature)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=ONNX_OPSET)
    return bytes(proto.SerializeToString())


def verify_onnx(onnx_bytes: bytes, model: Any, inputs: np.ndarray, tensor_name: str) -> float:
    """Return the largest difference between ONNX Runtime and Keras on ``inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    exported = session.run(None, {tensor_name: inputs})[0]
    expected = model.predict(inputs, verbose=0)
    difference = float(np.max(np.abs(exported - expected)))
    if difference > MAX_ABS_DIFFERENCE:
        raise TriageError(
            f"The ONNX export differs from the Keras model by {difference:.2e} "
            f"(more than {MAX_ABS_DIFFERENCE:.0e}); refusing to write the package."
        )
    return difference


def export_package(model: Any, manifest: Manifest, out: Path, check_inputs: np.ndarray) -> Path:
    """Convert, verify and write the package to ``out``."""
    onnx_bytes = to_onnx(model, manifest)
    difference = verify_onnx(onnx_bytes, model, check_inputs, manifest.input.tensor_name)
    logger.info("ONNX export verified: max |onnx - keras| = %.2e", difference)
    return write_package(out, onnx_bytes, manifest)
