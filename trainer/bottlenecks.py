"""Bottleneck features of a frozen base, computed once and cached on disk.

The cache is keyed by the image's content (SHA-256 of the file), the
backbone and the hash of its weights, so that renaming or moving images
reuses their features and changing the weights never does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_runtime.package import InputSpec
from model_runtime.preprocess import load_grey_file, model_input
from trainer.progress import Progress

logger = logging.getLogger(__name__)


def content_key(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_batch(paths: Sequence[Path], spec: InputSpec) -> np.ndarray:
    return np.stack(
        [
            model_input(
                load_grey_file(str(p)), spec.height, spec.width, spec.channels, spec.scaling
            )
            for p in paths
        ]
    )


class BottleneckCache:
    def __init__(self, root: Path, backbone: str, weights_sha256: str) -> None:
        if not weights_sha256:
            raise ValueError('Argument "weights_sha256" must name the frozen weights.')
        self.folder = Path(root) / f"{backbone}-{weights_sha256[:16]}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.computed = 0  # features computed (not read from the cache) by this object

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def features(
        self, paths: Sequence[Path], base: Any, spec: InputSpec, batch_size: int = 32
    ) -> np.ndarray:
        """Features of every image in ``paths``, computing only the missing ones."""
        keys = [content_key(p) for p in paths]
        missing = [i for i, key in enumerate(keys) if not self._path(key).is_file()]
        if missing:
            progress = Progress(len(missing), "bottlenecks", "images")
            for start in range(0, len(missing), batch_size):
                chunk = missing[start : start + batch_size]
                batch = load_batch([paths[i] for i in chunk], spec)
                values = np.asarray(base.predict(batch, verbose=0), dtype=np.float32)
                for index, vector in zip(chunk, values, strict=True):
                    self._save(keys[index], vector)
                self.computed += len(chunk)
                progress.advance(len(chunk))
        logger.info(
            "Bottlenecks: %d computed, %d read from the cache %s",
            len(missing),
            len(paths) - len(missing),
            self.folder,
        )
        return np.stack([np.load(self._path(key)) for key in keys])

    def _save(self, key: str, vector: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        temporary = path.with_name(f".{uuid.uuid4().hex}.npy")
        np.save(temporary, vector)
        os.replace(temporary, path)
