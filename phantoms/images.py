"""Synthetic OCT B-scans and chest radiographs with lesions at known places.

The paper's data sets cannot be fetched here, so tests and the demo use
these phantoms. Each renderer returns a float image in [0, 1] and the
bounding boxes ``(x0, y0, x1, y1)`` of every lesion it drew, in pixels.

OCT: a layered retina with a foveal pit and speckle; CNV adds an elevated
membrane over subretinal fluid, DME intraretinal cysts with thickening,
DRUSEN small elevations of the RPE. CXR: two lung fields with ribs, spine
and heart; bacterial pneumonia adds a dense segmental consolidation with
air bronchograms, viral pneumonia a diffuse bilateral interstitial pattern.
"""

from __future__ import annotations

import dataclasses

import numpy as np

OCT_LABELS = ("CNV", "DME", "DRUSEN", "NORMAL")
CXR_LABELS = ("BACTERIA", "NORMAL", "VIRUS")

OCT_SHAPE = (256, 320)  # rows, columns: wider than tall, like a B-scan
CXR_SHAPE = (512, 480)

Box = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # float32, (rows, cols), values in [0, 1]
    label: str
    boxes: tuple[Box, ...]


def box_blur(image: np.ndarray, radius: int, passes: int = 3) -> np.ndarray:
    """Approximate a Gaussian blur by repeated box filters (edge-padded)."""
    out = image.astype(np.float32)
    if radius < 1:
        return out
    size = 2 * radius + 1
    for _ in range(passes):
        for axis in (0, 1):
            pad = [(0, 0), (0, 0)]
            pad[axis] = (radius + 1, radius)
            padded = np.pad(out, pad, mode="edge")
            cums = np.cumsum(padded, axis=axis, dtype=np.float64)
            upper = np.take(cums, np.arange(size, cums.shape[axis]), axis=axis)
            lower = np.take(cums, np.arange(0, cums.shape[axis] - size), axis=axis)
            out = ((upper - lower) / size).astype(np.float32)
    return out


# --------------------------------------------------------------------- OCT


@dataclasses.dataclass(frozen=True)
class RetinaGeometry:
    """What stays the same across the B-scans of one eye."""

    top: float  # row of the inner retinal surface at the centre
    thickness: float
    tilt: float
    fovea_x: float
    pit_depth: float
    pit_width: float


def sample_retina(rng: np.random.Generator, shape: tuple[int, int] = OCT_SHAPE) -> RetinaGeometry:
    rows, cols = shape
    return RetinaGeometry(
        top=rows * rng.uniform(0.28, 0.38),
        thickness=rows * rng.uniform(0.22, 0.27),
        tilt=rng.uniform(-0.08, 0.08),
        fovea_x=cols * rng.uniform(0.42, 0.58),
        pit_depth=rows * rng.uniform(0.05, 0.08),
        pit_width=cols * rng.uniform(0.06, 0.09),
    )


# Reflectivity from the inner surface (0) to the RPE (1), then the choroid.
_LAYER_DEPTHS = np.array([0.0, 0.06, 0.10, 0.30, 0.40, 0.48, 0.55, 0.80, 0.86, 0.90, 0.95, 1.0])
_LAYER_VALUES = np.array([0.75, 0.70, 0.45, 0.40, 0.22, 0.45, 0.20, 0.18, 0.65, 0.30, 0.90, 0.95])


