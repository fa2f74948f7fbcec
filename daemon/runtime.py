"""The running configuration: settings and models as one snapshot.

A ``Runtime`` is immutable. Workers hold the ``CurrentRuntime`` and take
``current()`` once per unit of work, so one image, report or map is handled
with one consistent pair of settings and models even while a SIGHUP reload
is under way. A reload builds a whole new snapshot and swaps it in a single
assignment; anything that fails to load leaves the running one in place.
Keys that are read only at start-up (``config.RESTART``) keep their running
value, and the reload names them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from daemon.config import Settings, keep_restart_keys, load_settings, restart_needed
from domain.errors import TriageError
from domain.triage import TriageModality
from model_runtime.classifier import Classifier, provider_reason

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Settings and the classifiers loaded for them; replaced whole, never edited."""

    settings: Settings
    classifiers: Mapping[TriageModality, Classifier]


class CurrentRuntime:
    """The snapshot in force. Reading and replacing it are one attribute access
    each, so a reader never sees half of a reload; only the main loop replaces it."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def current(self) -> Runtime:
        return self._runtime

    def replace(self, runtime: Runtime) -> None:
        self._runtime = runtime


def load_classifiers(settings: Settings) -> Mapping[TriageModality, Classifier]:
    """Both model packages; raises ``TriageError`` if either cannot be loaded."""
    classifiers = {
        TriageModality.OCT: Classifier(Path(settings.models.oct), settings.models.device),
        TriageModality.CXR: Classifier(Path(settings.models.cxr), settings.models.device),
    }
    providers = sorted({c.provider for c in classifiers.values()})
    logger.info(
        "Inference runs on %s: %s",
        ", ".join(providers),
        provider_reason(providers[0], settings.models.device),
    )
    for modality, classifier in classifiers.items():
        manifest = classifier.manifest
        logger.info(
            "Model %s: %s %s, labels %s, sha256 %s",
            modality.value,
            manifest.name,
            manifest.version,
            ",".join(manifest.labels),
            manifest.onnx_sha256[:12],
        )
    return MappingProxyType(classifiers)


def load_runtime(settings: Settings) -> Runtime:
    return Runtime(settings, load_classifiers(settings))


def reload_runtime(config_path: Path | None, running: Runtime) -> Runtime:
    """The snapshot a SIGHUP asks for, or ``running`` if any part fails to load.

    A broken configuration or model package is logged and never replaces
    what works.
    """
    try:
        loaded = load_settings(config_path)
        fresh = load_runtime(keep_restart_keys(running.settings, loaded))
    except TriageError as exc:
        logger.error("Reload rejected, keeping the running configuration and models: %s", exc)
        return running
    if pending := restart_needed(running.settings, loaded):
        logger.warning("Changed, and kept as they were until a restart: %s", ", ".join(pending))
    logger.info(
        "Reloaded: %s",
        ", ".join(
            f"{m.value} {c.manifest.name} {c.manifest.version}"
            for m, c in fresh.classifiers.items()
        ),
    )
    return fresh
