"""The queue from receive to infer: ids of instances just stored.

It is only a hint, never the record: every stored instance is committed as
RECEIVED before it is queued, and the pipeline's sweep finds any the queue
missed (a full queue, a restart, a receiver process that died with ids
still unsent). So the queue may drop ids, and nothing waits for it.

With one receiver (the listener in the daemon's own process) it is a
``queue.Queue``. With receiver processes (``[dicom] receivers``) it is a
``multiprocessing`` queue that they all put into.
"""

from __future__ import annotations

import multiprocessing
import queue
from typing import Protocol

WORK_QUEUE_SIZE = 1000


class WorkQueue(Protocol):
    """What the C-STORE handler, the pipeline and the status need of the queue."""

    def put_nowait(self, item: int) -> None: ...

    def get(self, block: bool = True, timeout: float | None = None) -> int: ...

    def get_nowait(self) -> int: ...

    def qsize(self) -> int: ...


def make_work_queue(shared: bool, maxsize: int = WORK_QUEUE_SIZE) -> WorkQueue:
    """A queue for this process alone, or one that spawned processes can put into."""
    if not shared:
        return queue.Queue(maxsize=maxsize)
    work: multiprocessing.Queue[int] = multiprocessing.get_context("spawn").Queue(maxsize)
    # Ids still buffered when a process exits are dropped rather than waited
    # for (the sweep finds their instances): an exit never blocks on a pipe
    # that nobody reads any more.
    work.cancel_join_thread()
    return work
