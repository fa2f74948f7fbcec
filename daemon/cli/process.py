"""Process-wide switches, set here in the entry point and nowhere else.

Logging (handlers, levels, what third-party libraries may say) and ONNX
Runtime's own logger are global to the process: library code never
changes them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TextIO


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, log_format: str = "text", stream: TextIO = sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
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


def quiet_onnxruntime() -> None:
    """Let only ONNX Runtime's fatal messages through, for commands that run models.

    It prints multi-line errors of its own (a CUDA library that will not
    load, say); the classifier turns each failure into an error or a
    one-line warning of ours.
    """
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)


def quiet_tensorflow() -> None:
    """TensorFlow's C++ logging: warnings and errors only. Read when it is first
    imported, so this runs before any trainer module is."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