def render_oct(
    label: str,
    rng: np.random.Generator,
    geometry: RetinaGeometry | None = None,
    shape: tuple[int, int] = OCT_SHAPE,
) -> Phantom:
    """Render one OCT B-scan of ``label`` (one of :data:`OCT_LABELS`)."""
    if label not in OCT_LABELS:
        raise ValueError(f'Argument "label" must be one of {OCT_LABELS}, got {label!r}.')
    rows, cols = shape
    geo = geometry or sample_retina(rng, shape)
    x = np.arange(cols, dtype=np.float32)
    y = np.arange(rows, dtype=np.float32)[:, None]
    top = geo.top + geo.tilt * (x - cols / 2)
    rpe = top + geo.thickness + 0.0004 * (x - cols / 2) ** 2
    top = top + geo.pit_depth * np.exp(-(((x - geo.fovea_x) / geo.pit_width) ** 2))

    # Bruch's membrane stays where the RPE was: lesions lift the RPE off it,
    # and the choroid below keeps its place.
    bruch = rpe.copy()
    boxes: list[Box] = []
    fluid = np.zeros(shape, dtype=bool)
    lesion_x = float(np.clip(geo.fovea_x + rng.uniform(-0.15, 0.15) * cols, 50, cols - 50))
    if label == "CNV":
        width, height = rng.uniform(28, 42), rng.uniform(18, 28)
        bump = height * np.exp(-(((x - lesion_x) / width) ** 2))
        new_rpe = rpe - bump
        top = top - 0.6 * bump
        fluid = (y > new_rpe + 4) & (y < rpe) & (bump > 2)
        rpe = new_rpe
        covered = np.nonzero(bump > 2)[0]
        boxes.append(
            (
                int(covered[0]),
                int(np.min(new_rpe[covered]) - 6),
                int(covered[-1]),
                int(np.max(rpe[covered] + bump[covered]) + 2),
            )
        )
    elif label == "DME":
        width, lift = rng.uniform(45, 65), rng.uniform(14, 22)
        thickening = lift * np.exp(-(((x - lesion_x) / width) ** 2))
        top = top - thickening
    elif label == "DRUSEN":
        count = int(rng.integers(3, 6))
        centres = np.sort(lesion_x + rng.uniform(-60, 60, size=count))
        for centre in centres:
            width, height = rng.uniform(6, 10), rng.uniform(6, 10)
            bump = height * np.exp(-(((x - centre) / width) ** 2))
            rpe = rpe - bump
            x0, x1 = int(centre - 2 * width), int(centre + 2 * width)
            y_base = int(rpe[int(np.clip(centre, 0, cols - 1))] + height)
            boxes.append((max(x0, 0), int(y_base - 2 * height), min(x1, cols - 1), y_base + 6))

    depth = (y - top) / np.maximum(rpe - top, 1.0)
    retina = np.interp(depth, _LAYER_DEPTHS, _LAYER_VALUES).astype(np.float32)
    below = y - bruch
    choroid = 0.55 * np.exp(-np.maximum(below, 0) / 40.0)
    # Between a lifted RPE and Bruch's membrane: drusenoid material (moderately
    # reflective); CNV's fluid is drawn over it below.
    sub_rpe = (y > rpe) & (below <= 0)
    image = np.where(depth < 0, 0.05, np.where(below > 0, choroid, np.where(sub_rpe, 0.5, retina)))

    if label == "CNV":
        membrane = np.abs(y - (rpe + 2)) < 3
        image = np.where(membrane & (fluid.any(axis=0)), 0.95, image)
        image = np.where(fluid, 0.04, image)
    elif label == "DME":
        count = int(rng.integers(3, 7))
        cyst_boxes = []
        for _ in range(count):
            cx = lesion_x + rng.uniform(-35, 35)
            ci = int(np.clip(cx, 0, cols - 1))
            cy = top[ci] + (rpe[ci] - top[ci]) * rng.uniform(0.3, 0.65)
            rx, ry = rng.uniform(5, 11), rng.uniform(4, 9)
            cyst = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
            image = np.where(cyst, 0.03, image)
            cyst_boxes.append((cx - rx, cy - ry, cx + rx, cy + ry))
        # The box holds the cysts and the thickened retina above them.
        thick = np.nonzero(thickening > 3)[0]
        xs0, _ys0, xs1, ys1 = zip(*cyst_boxes, strict=True)
        boxes.append(
            (
                int(max(min(min(xs0), thick[0]), 0)),
                int(max(np.min(top[thick]) - 4, 0)),
                int(min(max(max(xs1), thick[-1]), cols - 1)),
                int(max(ys1)),
            )
        )

    image = box_blur(image, 1, passes=1)
    speckle = rng.gamma(shape=5.0, scale=1 / 5.0, size=shape).astype(np.float32)
    image = image * speckle + rng.normal(0, 0.03, size=shape)
    return Phantom(np.clip(image, 0, 1).astype(np.float32), label, tuple(boxes))


# --------------------------------------------------------------------- CXR


