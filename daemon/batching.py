"""Infer in batches: prepared images from every decode worker, up to B or T.

Decode workers (``daemon.pipeline``) hand over each image already decoded
and prepared in their child processes. One batcher thread collects them
until ``[models] batch_size`` images are waiting or ``batch_wait_ms`` have
passed since the first, then runs one ``predict`` per model. Under a flood
a batch fills at once and the model runs at its batch rate (on a GPU,
batch 1 gets an eighth of it: bench/README.md); a lone image waits at most
T for company. There is one session per model: images are grouped by the
classifier their decode worker's runtime snapshot gave them, so a reload
never mixes two models in one batch.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import numpy as np

from daemon import metrics
from daemon.runtime import CurrentRuntime
from daemon.worker import Worker
from domain.errors import InferenceError
from domain.triage import Classification
from model_runtime.classifier import Classifier

logger = logging.getLogger(__name__)

K = TypeVar("K")
# What became of one image: its classifications (one per frame), or why not.
Outcome = list[Classification] | InferenceError


@dataclasses.dataclass(frozen=True)
class Prepared(Generic[K]):
    """One image's model input, ready for a batch."""

    key: K  # whose image: the pipeline's leased instance
    classifier: Classifier
    rows: np.ndarray  # (frames, height, width, channels)
    frame_numbers: list[int | None]


def infer(items: Sequence[Prepared[K]], max_images: int) -> list[Outcome]:
    """Classify ``items``: one ``predict`` per classifier and per ``max_images`` rows.

    An image with more frames than ``max_images`` runs alone, whole. A
    model that refuses a batch (``InferenceError``) fails only that batch.
    """
    outcomes: list[Outcome | None] = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(id(item.classifier), []).append(index)
    for indexes in groups.values():
        for chunk in _chunks([items[i] for i in indexes], indexes, max_images):
            classifier = items[chunk[0]].classifier
            rows = np.concatenate([items[i].rows for i in chunk])
            started = time.perf_counter()
            try:
                probabilities = classifier.predict(rows)
            except InferenceError as exc:
                for i in chunk:
                    outcomes[i] = exc
                continue
            per_image_ms = (time.perf_counter() - started) * 1000 / len(rows)
            metrics.BATCH_IMAGES.observe(len(rows))
            metrics.INFERENCE_SECONDS.observe(per_image_ms / 1000)
            offset = 0
            for i in chunk:
                count = len(items[i].rows)
                outcomes[i] = classifier.classifications(
                    probabilities[offset : offset + count], items[i].frame_numbers, per_image_ms
                )
                offset += count
    done = [outcome for outcome in outcomes if outcome is not None]
    assert len(done) == len(items)  # every image is in exactly one chunk
    return done


def _chunks(items: list[Prepared[K]], indexes: list[int], max_images: int) -> list[list[int]]:
    chunks: list[list[int]] = []
    current: list[int] = []
    images = 0
    for item, index in zip(items, indexes, strict=True):
        if current and images + len(item.rows) > max_images:
            chunks.append(current)
            current, images = [], 0
        current.append(index)
        images += len(item.rows)
    if current:
        chunks.append(current)
    return chunks


class MicroBatcher(Worker, Generic[K]):
    """The one inference thread: batches what the decode workers submit.

    ``record`` gets each batch's images with their outcomes; ``give_back``
    gets the images still waiting when the daemon stops (they were never
    tried, so their attempt is not counted), and ``fail`` a batch whose
    ``record`` or inference raised something unexpected.
    """

    def __init__(
        self,
        runtime: CurrentRuntime,
        record: Callable[[list[tuple[Prepared[K], Outcome]]], None],
        give_back: Callable[[list[Prepared[K]]], None],
        fail: Callable[[list[Prepared[K]], Exception], None],
        stop: threading.Event,
        capacity: int = 64,
    ) -> None:
        super().__init__("triage-batcher", stop, idle_seconds=0.05, stuck_seconds=300.0)
        self.runtime = runtime
        self.record = record
        self.give_back = give_back
        self.fail = fail
        self._queue: queue.Queue[Prepared[K]] = queue.Queue(maxsize=capacity)
        self._lock = threading.Lock()
        self._closed = False

    def pending(self) -> int:
        """Images waiting for a batch (the occlusion maps yield to these too)."""
        return self._queue.qsize()

    def submit(self, item: Prepared[K]) -> bool:
        """Queue ``item``, waiting while the queue is full; False once the batcher
        has stopped taking work (the caller gives the image back)."""
        while True:
            with self._lock:
                if self._closed:
                    return False
                try:
                    self._queue.put_nowait(item)
                    return True
                except queue.Full:
                    pass
            time.sleep(0.005)

    def tick(self) -> bool:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return False
        settings = self.runtime.current().settings.models
        batch = [first]
        images = len(first.rows)
        deadline = time.monotonic() + settings.batch_wait_ms / 1000
        while images < settings.batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            batch.append(item)
            images += len(item.rows)
        try:
            self.record(list(zip(batch, infer(batch, settings.batch_size), strict=True)))
        except Exception as exc:
            logger.exception("A batch of %d image(s) could not be triaged", len(batch))
            self.fail(batch, exc)
        return True

    def run(self) -> None:
        super().run()
        # Stopped: take nothing more, and give back what is still waiting.
        with self._lock:
            self._closed = True
            left: list[Prepared[K]] = []
            while True:
                try:
                    left.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        if left:
            self.give_back(left)
