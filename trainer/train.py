"""``triage train``: train a classifier on a data set and export a model package.

This first version trains a small CNN from scratch, which learns the
phantoms in a few minutes on two CPU cores. The paper's method (a frozen
ImageNet InceptionV3 with cached bottlenecks) builds on the same data
loading, holdout and export.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicom_io.codes import PAPER_REFERRALS, TriageModality
from dicom_io.preprocess import load_grey_file, model_input
from storage.model_package import InputSpec, Manifest
from trainer.datasets import (
    DEFAULT_TASK,
    TASK_LABELS,
    Sample,
    describe_counts,
    discover,
    limit_per_class,
    split_by_patient,
)
from trainer.export import export_package

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    modality: str
    data: Path
    out: Path
    task: str | None = None
    epochs: int = 25
    batch_size: int = 32
    learning_rate: float = 0.001
    image_size: int = 128
    holdout_fraction: float = 0.15
    limit_per_class: int | None = None
    seed: int = 0
    model_name: str | None = None


def load_arrays(samples: Sequence[Sample], spec: InputSpec, labels: Sequence[str]) -> tuple:
    images = np.stack(
        [
            model_input(
                load_grey_file(str(s.path)), spec.height, spec.width, spec.channels, spec.scaling
            )
            for s in samples
        ]
    )
    targets = np.array([labels.index(s.label) for s in samples], dtype=np.int64)
    return images, targets


def build_small_cnn(spec: InputSpec, classes: int) -> Any:
    """A small CNN for phantoms and tests; trained from scratch."""
    import keras

    inputs = keras.Input((spec.height, spec.width, spec.channels), name=spec.tensor_name)
    x = inputs
    for filters in (16, 32, 64, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def train(options: TrainOptions) -> Path:
    """Train, keep the best model on the patient-level holdout, export it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(options.seed)
    tf.config.experimental.enable_op_determinism()

    task = options.task or DEFAULT_TASK[options.modality]
    labels = TASK_LABELS[task]
    samples = discover(options.data, options.modality, task)
    development = limit_per_class(
        [s for s in samples if s.split == "train"], options.limit_per_class, options.seed
    )
    test = [s for s in samples if s.split == "test"]
    train_set, holdout = split_by_patient(development, options.holdout_fraction, options.seed)
    logger.info(
        "Images per class and split:\n%s",
        describe_counts({"train": train_set, "holdout": holdout, "test": test}),
    )

    spec = InputSpec(
        height=options.image_size, width=options.image_size, channels=1, scaling="zero_one"
    )
    x_train, y_train = load_arrays(train_set, spec, labels)
    x_hold, y_hold = load_arrays(holdout, spec, labels)

    model = build_small_cnn(spec, len(labels))
    model.compile(
        optimizer=keras.optimizers.Adam(options.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    best = keras.callbacks.ModelCheckpoint(
        str(options.out / ".best.weights.h5"),
        monitor="val_accuracy",
        save_best_only=True,
        save_weights_only=True,
    )
    options.out.mkdir(parents=True, exist_ok=True)
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_hold, y_hold),
        epochs=options.epochs,
        batch_size=options.batch_size,
        shuffle=True,
        callbacks=[best],
        verbose=2,
    )
    model.load_weights(str(options.out / ".best.weights.h5"))
    (options.out / ".best.weights.h5").unlink()

    holdout_accuracy = float(np.mean(np.argmax(model.predict(x_hold, verbose=0), 1) == y_hold))
    test_accuracy = None
    if test:
        x_test, y_test = load_arrays(test, spec, labels)
        test_accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), 1) == y_test))
    logger.info("Best holdout accuracy %.3f; test accuracy %s", holdout_accuracy, test_accuracy)

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    manifest = Manifest(
        name=options.model_name or f"dicom-triage-{task}-small-cnn",
        version=f"{stamp}-seed{options.seed}",
        modality=TriageModality(options.modality),
        task=task,
        labels=labels,
        referrals={label: PAPER_REFERRALS[label] for label in labels},
        input=spec,
        onnx_sha256="",
        training={
            "backbone": "small_cnn",
            "base_weights": "none (trained from scratch: nothing to transfer)",
            "optimizer": "adam",
            "learning_rate": options.learning_rate,
            "batch_size": options.batch_size,
            "epochs": options.epochs,
            "seed": options.seed,
            "images": {"train": len(train_set), "holdout": len(holdout), "test": len(test)},
            "holdout_accuracy": holdout_accuracy,
            "test_accuracy": test_accuracy,
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
            "data": str(options.data),
        },
    )
    return export_package(model, manifest, options.out, x_hold[:8])
