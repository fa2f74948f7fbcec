"""Occlusion sensitivity (Kermany et al. 2018, after Zeiler and Fergus 2014).

A blank box (20x20 by default, filled with the image mean) slides over the
model input; the map is the drop in the predicted class's probability,
averaged over every box position that covers a pixel. Pure functions: an
image array and a batch-predict callable in, a map out.

Modes:

- ``grid``: every position on a grid of the given stride; stride 1 is the
  paper's exact map (about 78,400 forward passes for InceptionV3 at 299).
- ``fast``: a grid at a quarter of the box size; its drops are interpolated
  to every stride-1 position, and the positions with the largest estimated
  drops are then measured exactly until 1/20 of the stride-1 passes are
  spent. Each pixel averages the many boxes that cover it, so the
  interpolated field reproduces the smooth stride-1 map, and the exact
  measurements fix its top region.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from model_runtime.preprocess import resample

Predict = Callable[[np.ndarray], np.ndarray]
BATCH = 64
# The fast mode spends at most 1/FAST_FRACTION of the stride-1 forward passes.
FAST_FRACTION = 20


@dataclasses.dataclass(frozen=True)
class OcclusionMap:
    values: np.ndarray  # (height, width) of the model input; mean drop per pixel
    class_index: int
    base_probability: float
    box: int
    mode: str
    stride: int
    forward_passes: int
    seconds: float


def grid_positions(size: int, box: int, stride: int) -> list[int]:
    """Box origins along one axis, always including the last possible one."""
    last = size - box
    positions = list(range(0, last + 1, stride))
    if positions[-1] != last:
        positions.append(last)
    return positions


def _drops(
    predict: Predict,
    image: np.ndarray,
    origins: Iterable[tuple[int, int]],
    box: int,
    fill: np.ndarray,
    class_index: int,
    base: float,
    batch_size: int,
) -> dict[tuple[int, int], float]:
    origins = list(origins)
    drops: dict[tuple[int, int], float] = {}
    if not origins:
        return drops
    # One batch buffer for the whole map: each slot gets back the pixels of
    # its previous box before the next box is painted, so a batch costs
    # 20x20 pixels per image to build, not a copy of every image (at stride 1
    # on InceptionV3 that is 84 GB of copying saved).
    buffer = np.repeat(image[None], min(batch_size, len(origins)), axis=0)
    painted: list[tuple[int, int] | None] = [None] * len(buffer)
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        for index, (y, x) in enumerate(chunk):
            previous = painted[index]
            if previous is not None:
                py, px = previous
                buffer[index, py : py + box, px : px + box, :] = image[
                    py : py + box, px : px + box, :
                ]
            buffer[index, y : y + box, x : x + box, :] = fill
            painted[index] = (y, x)
        probabilities = predict(buffer[: len(chunk)])[:, class_index]
        for origin, probability in zip(chunk, probabilities, strict=True):
            drops[origin] = base - float(probability)
    return drops


def _box_sum(field: np.ndarray, box: int, shape: tuple[int, int]) -> np.ndarray:
    """For every pixel, the sum of ``field`` over the origins whose box covers it."""
    padded = np.zeros((shape[0] + 1, shape[1] + 1), dtype=np.float64)
    padded[1 : field.shape[0] + 1, 1 : field.shape[1] + 1] = field
    table = padded.cumsum(axis=0).cumsum(axis=1)
    rows = np.arange(shape[0])
    cols = np.arange(shape[1])
    # Origins (y, x) with y <= r < y + box, i.e. r - box < y <= r.
    top = np.clip(rows - box + 1, 0, field.shape[0])
    bottom = np.clip(rows + 1, 0, field.shape[0])
    left = np.clip(cols - box + 1, 0, field.shape[1])
    right = np.clip(cols + 1, 0, field.shape[1])
    return (
        table[bottom][:, right]
        - table[top][:, right]
        - table[bottom][:, left]
        + table[top][:, left]
    )


def _accumulate(
    drops: dict[tuple[int, int], float], shape: tuple[int, int], box: int
) -> np.ndarray:
    """Mean drop over the evaluated boxes that cover each pixel."""
    origins_shape = (shape[0] - box + 1, shape[1] - box + 1)
    field = np.zeros(origins_shape, dtype=np.float64)
    present = np.zeros(origins_shape, dtype=np.float64)
    for (y, x), drop in drops.items():
        field[y, x] = drop
        present[y, x] = 1.0
    total = _box_sum(field, box, shape)
    count = _box_sum(present, box, shape)
    return (total / np.maximum(count, 1)).astype(np.float32)


def _interpolate(
    coarse: dict[tuple[int, int], float], ys: list[int], xs: list[int], size: tuple[int, int]
) -> np.ndarray:
    """Bilinear interpolation of a coarse grid of drops to every origin."""
    grid = np.array([[coarse[(y, x)] for x in xs] for y in ys], dtype=np.float64)
    all_y, all_x = np.arange(size[0]), np.arange(size[1])
    along_x = np.array([np.interp(all_x, xs, row) for row in grid])
    return np.array([np.interp(all_y, ys, column) for column in along_x.T]).T


def occlusion_map(
    predict: Predict,
    image: np.ndarray,
    *,
    box: int = 20,
    mode: str = "fast",
    stride: int = 1,
    class_index: int | None = None,
    fill: str = "mean",
    batch_size: int = BATCH,
) -> OcclusionMap:
    """Occlusion map of one prepared model input (height, width, channels).

    Parameters
    ----------
    predict
        Class probabilities for a batch (N, height, width, channels).
    box
        Side of the occluding box, in model-input pixels.
    mode
        "grid" (exact at ``stride``) or "fast".
    class_index
        The class whose drop is mapped; by default the predicted one.
    fill
        What the box holds: "mean" (the image's mean, the default) or "zero".
    batch_size
        Occluded copies per ``predict`` call: 64 suits a CPU; a GPU wants more.
    """
    if image.ndim != 3:
        raise ValueError('Argument "image" must be (height, width, channels).')
    height, width = image.shape[:2]
    if not 1 <= box <= min(height, width):
        raise ValueError(f'Argument "box" must be between 1 and {min(height, width)}.')
    if stride < 1:
        raise ValueError('Argument "stride" must be a positive integer.')
    if mode not in ("grid", "fast"):
        raise ValueError('Argument "mode" must be "grid" or "fast".')
    if fill not in ("mean", "zero"):
        raise ValueError('Argument "fill" must be "mean" or "zero".')
    if batch_size < 1:
        raise ValueError('Argument "batch_size" must be a positive integer.')
    started = time.perf_counter()
    probabilities = predict(image[None])[0]
    target = int(np.argmax(probabilities)) if class_index is None else class_index
    base = float(probabilities[target])
    fill_value = image.reshape(-1, image.shape[2]).mean(axis=0)
    if fill == "zero":
        fill_value = np.zeros_like(fill_value)

    step = stride if mode == "grid" else max(1, box // 4)
    ys, xs = grid_positions(height, box, step), grid_positions(width, box, step)
    drops = _drops(
        predict, image, [(y, x) for y in ys for x in xs], box, fill_value, target, base, batch_size
    )
    passes = len(drops)
    if mode == "fast" and step > 1:
        # Estimate every stride-1 origin from the coarse grid, then measure
        # exactly the most important ones, within 1/20 of the stride-1 cost.
        origins_shape = (height - box + 1, width - box + 1)
        estimate = _interpolate(drops, ys, xs, origins_shape)
        budget = origins_shape[0] * origins_shape[1] // FAST_FRACTION - passes - 1
        if budget > 0:
            order = np.argsort(estimate, axis=None)[::-1]
            refine: list[tuple[int, int]] = []
            for flat in order:
                origin = (int(flat // origins_shape[1]), int(flat % origins_shape[1]))
                if origin not in drops:
                    refine.append(origin)
                if len(refine) >= budget:
                    break
            drops.update(_drops(predict, image, refine, box, fill_value, target, base, batch_size))
            passes = len(drops)
        full = {
            (y, x): float(estimate[y, x])
            for y in range(origins_shape[0])
            for x in range(origins_shape[1])
        }
        full.update(drops)
        drops = full
    values = _accumulate(drops, (height, width), box)
    return OcclusionMap(
        values=values,
        class_index=target,
        base_probability=base,
        box=box,
        mode=mode,
        stride=step,
        forward_passes=passes + 1,
        seconds=time.perf_counter() - started,
    )


def to_source_geometry(values: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Undo the letterbox of ``model_runtime.preprocess``: crop the image area, resize."""
    height, width = values.shape
    scale = min(height / rows, width / cols)
    inner_rows, inner_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    top, left = (height - inner_rows) // 2, (width - inner_cols) // 2
    inner = values[top : top + inner_rows, left : left + inner_cols]
    return resample(inner, rows, cols)


def peak(values: np.ndarray) -> tuple[int, int]:
    """(row, column) of the largest drop."""
    row, col = np.unravel_index(int(np.argmax(values)), values.shape)
    return int(row), int(col)


def peak_in_lesion(
    result: OcclusionMap, rows: int, cols: int, lesion_boxes: Sequence[Sequence[int]]
) -> bool:
    """Whether the map's largest drop, in source pixels, falls inside a lesion.

    ``lesion_boxes`` are ``(x0, y0, x1, y1)`` in the source image. Each is
    widened by half the occluding box (in source pixels), since a box
    centred just off a lesion's edge still hides part of it.
    """
    row, col = peak(to_source_geometry(result.values, rows, cols))
    height, width = result.values.shape
    margin = result.box * max(rows / height, cols / width) / 2
    return any(
        x0 - margin <= col <= x1 + margin and y0 - margin <= row <= y1 + margin
        for x0, y0, x1, y1 in lesion_boxes
    )
