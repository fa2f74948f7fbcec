"""Decode untrusted pixel data in a child process, with bounded memory and time.

Received images come from devices and networks the daemon does not
control, and pixel decoders (JPEG, JPEG-LS, JPEG 2000, RLE) are native
code. A crafted or damaged image could crash such a decoder, exhaust
memory or hang. Decoding therefore runs in a child process (a spawned
interpreter: it inherits neither ONNX Runtime's threads nor the database
connections, and needs no socket in the temporary folder, which the daemon
points at its spool) whose address space is capped (``RLIMIT_AS``) and whose every
call has a deadline. A crash, a hang or an out-of-memory ends or is killed
with the child, never the daemon; a fresh child takes the next image. The
gate (``daemon.validate``) has already refused declared sizes beyond its
bounds before anything is decoded.
"""

from __future__ import annotations

import logging
import multiprocessing
import resource
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dicom_io.pixels import DecodedImage, decode_all_frames, decode_instance
from domain.errors import InferenceError
from model_runtime.package import InputSpec
from model_runtime.preprocess import model_input

logger = logging.getLogger(__name__)

T = TypeVar("T")

# More than any image the gate lets through needs while decoding (a 512 M
# sample volume is refused; the pipeline works frame by frame otherwise).
MEMORY_LIMIT_BYTES = 6 * 1024**3
TIMEOUT_SECONDS = 60.0


class DecoderClosed(Exception):
    """A call after ``close``: the daemon is stopping, and no image is to blame."""


class DecoderCrashed(Exception):
    """The decoding child died (a native crash, or killed for memory) or hung.

    Not an ``InferenceError``: the image may be innocent (the host was out of
    memory), so it is tried again, up to the pipeline's attempts.
    """


def decode(path: Path, all_frames: bool) -> list[DecodedImage]:
    """The image(s) to classify: the centre frame, or every frame."""
    return decode_all_frames(path) if all_frames else [decode_instance(path)]


def decode_for_model(
    path: Path, all_frames: bool, spec: InputSpec
) -> tuple[np.ndarray, list[int | None]]:
    """The model's input rows (frames, height, width, channels) and their frame numbers.

    Run in the child: resizing is numpy and Pillow work that holds the GIL,
    and the prepared rows are smaller to send back than the decoded frames.
    """
    frames = decode(path, all_frames)
    rows = np.stack(
        [model_input(f.image, spec.height, spec.width, spec.channels, spec.scaling) for f in frames]
    )
    return rows, [f.frame_number for f in frames]


Request = tuple[Path, bool, InputSpec]  # (file, all frames, model input)


def decode_many_for_model(
    requests: list[Request],
) -> list[tuple[np.ndarray, list[int | None]] | Exception]:
    """``decode_for_model`` for several images in one call; each image's error
    is returned in its place, so one bad image does not fail the others."""
    results: list[tuple[np.ndarray, list[int | None]] | Exception] = []
    for path, all_frames, spec in requests:
        try:
            results.append(decode_for_model(path, all_frames, spec))
        except Exception as exc:
            results.append(exc)
    return results


def _limit_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class IsolatedDecoder:
    """Runs decoding calls in one child process, one call at a time."""

    def __init__(
        self,
        memory_limit_bytes: int = MEMORY_LIMIT_BYTES,
        timeout_seconds: float = TIMEOUT_SECONDS,
    ) -> None:
        if memory_limit_bytes < 256 * 1024**2:
            raise ValueError('Argument "memory_limit_bytes" must be at least 256 MiB.')
        if timeout_seconds <= 0:
            raise ValueError('Argument "timeout_seconds" must be positive.')
        self.memory_limit_bytes = memory_limit_bytes
        self.timeout_seconds = timeout_seconds
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    def decode(self, path: Path, all_frames: bool = False) -> list[DecodedImage]:
        return self.run(decode, path, all_frames)

    def decode_for_model(
        self, path: Path, all_frames: bool, spec: InputSpec
    ) -> tuple[np.ndarray, list[int | None]]:
        return self.run(decode_for_model, path, all_frames, spec)

    def decode_many_for_model(
        self, requests: list[Request]
    ) -> list[tuple[np.ndarray, list[int | None]] | Exception]:
        """Several images in one round trip to the child (each its own result or
        error). Should the child crash or hang, each image is decoded again on
        its own, so that only the image to blame gets ``DecoderCrashed``."""
        if len(requests) == 1:
            return [self._one(*requests[0])]
        try:
            results = self.run(decode_many_for_model, requests)
        except DecoderCrashed:
            return [self._one(*request) for request in requests]
        return [_memory_error_named(result, self.memory_limit_bytes) for result in results]

    def _one(
        self, path: Path, all_frames: bool, spec: InputSpec
    ) -> tuple[np.ndarray, list[int | None]] | Exception:
        try:
            return self.decode_for_model(path, all_frames, spec)
        except Exception as exc:
            return exc

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in the child; its result, or its exception re-raised.

        Raises ``DecoderCrashed`` when the child dies or passes the deadline
        (it is then killed), and ``InferenceError`` when it runs out of its
        memory allowance.
        """
        with self._lock:
            executor = self._child()
            future = executor.submit(function, *args)
            try:
                return future.result(timeout=self.timeout_seconds)
            except FutureTimeout:
                self._discard(kill=True)
                raise DecoderCrashed(
                    f"Decoding took longer than {self.timeout_seconds:.0f} s; the decoder was "
                    "stopped."
                ) from None
            except BrokenProcessPool:
                self._discard(kill=False)
                raise DecoderCrashed(
                    "The decoder process died while decoding (a crash in a native decoder, "
                    "or killed for memory)."
                ) from None
            except MemoryError:
                raise _out_of_memory(self.memory_limit_bytes) from None

    def close(self) -> None:
        """End the child now, and wait for the executor's thread to finish.

        Called once the workers have stopped, or been given up on at the end
        of the drain: a call still running in the child is abandoned (its
        image stays leased and is taken again after the restart). Not under
        the lock, which such a call holds. Killing the child, rather than
        asking it to finish, leaves nothing for the interpreter's exit to
        wait on: CI saw ``triage serve`` hang after "Stopped", its exit
        joining decoder children that never ended.
        """
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        _kill_children(executor)
        executor.shutdown(wait=True, cancel_futures=True)

    def _child(self) -> ProcessPoolExecutor:
        if self._closed:
            raise DecoderClosed("The decoder is closed: the daemon is stopping.")
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_limit_memory,
                initargs=(self.memory_limit_bytes,),
            )
        return self._executor

    def _discard(self, kill: bool) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if kill:
            _kill_children(executor)
        executor.shutdown(wait=False, cancel_futures=True)


def _kill_children(executor: ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor has no public way to kill its workers before
    # Python 3.14 (``terminate_workers``).
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.kill()


def _out_of_memory(limit: int) -> InferenceError:
    return InferenceError(
        f"Decoding needs more than the decoder's {limit / 1024**3:.1f} GiB of memory."
    )


def _memory_error_named(result: T | Exception, limit: int) -> T | Exception:
    return _out_of_memory(limit) if isinstance(result, MemoryError) else result
