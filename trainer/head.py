"""Train the new softmax layer on cached bottlenecks, as Kermany et al. did.

Adam with learning rate 0.001 and batches of 1,000; after every step the
holdout is evaluated (no gradient), and the best step's weights are kept.
Accuracy and cross-entropy of every step, for the batch and the holdout, go
into the history (the curves of Figure 3).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np

from trainer.progress import Progress

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class HeadResult:
    head: Any
    history: dict[str, list[float]]
    best_step: int
    best_holdout_accuracy: float


def cross_entropy(probabilities: np.ndarray, targets: np.ndarray) -> float:
    picked = probabilities[np.arange(len(targets)), targets]
    return float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))


def build_head(features: int, classes: int) -> Any:
    import keras

    return keras.Sequential(
        [
            keras.Input((features,), name="bottleneck"),
            keras.layers.Dense(classes, activation="softmax", name="probabilities"),
        ],
        name="softmax_head",
    )


def train_head(
    train_x: np.ndarray,
    train_y: np.ndarray,
    holdout_x: np.ndarray,
    holdout_y: np.ndarray,
    classes: int,
    *,
    learning_rate: float = 0.001,
    batch_size: int = 1000,
    epochs: int = 100,
    seed: int = 0,
) -> HeadResult:
    import keras

    head = build_head(train_x.shape[1], classes)
    head.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    history: dict[str, list[float]] = {
        key: [] for key in ("train_loss", "train_accuracy", "holdout_loss", "holdout_accuracy")
    }
    best = (-1.0, math.inf)
    best_weights = head.get_weights()
    best_step = 0
    progress = Progress(steps_per_epoch * epochs, "head training", "steps")
    for epoch in range(epochs):
        order = rng.permutation(len(train_x))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            logs = head.train_on_batch(train_x[batch], train_y[batch], return_dict=True)
            probabilities = np.asarray(head(holdout_x, training=False))
            holdout_loss = cross_entropy(probabilities, holdout_y)
            holdout_accuracy = float(np.mean(probabilities.argmax(axis=1) == holdout_y))
            history["train_loss"].append(float(logs["loss"]))
            history["train_accuracy"].append(float(logs["accuracy"]))
            history["holdout_loss"].append(holdout_loss)
            history["holdout_accuracy"].append(holdout_accuracy)
            step = len(history["train_loss"])
            if (holdout_accuracy, -holdout_loss) > (best[0], -best[1]):
                best = (holdout_accuracy, holdout_loss)
                best_weights = head.get_weights()
                best_step = step
            progress.advance()
        logger.info(
            "epoch %d/%d: train loss %.4f acc %.4f | holdout loss %.4f acc %.4f",
            epoch + 1,
            epochs,
            history["train_loss"][-1],
            history["train_accuracy"][-1],
            history["holdout_loss"][-1],
            history["holdout_accuracy"][-1],
        )
    head.set_weights(best_weights)
    logger.info("Best holdout accuracy %.4f at step %d", best[0], best_step)
    return HeadResult(head, history, best_step, best[0])
