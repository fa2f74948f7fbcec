from __future__ import annotations

import numpy as np
import pytest

from phantoms.images import (
    CXR_LABELS,
    OCT_LABELS,
    RetinaGeometry,
    box_blur,
    render_cxr,
    render_oct,
)


def _inside_a_box(point: tuple[int, int], boxes, margin: int = 6) -> bool:
    row, col = point
    return any(
        x0 - margin <= col <= x1 + margin and y0 - margin <= row <= y1 + margin
        for x0, y0, x1, y1 in boxes
    )


def _strongest_change(lesion: np.ndarray, normal: np.ndarray) -> tuple[int, int]:
    # Blurring removes speckle, which differs between the two renders.
    change = np.abs(box_blur(lesion, 3) - box_blur(normal, 3))
    return tuple(int(v) for v in np.unravel_index(np.argmax(change), change.shape))


@pytest.mark.parametrize("label", OCT_LABELS)
def test_oct_lesions_are_where_the_boxes_say(label: str) -> None:
    geometry = RetinaGeometry(
        top=80, thickness=62, tilt=0.0, fovea_x=160, pit_depth=15, pit_width=25
    )
    lesion = render_oct(label, np.random.default_rng(1), geometry)
    normal = render_oct("NORMAL", np.random.default_rng(1), geometry)
    assert lesion.image.shape == (256, 320)
    assert lesion.image.min() >= 0.0 and lesion.image.max() <= 1.0
    if label == "NORMAL":
        assert lesion.boxes == ()
        return
    assert lesion.boxes
    for x0, y0, x1, y1 in lesion.boxes:
        assert 0 <= x0 < x1 < 320 and 0 <= y0 < y1 < 256
    assert _inside_a_box(_strongest_change(lesion.image, normal.image), lesion.boxes)


@pytest.mark.parametrize("label", CXR_LABELS)
def test_cxr_lesions_are_inside_their_boxes(label: str) -> None:
    phantom = render_cxr(label, np.random.default_rng(2))
    rows, cols = phantom.image.shape
    if label == "NORMAL":
        assert phantom.boxes == ()
    for x0, y0, x1, y1 in phantom.boxes:
        assert 0 <= x0 < x1 < cols and 0 <= y0 < y1 < rows
    if label != "NORMAL":
        normal = render_cxr("NORMAL", np.random.default_rng(2))
        assert _inside_a_box(_strongest_change(phantom.image, normal.image), phantom.boxes)


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match='"label"'):
        render_oct("GLAUCOMA", np.random.default_rng(0))
