"""Settings: one frozen object, loaded from TOML, then the environment.

Every key of every section can be overridden by an environment variable
named ``TRIAGE_<SECTION>_<KEY>`` (for example ``TRIAGE_DICOM_PORT=11113``).
Values are validated once, here; a bad value is an error, never coerced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.errors import ConfigError

logger = logging.getLogger(__name__)

ENV_PREFIX = "TRIAGE_"


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """Where state lives when the configuration does not say.

    systemd sets ``STATE_DIRECTORY`` from the unit's ``StateDirectory=``; an
    interactive run uses ``./var`` so that nothing is written elsewhere.
    """
    return Path(environ.get("STATE_DIRECTORY", "var")).absolute()


@dataclasses.dataclass(frozen=True)
class DicomSettings:
    ae_title: str = "TRIAGE"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    max_associations: int = 10
    network_timeout_seconds: float = 60.0
    # 0 means unlimited: far faster ingest of large images (REFERENCE.md).
    max_pdu_size: int = 0

    def validate(self) -> None:
        _check_ae_title("dicom.ae_title", self.ae_title)
        for aet in self.allowed_calling_aets:
            _check_ae_title("dicom.allowed_calling_aets", aet)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f'Key "dicom.port" must be in 0..65535, got {self.port}.')
        if self.max_associations < 1:
            raise ConfigError('Key "dicom.max_associations" must be at least 1.')
        if self.max_pdu_size != 0 and not 4096 <= self.max_pdu_size <= 2**32 - 1:
            raise ConfigError('Key "dicom.max_pdu_size" must be 0 (unlimited) or at least 4096.')


@dataclasses.dataclass(frozen=True)
class StorageSettings:
    state_dir: str = ""
    database_url: str = ""
    spool_dir: str = ""
    # A second copy of a SOP Instance UID: "keep_first" (as Orthanc does) or
    # "replace_if_different" (a changed copy replaces the first and is triaged again).
    duplicate_policy: str = "keep_first"
    # Below this much free space in the spool, C-STOREs are refused with
    # 0xA700 (out of resources) so that the disk never fills.
    min_free_bytes: int = 1_000_000_000

    def validate(self) -> None:
        if self.min_free_bytes < 0:
            raise ConfigError('Key "storage.min_free_bytes" must not be negative.')
        if self.duplicate_policy not in ("keep_first", "replace_if_different"):
            raise ConfigError(
                'Key "storage.duplicate_policy" must be "keep_first" or "replace_if_different".'
            )

    def resolved(self, environ: Mapping[str, str]) -> StorageSettings:
        state = Path(self.state_dir) if self.state_dir else default_state_dir(environ)
        return StorageSettings(
            state_dir=str(state),
            database_url=self.database_url or f"sqlite:///{state / 'triage.sqlite3'}",
            spool_dir=self.spool_dir or str(state / "spool"),
            duplicate_policy=self.duplicate_policy,
            min_free_bytes=self.min_free_bytes,
        )


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    oct: str = ""
    cxr: str = ""
    # "auto" tries CUDA then falls back to the CPU; "cpu" never tries CUDA.
    device: str = "auto"

    def resolved(self, state_dir: Path) -> ModelSettings:
        return ModelSettings(
            oct=self.oct or str(state_dir / "models" / "oct"),
            cxr=self.cxr or str(state_dir / "models" / "cxr"),
            device=self.device,
        )

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError('Key "models.device" must be one of "auto", "cpu", "cuda".')


@dataclasses.dataclass(frozen=True)
class StudySettings:
    stable_seconds: float = 5.0
    # OCT volumes: "centre" triages the central (foveal) B-scan; "all" triages
    # every B-scan and reports the most urgent one with its frame number.
    oct_frames: str = "centre"

    def validate(self) -> None:
        if self.stable_seconds < 0:
            raise ConfigError('Key "study.stable_seconds" must not be negative.')
        if self.oct_frames not in ("centre", "all"):
            raise ConfigError('Key "study.oct_frames" must be "centre" or "all".')


@dataclasses.dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    def validate(self) -> None:
        _check_ae_title("destinations.ae_title", self.ae_title)
        if not 1 <= self.port <= 65535:
            raise ConfigError(f'Key "destinations.port" must be in 1..65535, got {self.port}.')


_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in "90s", "5m", "1h" or "7d"."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"{text!r} is not a duration like 30s, 5m, 1h or 7d.")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_retry_schedule(text: str) -> tuple[float, ...]:
    """Delays between attempts from a dcm4chee-style schedule: "5x1m,12x5m,24x1h".

    Each item is COUNTxDURATION (or a bare DURATION, once). The first
    attempt is immediate; after the last delay the delivery is dead-lettered.
    """
    delays: list[float] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        count_text, _, duration = item.rpartition("x")
        count = int(count_text) if count_text else 1
        if count < 1 or (count_text and not count_text.isdigit()):
            raise ConfigError(f"Retry schedule item {item!r} must be COUNTxDURATION.")
        delays.extend([parse_duration(duration)] * count)
    if not delays:
        raise ConfigError("The retry schedule must not be empty.")
    return tuple(delays)


@dataclasses.dataclass(frozen=True)
class DeliverySettings:
    # Delays between C-STORE attempts, as dcm4chee writes them; after the
    # last one the delivery is dead-lettered (state "failed").
    retry_schedule: str = "5x1m,12x5m,24x1h"

    @property
    def delays(self) -> tuple[float, ...]:
        return parse_retry_schedule(self.retry_schedule)

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1

    def validate(self) -> None:
        try:
            self.delays  # noqa: B018 - parsing is the validation
        except (ConfigError, ValueError) as exc:
            raise ConfigError(f'Key "delivery.retry_schedule": {exc}') from exc


@dataclasses.dataclass(frozen=True)
class OcclusionSettings:
    # Occlusion maps (Kermany et al.: a blank box slid over the image).
    enabled: bool = True
    # Send the heat-map Secondary Capture to the destinations too (after the SR).
    send: bool = False
    box: int = 20
    mode: str = "fast"  # "fast", or "grid" at `stride`
    stride: int = 1
    fill: str = "mean"  # what the box holds: the image "mean" or "zero"
    referrals: tuple[str, ...] = ("urgent", "routine", "supportive care")
    workers: int = 1
    queue_size: int = 16

    def validate(self) -> None:
        if self.mode not in ("fast", "grid"):
            raise ConfigError('Key "occlusion.mode" must be "fast" or "grid".')
        if self.fill not in ("mean", "zero"):
            raise ConfigError('Key "occlusion.fill" must be "mean" or "zero".')
        if self.box < 1 or self.stride < 1 or self.workers < 1 or self.queue_size < 1:
            raise ConfigError(
                'Keys "occlusion.box", "stride", "workers" and "queue_size" must be positive.'
            )
        allowed = {"urgent", "routine", "supportive care", "observation"}
        if not set(self.referrals) <= allowed:
            raise ConfigError(f'Key "occlusion.referrals" may only hold {sorted(allowed)}.')


@dataclasses.dataclass(frozen=True)
class RetentionSettings:
    # `triage purge` always deletes old images from the spool; with
    # keep_results the triage results, reports and audit stay in SQL.
    keep_results: bool = True

    def validate(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    # Prometheus endpoint on 127.0.0.1; 0 disables it.
    port: int = 0

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError('Key "metrics.port" must be in 0..65535.')


@dataclasses.dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"
    format: str = "text"  # "text", or "json": one object per line

    def validate(self) -> None:
        if self.format not in ("text", "json"):
            raise ConfigError('Key "logging.format" must be "text" or "json".')
        if self.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError('Key "logging.level" must be DEBUG, INFO, WARNING or ERROR.')


@dataclasses.dataclass(frozen=True)
class Settings:
    dicom: DicomSettings = DicomSettings()
    storage: StorageSettings = StorageSettings()
    models: ModelSettings = ModelSettings()
    study: StudySettings = StudySettings()
    delivery: DeliverySettings = DeliverySettings()
    occlusion: OcclusionSettings = OcclusionSettings()
    retention: RetentionSettings = RetentionSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    destinations: tuple[Destination, ...] = ()

    @property
    def state_dir(self) -> Path:
        return Path(self.storage.state_dir)

    @property
    def spool_dir(self) -> Path:
        return Path(self.storage.spool_dir)

    def describe(self) -> str:
        """A one-line summary for the start-up log; it holds no patient data."""
        dests = ", ".join(f"{d.ae_title}@{d.host}:{d.port}" for d in self.destinations)
        return (
            f"ae_title={self.dicom.ae_title} listen={self.dicom.host}:{self.dicom.port} "
            f"database={_redact_url(self.storage.database_url)} spool={self.storage.spool_dir} "
            f"models=oct:{self.models.oct},cxr:{self.models.cxr} device={self.models.device} "
            f"stable_seconds={self.study.stable_seconds} destinations=[{dests}]"
        )


_SECTIONS: dict[str, type] = {
    "dicom": DicomSettings,
    "storage": StorageSettings,
    "models": ModelSettings,
    "study": StudySettings,
    "delivery": DeliverySettings,
    "occlusion": OcclusionSettings,
    "retention": RetentionSettings,
    "metrics": MetricsSettings,
    "logging": LoggingSettings,
}


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load settings from ``path`` (optional) and the environment.

    Raises
    ------
    ConfigError
        If the file cannot be read, a key is unknown, or a value is invalid.
    """
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"Cannot read configuration file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"Configuration file {path} is not valid TOML: {exc}") from exc

    unknown = set(raw) - set(_SECTIONS) - {"destinations"}
    if unknown:
        raise ConfigError(f"Unknown configuration section(s): {', '.join(sorted(unknown))}.")

    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        values = dict(raw.get(name, {}))
        values.update(_env_overrides(name, cls, env))
        sections[name] = _build(name, cls, values)

    destinations = tuple(
        _build("destinations", Destination, dict(item)) for item in raw.get("destinations", [])
    )
    if env_dest := env.get(f"{ENV_PREFIX}DESTINATIONS"):
        destinations = _destinations_from_env(env_dest)

    storage: StorageSettings = sections["storage"].resolved(env)
    settings = Settings(
        dicom=sections["dicom"],
        storage=storage,
        models=sections["models"].resolved(Path(storage.state_dir)),
        study=sections["study"],
        delivery=sections["delivery"],
        occlusion=sections["occlusion"],
        retention=sections["retention"],
        metrics=sections["metrics"],
        logging=sections["logging"],
        destinations=destinations,
    )
    sections_to_check: tuple[Any, ...] = (
        settings.dicom,
        settings.storage,
        settings.models,
        settings.study,
        settings.delivery,
        settings.occlusion,
        settings.metrics,
        settings.logging,
        *settings.destinations,
    )
    for section in sections_to_check:
        section.validate()
    return settings


