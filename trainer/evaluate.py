"""``triage evaluate``: the paper's metrics for a model package on a test split.

The package is run exactly as the daemon runs it (ONNX Runtime through
``model_runtime.classifier.Classifier``), so the figures describe what is deployed.
Writes ``metrics.json`` and PNG plots: ROC curves, the confusion matrix and
the training curves.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from model_runtime.classifier import Classifier
from model_runtime.preprocess import load_grey_file
from trainer.datasets import discover
from trainer.metrics import summarize
from trainer.progress import Progress

logger = logging.getLogger(__name__)

BATCH = 32


def predict_files(classifier: Classifier, paths: list[Path]) -> np.ndarray:
    rows = []
    progress = Progress(len(paths), "evaluating", "images")
    for start in range(0, len(paths), BATCH):
        chunk = paths[start : start + BATCH]
        batch = np.stack([classifier.prepare(load_grey_file(str(p))) for p in chunk])
        rows.append(classifier.predict(batch))
        progress.advance(len(chunk))
    return np.concatenate(rows) if rows else np.zeros((0, len(classifier.manifest.labels)))


def evaluate_package(
    model_dir: Path, data: Path, split: str = "test", out_dir: Path | None = None, seed: int = 0
) -> dict[str, Any]:
    """Compute the metrics; write ``metrics.json`` and plots into ``out_dir``."""
    classifier = Classifier(Path(model_dir), device="auto")
    manifest = classifier.manifest
    samples = [
        s for s in discover(Path(data), manifest.modality.value, manifest.task) if s.split == split
    ]
    labels = list(manifest.labels)
    y_true = np.array([labels.index(s.label) for s in samples], dtype=np.int64)
    probabilities = predict_files(classifier, [s.path for s in samples])
    metrics = summarize(
        manifest.task,
        labels,
        [manifest.referrals[label].value for label in labels],
        y_true,
        probabilities,
        seed=seed,
    )
    metrics["model"] = {
        "name": manifest.name,
        "version": manifest.version,
        "sha256": manifest.onnx_sha256,
    }
    metrics["split"] = split
    metrics["patients"] = len({s.patient for s in samples})
    out = Path(out_dir) if out_dir else Path(model_dir) / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    _plot(metrics, Path(model_dir), out)
    logger.info(
        "%s on %d %s images: accuracy %.3f, sensitivity %.3f, specificity %.3f, "
        "weighted error %.3f",
        manifest.name,
        len(samples),
        split,
        metrics["accuracy"]["value"],
        metrics["sensitivity"]["value"],
        metrics["specificity"]["value"],
        metrics["weighted_error"]["value"],
    )
    return metrics


def _plot(metrics: dict[str, Any], model_dir: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    for name, roc in metrics["roc"].items():
        axis.plot(
            roc["fpr"], roc["tpr"], label=f"{name.replace('_', ' ')} (AUC {roc['value']:.3f})"
        )
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axis.set_xlabel("False positive rate (1 - specificity)")
    axis.set_ylabel("True positive rate (sensitivity)")
    axis.set_title("ROC")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "roc.png", dpi=100)
    plt.close(figure)

    matrix = np.array(metrics["confusion_matrix"])
    labels = metrics["labels"]
    figure, axis = plt.subplots(figsize=(5, 4.5))
    axis.imshow(matrix, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        axis.text(col, row, str(value), ha="center", va="center", color=colour)
    axis.set_xticks(range(len(labels)), labels)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("Predicted")
    axis.set_ylabel("True")
    axis.set_title(f"Confusion matrix (accuracy {metrics['accuracy']['value']:.3f})")
    figure.tight_layout()
    figure.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(figure)

    history_path = model_dir / "history.json"
    if history_path.is_file():
        history = json.loads(history_path.read_text())
        figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
        for key, values in history.items():
            target = loss_axis if "loss" in key else accuracy_axis
            target.plot(values, label=key.replace("_", " "))
        loss_axis.set_title("Cross-entropy")
        accuracy_axis.set_title("Accuracy")
        for axis in (loss_axis, accuracy_axis):
            axis.set_xlabel("step (epoch for 'epoch' curves)")
            axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / "training_curves.png", dpi=100)
        plt.close(figure)
