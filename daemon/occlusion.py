"""The occlusion core lives in ``model_runtime.occlusion``; these names stay for callers."""

from model_runtime.occlusion import (
    BATCH,
    FAST_FRACTION,
    OcclusionMap,
    Predict,
    grid_positions,
    occlusion_map,
    peak,
    peak_in_lesion,
    to_source_geometry,
)

__all__ = [
    "BATCH",
    "FAST_FRACTION",
    "OcclusionMap",
    "Predict",
    "grid_positions",
    "occlusion_map",
    "peak",
    "peak_in_lesion",
    "to_source_geometry",
]
