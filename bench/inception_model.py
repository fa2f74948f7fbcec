"""InceptionV3 at 299x299 with random weights, as an ONNX Runtime session.

For timing only: speed does not depend on the weights' values. Built and
exported as the trainer does (Keras, tf2onnx, opset 15, dynamic batch), so
it needs the ``train`` extra.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model_runtime.classifier import CUDA, create_session
from model_runtime.device_binding import DeviceBinding
from model_runtime.occlusion import Predict

SIZE = 299
CLASSES = 4


def save_random_inception_v3(path: Path) -> Path:
    """Write the random-weights InceptionV3 as an ONNX file at ``path``."""
    import keras
    import tensorflow as tf
    import tf2onnx

    base = keras.applications.InceptionV3(
        include_top=False, weights=None, pooling="avg", input_shape=(SIZE, SIZE, 3)
    )
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(base(inputs)))
    proto, _ = tf2onnx.convert.from_keras(
        model,
        input_signature=(tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="image"),),
        opset=15,
    )
    path.write_bytes(proto.SerializeToString())
    return path


def random_inception_v3(device: str) -> tuple[ort.InferenceSession, str]:
    """(session, provider) on the best provider ``device`` allows."""
    with tempfile.TemporaryDirectory() as folder:
        path = save_random_inception_v3(Path(folder) / "inception_v3.onnx")
        return create_session(path, device)


def plain_predict(session: ort.InferenceSession) -> Predict:
    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {"image": batch.astype(np.float32)})[0])

    return predict


def bound_predict(session: ort.InferenceSession, provider: str) -> Predict:
    device = "cuda" if provider == CUDA else "cpu"
    return DeviceBinding(session, CLASSES, device=device).run
