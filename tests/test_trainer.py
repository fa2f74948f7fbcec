"""The trainer on phantoms: learning, the frozen path, its cache, parity, offline weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from domain.errors import TriageError

# The trainer's tests train; TensorFlow is imported inside them, so that
# collecting the fast suite does not load it.
pytestmark = pytest.mark.training


@pytest.mark.parametrize("modality", ["oct", "cxr"])
def test_small_backbone_from_scratch_learns_phantoms(
    modality: str, trained_packages: dict[str, Path]
) -> None:
    package = trained_packages[modality]
    manifest = json.loads((package / "manifest.json").read_text())
    training = manifest["training"]
    assert training["test_metrics"]["accuracy"] >= 0.95
    assert "from scratch" in training["method"]
    assert training["onnx_parity"]["max_abs_difference"] <= 1e-4
    assert training["onnx_parity"]["same_top_class"] is True
    assert training["onnx_opset"] == 15
    assert len(training["data_sha256"]) == 64
    assert set(training["counts"]) == {"train", "holdout", "test"}
    assert training["patients"]["holdout"] > 0
    metrics = json.loads((package / "evaluation" / "metrics.json").read_text())
    assert metrics["accuracy"]["value"] == training["test_metrics"]["accuracy"]
    for plot in ("roc.png", "confusion_matrix.png", "training_curves.png"):
        assert (package / "evaluation" / plot).read_bytes()[:4] == b"\x89PNG"
    history = json.loads((package / "history.json").read_text())
    assert len(history["train_loss"]) >= training["epochs"]
    # Accuracy and cross-entropy of every step, for training and holdout (Figure 3).
    assert len(history["holdout_accuracy"]) == len(history["train_loss"])
    assert history["holdout_loss"][-1] < history["holdout_loss"][0]


def _weights(path: Path) -> list[np.ndarray]:
    from trainer.backbones import BACKBONES, build_base

    base = build_base(BACKBONES["small_cnn"], str(path))
    return [np.asarray(w) for w in base.get_weights()]


def test_frozen_base_cached_bottlenecks_and_seed(
    trained_packages: dict[str, Path], tmp_path: Path
) -> None:
    from phantoms.files import write_jpeg_dataset
    from trainer.train import BASE_WEIGHTS_FILE, TrainOptions, train

    # A small OCT data set of its own: the frozen path, not accuracy, is under test.
    data = tmp_path / "data"
    write_jpeg_dataset("oct", data, 20, seed=9)
    base_weights = trained_packages["oct"] / BASE_WEIGHTS_FILE
    options = TrainOptions(
        modality="oct",
        data=data,
        out=tmp_path / "first",
        backbone="small_cnn",
        base_weights=str(base_weights),
        epochs=300,
        seed=3,
        cache_dir=tmp_path / "cache",
    )
    first = train(options)
    images = sum(1 for _ in (data / "OCT2017" / "train").rglob("*.jpeg"))
    assert first.features_computed == images

    second = train(TrainOptions(**{**options.__dict__, "out": tmp_path / "second"}))
    assert second.features_computed == 0

    for before, after in zip(
        _weights(base_weights), _weights(first.package / BASE_WEIGHTS_FILE), strict=True
    ):
        assert np.array_equal(before, after)

    manifests = [json.loads((run.package / "manifest.json").read_text()) for run in (first, second)]
    assert "frozen base" in manifests[0]["training"]["method"]
    assert manifests[0]["training"]["batch_size"] == 1000
    # Same seed, same result (in one process Keras renames layers, so compare outputs).
    from model_runtime.classifier import Classifier
    from trainer.bottlenecks import load_batch

    test_images = sorted((data / "OCT2017" / "test").rglob("*.jpeg"))[:24]
    outputs = []
    for run in (first, second):
        classifier = Classifier(run.package, device="cpu")
        outputs.append(classifier.predict(load_batch(test_images, classifier.manifest.input)))
    assert np.array_equal(outputs[0], outputs[1])
    assert first.test_metrics is not None
    assert first.test_metrics["accuracy"]["value"] >= 0.9
    history = json.loads((first.package / "history.json").read_text())
    assert len(history["holdout_accuracy"]) == len(history["train_accuracy"])


def test_parity_refuses_a_disagreeing_export(trained_packages: dict[str, Path]) -> None:
    import keras

    from model_runtime.package import Manifest
    from trainer.export import parity, to_onnx

    manifest = Manifest.from_json((trained_packages["cxr"] / "manifest.json").read_text())
    spec = manifest.input
    inputs = keras.Input((spec.height, spec.width, spec.channels), name=spec.tensor_name)
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(pooled)
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).random((4, spec.height, spec.width, spec.channels))
    images = images.astype(np.float32)
    exported = to_onnx(model, manifest)
    assert parity(exported, model, images, spec.tensor_name)["max_abs_difference"] <= 1e-4
    other = keras.models.clone_model(model)
    rng = np.random.default_rng(1)
    # A constant shift would cancel in the softmax; perturb each weight differently.
    other.set_weights([w + rng.normal(0, 1, w.shape) for w in model.get_weights()])
    with pytest.raises(TriageError, match="disagrees"):
        parity(exported, other, images, spec.tensor_name)


@pytest.mark.network
def test_offline_imagenet_names_the_file_to_place(tmp_path: Path) -> None:
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon.cli",
            "train",
            "--modality",
            "oct",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "--backbone",
            "inception_v3",
            "--base-weights",
            "imagenet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in result.stderr
    assert str(tmp_path / "keras" / "models") in result.stderr
