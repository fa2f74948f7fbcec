"""``triage train``: the method of Kermany et al. 2018, and a from-scratch path.

With pretrained base weights (``imagenet`` or a weights file) the base is
frozen: bottleneck features are computed once and cached, and only a new
softmax layer is trained on them (Adam, learning rate 0.001, batches of
1,000, up to 100 epochs, the holdout evaluated after every step and the best
step kept). With ``--base-weights none`` there is nothing to transfer and the
whole network trains from scratch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from domain.triage import PAPER_REFERRALS, TriageModality
from model_runtime.package import InputSpec, Manifest, write_manifest
from trainer.backbones import BACKBONES, Backbone, build_base, resolve_base_weights
from trainer.bottlenecks import BottleneckCache, content_key, load_batch
from trainer.datasets import (
    DEFAULT_TASK,
    TASK_LABELS,
    TASK_MODALITY,
    Sample,
    describe_counts,
    discover,
    limit_per_class,
    split_by_patient,
)
from trainer.evaluate import evaluate_package
from trainer.export import export_package
from trainer.head import cross_entropy, train_head

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
HOLDOUT_PER_STEP = 256
BASE_WEIGHTS_FILE = "base.weights.h5"


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "dicom-triage" / "bottlenecks"


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    modality: str
    data: Path
    out: Path
    task: str | None = None
    backbone: str = "inception_v3"
    base_weights: str = "imagenet"
    epochs: int | None = None  # 100 for the head, 25 from scratch
    batch_size: int | None = None  # 1,000 for the head, 32 from scratch
    learning_rate: float = 0.001
    holdout_fraction: float = 0.1
    limit_per_class: int | None = None
    seed: int = 0
    cache_dir: Path | None = None
    model_name: str | None = None


@dataclasses.dataclass(frozen=True)
class TrainResult:
    package: Path
    features_computed: int
    holdout_accuracy: float
    test_metrics: dict[str, Any] | None


class ImageBatches(keras.utils.PyDataset):
    """Batches of prepared images, loaded lazily (a data set may not fit in memory)."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: np.ndarray,
        spec: InputSpec,
        batch_size: int,
        shuffle: bool,
        seed: int,
    ) -> None:
        super().__init__()
        self.paths = list(paths)
        self.targets = targets
        self.spec = spec
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(self.paths))
        if shuffle:
            self.rng.shuffle(self.order)

    def __len__(self) -> int:
        return (len(self.paths) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images = load_batch([self.paths[i] for i in chosen], self.spec)
        return images, self.targets[chosen]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.rng.shuffle(self.order)


def _targets(samples: Sequence[Sample], labels: Sequence[str]) -> np.ndarray:
    return np.array([labels.index(s.label) for s in samples], dtype=np.int64)


def data_digest(samples: Sequence[Sample]) -> str:
    """SHA-256 over (label, content hash) of every image, in a stable order."""
    digest = hashlib.sha256()
    for key, label in sorted((content_key(s.path), s.label) for s in samples):
        digest.update(f"{label}:{key}\n".encode())
    return digest.hexdigest()


def _train_from_scratch(
    backbone: Backbone,
    labels: Sequence[str],
    train_set: Sequence[Sample],
    holdout: Sequence[Sample],
    options: TrainOptions,
    out: Path,
) -> tuple[Any, Any, dict[str, list[float]], float]:
    spec = backbone.input_spec
    base = build_base(backbone, None)
    inputs = keras.Input((spec.height, spec.width, spec.channels), name=spec.tensor_name)
    features = base(inputs)
    dropped = keras.layers.Dropout(0.2)(features)
    outputs = keras.layers.Dense(len(labels), activation="softmax", name="probabilities")(dropped)
    model = keras.Model(inputs, outputs, name=f"{backbone.name}_classifier")
    model.compile(
        optimizer=keras.optimizers.Adam(options.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    batch_size = options.batch_size or 32
    step_logs: dict[str, list[float]] = {
        key: [] for key in ("train_loss", "train_accuracy", "holdout_loss", "holdout_accuracy")
    }
    # Figure 3 plots the holdout after every step; a sample of at most
    # HOLDOUT_PER_STEP images keeps that affordable when training from scratch.
    tracked = list(holdout)
    if len(tracked) > HOLDOUT_PER_STEP:
        rng = np.random.default_rng(options.seed)
        tracked = [tracked[i] for i in sorted(rng.permutation(len(tracked))[:HOLDOUT_PER_STEP])]
    tracked_x = load_batch([s.path for s in tracked], spec)
    tracked_y = _targets(tracked, labels)

    class StepHistory(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
            step_logs["train_loss"].append(float((logs or {})["loss"]))
            step_logs["train_accuracy"].append(float((logs or {})["accuracy"]))
            probabilities = np.asarray(model(tracked_x, training=False))
            step_logs["holdout_loss"].append(cross_entropy(probabilities, tracked_y))
            step_logs["holdout_accuracy"].append(
                float(np.mean(probabilities.argmax(axis=1) == tracked_y))
            )

    checkpoint = out / ".best.weights.h5"
    history = model.fit(
        ImageBatches(
            [s.path for s in train_set],
            _targets(train_set, labels),
            spec,
            batch_size,
            True,
            options.seed,
        ),
        validation_data=ImageBatches(
            [s.path for s in holdout],
            _targets(holdout, labels),
            spec,
            batch_size,
            False,
            options.seed,
        ),
        epochs=options.epochs or 25,
        callbacks=[
            StepHistory(),
            keras.callbacks.ModelCheckpoint(
                str(checkpoint),
                monitor="val_accuracy",
                save_best_only=True,
                save_weights_only=True,
            ),
        ],
        verbose=2,
    )
    model.load_weights(str(checkpoint))
    checkpoint.unlink()
    curves = dict(step_logs)
    curves["epoch_holdout_loss"] = [float(v) for v in history.history["val_loss"]]
    curves["epoch_holdout_accuracy"] = [float(v) for v in history.history["val_accuracy"]]
    best = max(curves["epoch_holdout_accuracy"])
    return model, base, curves, best


def _train_frozen(
    backbone: Backbone,
    weights: str,
    weights_sha: str,
    labels: Sequence[str],
    train_set: Sequence[Sample],
    holdout: Sequence[Sample],
    options: TrainOptions,
) -> tuple[Any, Any, dict[str, list[float]], float, int]:
    spec = backbone.input_spec
    base = build_base(backbone, weights)
    base.trainable = False
    cache = BottleneckCache(options.cache_dir or default_cache_dir(), backbone.name, weights_sha)
    train_x = cache.features([s.path for s in train_set], base, spec)
    holdout_x = cache.features([s.path for s in holdout], base, spec)
    result = train_head(
        train_x,
        _targets(train_set, labels),
        holdout_x,
        _targets(holdout, labels),
        len(labels),
        learning_rate=options.learning_rate,
        batch_size=options.batch_size or 1000,
        epochs=options.epochs or 100,
        seed=options.seed,
    )
    inputs = keras.Input((spec.height, spec.width, spec.channels), name=spec.tensor_name)
    model = keras.Model(inputs, result.head(base(inputs)), name=f"{backbone.name}_frozen")
    return model, base, result.history, result.best_holdout_accuracy, cache.computed


def train(options: TrainOptions) -> TrainResult:
    """Train, keep the best model on the patient-level holdout, export and evaluate it."""
    import tensorflow as tf

    keras.utils.set_random_seed(options.seed)
    tf.config.experimental.enable_op_determinism()

    task = options.task or DEFAULT_TASK[options.modality]
    if TASK_MODALITY[task] != options.modality:
        raise ValueError(f"Task {task} does not belong to modality {options.modality}.")
    labels = TASK_LABELS[task]
    backbone = BACKBONES[options.backbone]
    weights, weights_sha = resolve_base_weights(backbone, options.base_weights)

    samples = discover(options.data, options.modality, task)
    development = limit_per_class(
        [s for s in samples if s.split == "train"], options.limit_per_class, options.seed
    )
    test = [s for s in samples if s.split == "test"]
    train_set, holdout = split_by_patient(development, options.holdout_fraction, options.seed)
    counts = describe_counts({"train": train_set, "holdout": holdout, "test": test})
    logger.info("Images per class and split:\n%s", counts)

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    features_computed = 0
    if weights is None:
        model, base, history, best = _train_from_scratch(
            backbone, labels, train_set, holdout, options, out
        )
        method = "from scratch: no pretrained weights, so nothing is transferred"
    else:
        model, base, history, best, features_computed = _train_frozen(
            backbone, weights, weights_sha, labels, train_set, holdout, options
        )
        method = "transfer: frozen base, cached bottlenecks, new softmax head"
    base.save_weights(str(out / BASE_WEIGHTS_FILE))
    (out / HISTORY_FILE).write_text(json.dumps(history))

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    per_split = {
        name: dict(Counter(s.label for s in group))
        for name, group in (("train", train_set), ("holdout", holdout), ("test", test))
    }
    manifest = Manifest(
        name=options.model_name or f"dicom-triage-{task}-{backbone.name}",
        version=f"{stamp}-seed{options.seed}",
        modality=TriageModality(options.modality),
        task=task,
        labels=labels,
        referrals={label: PAPER_REFERRALS[label] for label in labels},
        input=backbone.input_spec,
        onnx_sha256="",
        training={
            "method": method,
            "backbone": backbone.name,
            "base_weights": options.base_weights,
            "base_weights_sha256": weights_sha,
            "optimizer": "adam",
            "learning_rate": options.learning_rate,
            "batch_size": options.batch_size or (1000 if weights else 32),
            "epochs": options.epochs or (100 if weights else 25),
            "seed": options.seed,
            "limit_per_class": options.limit_per_class,
            "counts": per_split,
            "patients": {
                "train": len({s.patient for s in train_set}),
                "holdout": len({s.patient for s in holdout}),
                "test": len({s.patient for s in test}),
            },
            "data_sha256": data_digest([*train_set, *holdout, *test]),
            "holdout_accuracy": best,
            "history": HISTORY_FILE,
        },
    )
    check_images = load_batch([s.path for s in holdout[:16]], backbone.input_spec)
    manifest = export_package(model, manifest, out, check_images)
    test_metrics = None
    if test:
        test_metrics = evaluate_package(out, options.data, split="test", out_dir=out / "evaluation")
        summary = {
            key: test_metrics[key]["value"]
            for key in ("accuracy", "sensitivity", "specificity", "weighted_error")
        }
        summary["roc_auc"] = {name: roc["value"] for name, roc in test_metrics["roc"].items()}
        manifest = dataclasses.replace(
            manifest, training={**manifest.training, "test_metrics": summary}
        )
        write_manifest(out, manifest)
    logger.info("Model package written to %s", out)
    return TrainResult(out, features_computed, best, test_metrics)