def render_cxr(label: str, rng: np.random.Generator, shape: tuple[int, int] = CXR_SHAPE) -> Phantom:
    """Render one PA chest radiograph of ``label`` (one of :data:`CXR_LABELS`)."""
    if label not in CXR_LABELS:
        raise ValueError(f'Argument "label" must be one of {CXR_LABELS}, got {label!r}.')
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cx = cols / 2 + rng.uniform(-10, 10)
    body = ((x - cx) / (cols * 0.46)) ** 2 + ((y - rows * 0.55) / (rows * 0.6)) ** 2 < 1
    image = np.where(body, 0.55, 0.05).astype(np.float32)

    lungs = []
    lung_boxes: list[Box] = []
    for side in (-1, 1):
        lx = cx + side * cols * rng.uniform(0.19, 0.22)
        ly = rows * rng.uniform(0.45, 0.5)
        rx, ry = cols * rng.uniform(0.14, 0.16), rows * rng.uniform(0.30, 0.34)
        lung = ((x - lx) / rx) ** 2 + ((y - ly) / ry) ** 2 < 1
        lungs.append((lung, lx, ly, rx, ry))
        lung_boxes.append((int(lx - rx), int(ly - ry), int(lx + rx), int(ly + ry)))
        image = np.where(lung, 0.18, image)
    lung_mask = lungs[0][0] | lungs[1][0]

    # Ribs: curved bands that cross both lung fields.
    for index in range(9):
        base = rows * 0.18 + index * rows * 0.075 + rng.uniform(-3, 3)
        for side in (-1, 1):
            curve = base + 0.0025 * (x - cx) ** 2 * 0.4 - side * 0.0 * (x - cx)
            rib = (np.abs(y - curve) < 5) & ((x - cx) * side > 8)
            image = image + np.where(rib & lung_mask, 0.16, 0.0)
    spine = np.abs(x - cx) < cols * 0.045
    image = np.where(spine & body, image + 0.25, image)
    heart = ((x - (cx + cols * 0.05)) / (cols * 0.15)) ** 2 + (
        (y - rows * 0.62) / (rows * 0.16)
    ) ** 2 < 1
    image = np.where(heart, 0.62, image)
    lung_mask = lung_mask & ~heart

    boxes: list[Box] = []
    if label == "BACTERIA":
        lung, lx, ly, rx, ry = lungs[int(rng.integers(0, 2))]
        consolidation = _lobar_consolidation(rng, x, y, lx, ly, rx, ry) * (lung & ~heart)
        image = image + consolidation
        support = np.nonzero(consolidation > 0.08)
        boxes.append(
            (
                int(support[1].min()),
                int(support[0].min()),
                int(support[1].max()),
                int(support[0].max()),
            )
        )
    elif label == "VIRUS":
        fine = rng.normal(0, 1, size=shape).astype(np.float32)
        reticular = box_blur(fine, 1) - box_blur(fine, 4)
        pattern = np.clip(reticular * 6.0, 0, None)
        image = image + np.where(lung_mask, 0.25 * pattern + 0.10, 0.0)
        boxes.extend(lung_boxes)

    image = box_blur(image, 2, passes=2)
    noisy = image + rng.normal(0, 0.02, size=shape)
    return Phantom(np.clip(noisy, 0, 1).astype(np.float32), label, tuple(boxes))


def _distance_to_segment(
    x: np.ndarray, y: np.ndarray, start: tuple[float, float], end: tuple[float, float]
) -> np.ndarray:
    (x0, y0), (x1, y1) = start, end
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
    return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))


def _lobar_consolidation(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    lx: float,
    ly: float,
    rx: float,
    ry: float,
) -> np.ndarray:
    """Added density of a segmental consolidation in the lung centred at (lx, ly).

    Dense and homogeneous, with a sharp border where a fissure stops it and
    a soft one elsewhere, crossed by air bronchograms: branching lucent
    airways that stay open inside the consolidated alveoli. A model that
    learns these, rather than mere brightness, is not fooled by a blank box.
    """
    px = lx + rng.uniform(-0.3, 0.3) * rx
    py = ly + rng.uniform(-0.05, 0.45) * ry
    half_width, half_height = rng.uniform(45, 62), rng.uniform(45, 60)
    ellipse = ((x - px) / half_width) ** 2 + ((y - py) / half_height) ** 2
    soft_edge = np.clip((1.0 - ellipse) / 0.6, 0.0, 1.0)
    fissure = py - half_height * rng.uniform(0.45, 0.75) + rng.uniform(-0.25, 0.25) * (x - px)
    density = 0.45 * soft_edge * (y > fissure)
    # Airways enter from the hilar (medial) side and branch once.
    medial = -1.0 if px > lx else 1.0
    airways = np.full(x.shape, np.inf, dtype=np.float32)
    for _ in range(int(rng.integers(2, 4))):
        start = (px + medial * half_width * 0.5, py + rng.uniform(-0.2, 0.3) * half_height)
        angle = rng.uniform(-0.6, 0.6)
        length = rng.uniform(0.5, 0.8) * half_width
        middle = (
            start[0] - medial * length * np.cos(angle),
            start[1] + length * np.sin(angle),
        )
        airways = np.minimum(airways, _distance_to_segment(x, y, start, middle))
        for turn in (-0.5, 0.5):
            end = (
                middle[0] - medial * 0.5 * length * np.cos(angle + turn),
                middle[1] + 0.5 * length * np.sin(angle + turn),
            )
            airways = np.minimum(airways, _distance_to_segment(x, y, middle, end))
    lucent = np.clip(2.5 - airways, 0.0, 1.0)
    return (density * (1.0 - 0.8 * lucent)).astype(np.float32)


def render(modality: str, label: str, rng: np.random.Generator) -> Phantom:
    if modality == "oct":
        return render_oct(label, rng)
    if modality == "cxr":
        return render_cxr(label, rng)
    raise ValueError(f'Argument "modality" must be "oct" or "cxr", got {modality!r}.')


def labels_for(modality: str) -> tuple[str, ...]:
    if modality == "oct":
        return OCT_LABELS
    if modality == "cxr":
        return CXR_LABELS
    raise ValueError(f'Argument "modality" must be "oct" or "cxr", got {modality!r}.')
