"""The paper's metrics, with 95% confidence intervals. Pure NumPy.

- Accuracy: correctly labelled images over all images.
- Sensitivity and specificity of the referral decision: the positive class
  is "urgent referral" (CNV or DME; bacterial pneumonia) for the multi-class
  tasks, and the disease class for the binary ones. Kermany et al. (STAR
  Methods) count correctly labelled urgent and non-urgent referrals; we divide
  by the number of urgent and non-urgent images respectively, which is what
  sensitivity and specificity mean.
- Weighted error (Figure S4): each wrong answer costs 1, except an urgent
  referral scored as normal (4) or as drusen (2); averaged over all images.
- ROC AUC (Mann-Whitney, ties counted half) for urgent against the rest on
  OCT, and for pneumonia against normal and bacterial against viral on CXR.
- Intervals: Wilson score for proportions, percentile bootstrap for AUC and
  weighted error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def penalty_matrix(labels: Sequence[str], referrals: Sequence[str]) -> np.ndarray:
    """Figure S4: 4 for urgent scored as normal, 2 for urgent scored as drusen, else 1."""
    size = len(labels)
    penalties = np.ones((size, size), dtype=np.float64)
    np.fill_diagonal(penalties, 0.0)
    for true in range(size):
        if referrals[true] != "urgent":
            continue
        for predicted in range(size):
            if labels[predicted] == "NORMAL":
                penalties[true, predicted] = 4.0
            elif labels[predicted] == "DRUSEN":
                penalties[true, predicted] = 2.0
    return penalties


def weighted_error(matrix: np.ndarray, penalties: np.ndarray) -> float:
    total = matrix.sum()
    return float((matrix * penalties).sum() / total) if total else float("nan")


def wilson_interval(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    if total == 0:
        return (float("nan"), float("nan"))
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1  # average rank of ties
        start = end + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every threshold, from (0,0) to (1,1)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    thresholds = np.unique(scores)[::-1]
    n_pos, n_neg = max(int(positive.sum()), 1), max(int((~positive).sum()), 1)
    tpr = [0.0] + [float((positive & (scores >= t)).sum() / n_pos) for t in thresholds]
    fpr = [0.0] + [float((~positive & (scores >= t)).sum() / n_neg) for t in thresholds]
    return np.array(fpr), np.array(tpr)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float], count: int, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over resampled indices."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        value = statistic(rng.integers(0, count, size=count))
        if not math.isnan(value):
            values.append(value)
    if not values:
        return (float("nan"), float("nan"))
    low, high = np.percentile(values, [2.5, 97.5])
    return (float(low), float(high))


def positive_labels(task: str, labels: Sequence[str], referrals: Sequence[str]) -> list[str]:
    """The labels that count as positive for sensitivity and specificity."""
    if task == "cxr-bacterial-viral":
        return ["BACTERIA"]
    if any(r == "urgent" for r in referrals) and len(labels) > 2:
        return [label for label, r in zip(labels, referrals, strict=True) if r == "urgent"]
    return [label for label in labels if label != "NORMAL"]


def _auc_entry(scores: np.ndarray, positive: np.ndarray, seed: int) -> dict[str, Any]:
    value = roc_auc(scores, positive)
    interval = bootstrap_interval(
        lambda idx: roc_auc(scores[idx], positive[idx]), len(scores), seed=seed
    )
    fpr, tpr = roc_curve(scores, positive)
    return {"value": value, "ci95": list(interval), "fpr": fpr.tolist(), "tpr": tpr.tolist()}


def summarize(
    task: str,
    labels: Sequence[str],
    referrals: Sequence[str],
    y_true: np.ndarray,
    probabilities: np.ndarray,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of the paper for one test set."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_pred = probabilities.argmax(axis=1)
    count = len(y_true)
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    penalties = penalty_matrix(labels, referrals)

    correct = int((y_true == y_pred).sum())
    positives = positive_labels(task, labels, referrals)
    positive_index = [labels.index(label) for label in positives]
    true_positive = np.isin(y_true, positive_index)
    predicted_positive = np.isin(y_pred, positive_index)
    tp = int((true_positive & predicted_positive).sum())
    tn = int((~true_positive & ~predicted_positive).sum())
    n_pos, n_neg = int(true_positive.sum()), int((~true_positive).sum())

    def weighted_error_of(indices: np.ndarray) -> float:
        return weighted_error(
            confusion_matrix(y_true[indices], y_pred[indices], len(labels)), penalties
        )

    result: dict[str, Any] = {
        "task": task,
        "labels": list(labels),
        "images": count,
        "positive_labels": positives,
        "accuracy": {"value": correct / count, "ci95": list(wilson_interval(correct, count))},
        "sensitivity": {
            "value": tp / n_pos if n_pos else float("nan"),
            "ci95": list(wilson_interval(tp, n_pos)),
        },
        "specificity": {
            "value": tn / n_neg if n_neg else float("nan"),
            "ci95": list(wilson_interval(tn, n_neg)),
        },
        "weighted_error": {
            "value": weighted_error(matrix, penalties),
            "ci95": list(bootstrap_interval(weighted_error_of, count, seed=seed)),
            "penalties": penalties.tolist(),
        },
        "confusion_matrix": matrix.tolist(),
        "per_class": {},
        "roc": {},
    }
    for index, label in enumerate(labels):
        support = int(matrix[index].sum())
        predicted = int(matrix[:, index].sum())
        hits = int(matrix[index, index])
        result["per_class"][label] = {
            "support": support,
            "recall": hits / support if support else float("nan"),
            "precision": hits / predicted if predicted else float("nan"),
            "recall_ci95": list(wilson_interval(hits, support)),
        }

    index_of = {label: i for i, label in enumerate(labels)}
    if task.startswith("oct"):
        urgent = [index_of[label] for label in positives]
        result["roc"]["urgent_vs_rest"] = _auc_entry(
            probabilities[:, urgent].sum(axis=1), true_positive, seed
        )
    if "NORMAL" in index_of and task.startswith("cxr"):
        normal = index_of["NORMAL"]
        result["roc"]["pneumonia_vs_normal"] = _auc_entry(
            1.0 - probabilities[:, normal], y_true != normal, seed
        )
    if "BACTERIA" in index_of and "VIRUS" in index_of:
        bacteria, virus = index_of["BACTERIA"], index_of["VIRUS"]
        pneumonia = np.isin(y_true, [bacteria, virus])
        pair = probabilities[pneumonia][:, [bacteria, virus]]
        scores = pair[:, 0] / np.maximum(pair.sum(axis=1), 1e-12)
        result["roc"]["bacterial_vs_viral"] = _auc_entry(
            scores, y_true[pneumonia] == bacteria, seed
        )
    return result
