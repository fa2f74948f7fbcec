"""Process-wide switches, set here in the entry point and nowhere else.

Logging (handlers, levels, what third-party libraries may say) and ONNX
Runtime's own logger are global to the process: library code never
changes them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TextIO

logger = logging.getLogger(__name__)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def __init__(self, process_name: str | None = None) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.process_name:
            entry["process"] = self.process_name
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(
    level: str,
    log_format: str = "text",
    stream: TextIO = sys.stderr,
    process_name: str | None = None,
) -> None:
    """Log to ``stream``; ``process_name`` marks the lines of a helper process
    (a receiver) that shares the daemon's stream."""
    handler = logging.StreamHandler(stream)
    marker = f"[{process_name}] " if process_name else ""
    handler.setFormatter(
        JsonFormatter(process_name)
        if log_format == "json"
        else logging.Formatter(f"%(asctime)s %(levelname)s {marker}%(name)s: %(message)s")
    )
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True
    )
    # pydicom's validation warnings quote element values (a patient's name or
    # birth date): route Python warnings through logging, and let them and
    # pydicom's own records through only when debugging.
    logging.captureWarnings(True)
    debugging = level.upper() == "DEBUG"
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if debugging else logging.CRITICAL + 1)
    logging.getLogger("pydicom").setLevel(logging.DEBUG if debugging else logging.ERROR)
    # pynetdicom logs every PDU at INFO, including patient attributes of
    # C-FIND identifiers; keep it to warnings unless debugging.
    if not debugging:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        # highdicom logs the UIDs of the studies it copies from at INFO.
        logging.getLogger("highdicom").setLevel(logging.WARNING)


MULTIPROCESS_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def share_metrics_between_processes(directory: Path) -> None:
    """Count metrics in files under ``directory`` (emptied first), so that the
    /metrics endpoint adds up those of the receiver processes.

    prometheus_client reads the variable when it is first imported, and
    spawned receivers inherit it: call this before anything imports it.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess mode was set")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROCESS_METRICS_ENV] = str(directory)


def quiet_onnxruntime() -> None:
    """Let only ONNX Runtime's fatal messages through, for commands that run models.

    It prints multi-line errors of its own (a CUDA library that will not
    load, say); the classifier turns each failure into an error or a
    one-line warning of ours.
    """
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)


def load_cuda_libraries(device: str) -> None:
    """CUDA and cuDNN from the ``nvidia-*`` pip wheels, when they are installed.

    Process-wide (it loads shared libraries), so it runs here, before any
    model is opened. With the wheels the host needs only the NVIDIA driver;
    without them ONNX Runtime looks on the system's library path as usual.
    ``preload_dlls`` prints what it cannot load; that goes to the debug log.
    """
    import contextlib
    import importlib.util
    import io

    import onnxruntime

    if device == "cpu" or not hasattr(onnxruntime, "preload_dlls"):
        return
    if importlib.util.find_spec("nvidia") is None:
        logger.debug("No nvidia-* wheels: CUDA libraries come from the system, if any")
        return
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        onnxruntime.preload_dlls()
    if printed.getvalue().strip():
        logger.debug("onnxruntime.preload_dlls: %s", printed.getvalue().strip())
    logger.info("Loaded the CUDA libraries of the nvidia-* wheels for ONNX Runtime")


def quiet_tensorflow() -> None:
    """TensorFlow's C++ logging: warnings and errors only. Read when it is first
    imported, so this runs before any trainer module is."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
