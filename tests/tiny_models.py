"""Model packages built by hand in ONNX, for tests of the workers that need a
classifier but not a trained one (training takes minutes; this, milliseconds).

The graph takes the mean brightness of the image and maps it linearly to
the logits of the package's labels: a real ONNX model that ONNX Runtime
loads and runs like any other, whose answers are simply not learnt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from domain.triage import PAPER_REFERRALS, TriageModality
from model_runtime.package import InputSpec, Manifest, write_package

SIZE = 32
LABELS = {
    TriageModality.OCT: ("CNV", "DME", "DRUSEN", "NORMAL"),
    TriageModality.CXR: ("BACTERIA", "NORMAL", "VIRUS"),
}


def write_tiny_package(directory: Path, modality: TriageModality) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    labels = LABELS[modality]
    count = len(labels)
    weights = np.linspace(-2.0, 2.0, count, dtype=np.float32).reshape(1, count)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0),
            helper.make_node("Unsqueeze", ["mean", "one"], ["column"]),
            helper.make_node("MatMul", ["column", "weights"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, SIZE, SIZE, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, count])],
        initializer=[
            numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(weights, "weights"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    write_package(
        directory,
        model.SerializeToString(),
        Manifest(
            name=f"tiny-{modality.value}",
            version="1",
            modality=modality,
            task=f"{modality.value}-tiny",
            labels=labels,
            referrals={label: PAPER_REFERRALS[label] for label in labels},
            input=InputSpec(height=SIZE, width=SIZE, channels=1, scaling="zero_one"),
            onnx_sha256="",
            training={},
        ),
    )
    return directory