def _env_overrides(section: str, cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        key = f"{ENV_PREFIX}{section.upper()}_{field.name.upper()}"
        if key in env:
            overrides[field.name] = _parse_env_value(key, env[key], field.type)
    return overrides


def _parse_env_value(key: str, text: str, type_name: Any) -> Any:
    type_text = str(type_name)
    try:
        if type_text == "int":
            return int(text)
        if type_text == "float":
            return float(text)
        if type_text == "bool":
            lowered = text.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return lowered in ("1", "true", "yes")
        if type_text.startswith("tuple"):
            return tuple(part.strip() for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"Environment variable {key} has an invalid value {text!r}.") from exc
    return text


def _destinations_from_env(text: str) -> tuple[Destination, ...]:
    """``TRIAGE_DESTINATIONS`` holds a JSON list of {ae_title, host, port}."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("TRIAGE_DESTINATIONS must be a JSON list of objects.") from exc
    if not isinstance(items, list):
        raise ConfigError("TRIAGE_DESTINATIONS must be a JSON list of objects.")
    return tuple(_build("destinations", Destination, dict(item)) for item in items)


def _build(section: str, cls: type, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"Unknown key(s) in [{section}]: {', '.join(sorted(unknown))}.")
    for name, value in list(values.items()):
        expected = str(known[name].type)
        if expected.startswith("tuple"):
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f'Key "{section}.{name}" must be a list of strings.')
            values[name] = tuple(value)
        elif expected == "float" and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        elif expected in ("int", "float", "str", "bool"):
            python_type = {"int": int, "float": float, "str": str, "bool": bool}[expected]
            if not isinstance(value, python_type) or (
                python_type is int and isinstance(value, bool)
            ):
                raise ConfigError(
                    f'Key "{section}.{name}" must be of type {expected}, got {value!r}.'
                )
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"Section [{section}] is incomplete: {exc}") from exc


def _check_ae_title(key: str, value: str) -> None:
    if not value or len(value) > 16 or not value.isascii() or "\\" in value:
        raise ConfigError(f'Key "{key}" must be 1-16 ASCII characters, got {value!r}.')
    if value != value.strip():
        raise ConfigError(f'Key "{key}" must not have leading or trailing spaces.')


def _redact_url(url: str) -> str:
    """Hide a password in a database URL before it is logged."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
