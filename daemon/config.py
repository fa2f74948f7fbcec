"""Settings: one frozen object, loaded from TOML, then the environment.

Every key of every section can be overridden by an environment variable
named ``TRIAGE_<SECTION>_<KEY>`` (for example ``TRIAGE_DICOM_PORT=11113``).
Values are validated once, here; a bad value is an error, never coerced.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import logging
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from daemon.cores import receivers_for, usable_cores
from domain.errors import ConfigError
from domain.retry import RetryPolicy

logger = logging.getLogger(__name__)

ENV_PREFIX = "TRIAGE_"
# Field metadata of a setting that is read once at start-up: a SIGHUP
# reload leaves it as it was and names it (``restart_needed``).
RESTART: dict[str, bool] = {"restart": True}


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """Where state lives when the configuration does not say.

    systemd sets ``STATE_DIRECTORY`` from the unit's ``StateDirectory=``; an
    interactive run uses ``./var`` so that nothing is written elsewhere.
    """
    return Path(environ.get("STATE_DIRECTORY", "var")).absolute()


class Section:
    """A ``[section]`` of the file; ``validate`` raises ``ConfigError``."""

    def validate(self) -> None:
        """Nothing to check unless a section says otherwise."""


@dataclasses.dataclass(frozen=True)
class DicomSettings(Section):
    # The listener is built once: every key here needs a restart.
    ae_title: str = dataclasses.field(default="TRIAGE", metadata=RESTART)
    host: str = dataclasses.field(default="127.0.0.1", metadata=RESTART)
    port: int = dataclasses.field(default=11112, metadata=RESTART)
    allowed_calling_aets: tuple[str, ...] = dataclasses.field(default=(), metadata=RESTART)
    # Source networks that may connect ("10.20.0.0/16", "192.168.4.7"): a
    # connection from elsewhere is closed before a byte of it is read.
    # Empty: any source. Loopback is not implied: add 127.0.0.1 for local
    # tools. ``triage systemd-dropin`` turns them into IPAddressAllow=.
    allowed_networks: tuple[str, ...] = dataclasses.field(default=(), metadata=RESTART)
    max_associations: int = dataclasses.field(default=16, metadata=RESTART)
    # From one source address: one peer can never take every slot. More is
    # refused for now (A-ASSOCIATE-RJ transient), which a modality retries.
    max_associations_per_peer: int = dataclasses.field(default=8, metadata=RESTART)
    # A dataset larger than this, while it is being received, aborts its
    # association and its partial file is removed (1 GiB: far above any OCT
    # volume or radiograph).
    max_dataset_bytes: int = dataclasses.field(default=1024**3, metadata=RESTART)
    # An idle association is released after this, and each PDU must arrive
    # whole within it (a peer trickling bytes is cut off).
    network_timeout_seconds: float = dataclasses.field(default=60.0, metadata=RESTART)
    # The largest PDU a peer may send, declared in the association and
    # enforced on every PDU read (a larger one closes the connection before
    # any of it is read). 4 MiB ingests as fast as unlimited (REFERENCE.md:
    # the 16 KiB default costs a quarter); 0 lifts the bound, at the risk of
    # a peer that declares gigabytes.
    max_pdu_size: int = dataclasses.field(default=4 * 1024 * 1024, metadata=RESTART)
    # Processes that accept associations on the port (SO_REUSEPORT). 1: the
    # daemon's own process alone. More: that many in all, each with its own
    # GIL; max_associations applies to each. 0: one per 4 cores the service
    # may use (daemon.cores: affinity and CPUQuota), so 1 below 8 cores.
    receivers: int = dataclasses.field(default=0, metadata=RESTART)
    # Ingest before triage (daemon.ingest_priority): while images arrive,
    # decoding, inference, reports and maps wait for the receivers to be
    # quiet, each for this long at most before it does one unit of work
    # anyway. 0: no waiting.
    ingest_priority_hold_seconds: float = dataclasses.field(default=2.0, metadata=RESTART)
    # DICOM TLS (PS3.15 Annex B) on a port of its own, beside the plain one.
    # 0: no TLS port. Certificate, key and CA are PEM files; with a CA file
    # peers must present a certificate it signed, unless
    # tls_require_client_certificate is false.
    tls_port: int = dataclasses.field(default=0, metadata=RESTART)
    tls_certificate: str = dataclasses.field(default="", metadata=RESTART)
    tls_private_key: str = dataclasses.field(default="", metadata=RESTART)
    tls_ca_certificates: str = dataclasses.field(default="", metadata=RESTART)
    tls_require_client_certificate: bool = dataclasses.field(default=True, metadata=RESTART)
    # Listening beyond loopback with neither a calling AE allow-list nor TLS
    # is refused at start-up unless this is true (and then logged loudly).
    allow_open_network: bool = dataclasses.field(default=False, metadata=RESTART)

    def beyond_loopback(self) -> bool:
        """Whether peers on other hosts can reach the listener."""
        return reachable_beyond_loopback(self.host)

    def unprotected(self) -> bool:
        """Reachable from other hosts with no allow-list (AE titles or
        networks) and no TLS."""
        return self.beyond_loopback() and not (
            self.allowed_calling_aets or self.allowed_networks or self.tls_port
        )

    def resolved(self, environ: Mapping[str, str]) -> DicomSettings:
        """The TLS private key from systemd's credential "dicom-tls-private-key"
        when ``tls_private_key`` names no file: the key then never lies in a
        path the service's configuration names."""
        if self.tls_private_key:
            return self
        key = credential(environ, TLS_PRIVATE_KEY_CREDENTIAL)
        return dataclasses.replace(self, tls_private_key=str(key)) if key else self

    def sized(self, cores: float) -> DicomSettings:
        """``receivers = 0`` made a count for ``cores`` (daemon.cores);
        a count the operator set stays."""
        if self.receivers:
            return self
        return dataclasses.replace(self, receivers=receivers_for(cores))

    def client_identity(self) -> tuple[Path, Path] | None:
        """This node's certificate and key, presented when it calls a TLS peer."""
        if self.tls_certificate and self.tls_private_key:
            return Path(self.tls_certificate), Path(self.tls_private_key)
        return None

    def network_allowed(self, address: str) -> bool:
        """Whether a peer at ``address`` may connect (any, without a list)."""
        return not self.allowed_networks or address_in(address, self.allowed_networks)

    def validate(self) -> None:
        _check_ae_title("dicom.ae_title", self.ae_title)
        if self.unprotected() and not self.allow_open_network:
            raise ConfigError(
                f'Listening on {self.host} with no "dicom.allowed_calling_aets", no '
                '"dicom.allowed_networks" and no "dicom.tls_port": any host that reaches the '
                "port could store images and read the urgent worklist. Set one of them, or "
                'listen on 127.0.0.1, or set "dicom.allow_open_network = true" to accept that '
                "risk."
            )
        _check_networks("dicom.allowed_networks", self.allowed_networks)
        if not 0 <= self.tls_port <= 65535:
            raise ConfigError(f'Key "dicom.tls_port" must be in 0..65535, got {self.tls_port}.')
        if self.tls_port and not (self.tls_certificate and self.tls_private_key):
            raise ConfigError(
                'Key "dicom.tls_port" needs "dicom.tls_certificate" and "dicom.tls_private_key".'
            )
        if not 0 <= self.ingest_priority_hold_seconds <= 60:
            raise ConfigError(
                'Key "dicom.ingest_priority_hold_seconds" must be in 0..60, got '
                f"{self.ingest_priority_hold_seconds}."
            )
        if not 0 <= self.receivers <= 64:
            raise ConfigError(f'Key "dicom.receivers" must be in 0..64, got {self.receivers}.')
        for aet in self.allowed_calling_aets:
            _check_ae_title("dicom.allowed_calling_aets", aet)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f'Key "dicom.port" must be in 0..65535, got {self.port}.')
        if self.max_associations < 1:
            raise ConfigError('Key "dicom.max_associations" must be at least 1.')
        if self.max_associations_per_peer < 1:
            raise ConfigError('Key "dicom.max_associations_per_peer" must be at least 1.')
        if self.max_dataset_bytes < 1024 * 1024:
            raise ConfigError('Key "dicom.max_dataset_bytes" must be at least 1048576 (1 MiB).')
        if self.network_timeout_seconds <= 0:
            raise ConfigError('Key "dicom.network_timeout_seconds" must be positive.')
        if self.max_pdu_size != 0 and not 4096 <= self.max_pdu_size <= 2**32 - 1:
            raise ConfigError('Key "dicom.max_pdu_size" must be 0 (unlimited) or at least 4096.')


def address_in(address: str, networks: tuple[str, ...]) -> bool:
    """Whether ``address`` (IPv4, IPv6, IPv4-mapped IPv6) lies in one of
    ``networks`` ("10.20.0.0/16", "192.168.4.7"; host bits may be set)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(text, strict=False) for text in networks)


def _check_networks(key: str, networks: tuple[str, ...]) -> None:
    for text in networks:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ConfigError(f'Key "{key}": {exc}.') from exc


@dataclasses.dataclass(frozen=True)
class WorklistSettings(Section):
    """Who may read the urgent worklist, and how much one answer holds.

    A query is answered only to a calling AE title in allowed_calling_aets
    (when set) from an address in allowed_networks (when set); with neither
    set, only to peers on this host (loopback). Others get 0x0124
    (Refused: not authorized).
    """

    allowed_calling_aets: tuple[str, ...] = dataclasses.field(default=(), metadata=RESTART)
    allowed_networks: tuple[str, ...] = dataclasses.field(default=(), metadata=RESTART)
    # The most recent matching items, at most, in one answer.
    max_answers: int = dataclasses.field(default=500, metadata=RESTART)

    def allows(self, calling_ae_title: str, address: str) -> bool:
        if not (self.allowed_calling_aets or self.allowed_networks):
            return address_in(address, ("127.0.0.0/8", "::1/128"))
        if self.allowed_calling_aets and calling_ae_title.strip() not in self.allowed_calling_aets:
            return False
        return not self.allowed_networks or address_in(address, self.allowed_networks)

    def validate(self) -> None:
        for aet in self.allowed_calling_aets:
            _check_ae_title("worklist.allowed_calling_aets", aet)
        _check_networks("worklist.allowed_networks", self.allowed_networks)
        if not 1 <= self.max_answers <= 10_000:
            raise ConfigError('Key "worklist.max_answers" must be in 1..10000.')


@dataclasses.dataclass(frozen=True)
class AuditSettings(Section):
    """Where the audit trail goes besides the database (``daemon.audit``)."""

    # The host's syslog socket (journald's under systemd); "" or absent: none.
    syslog_socket: str = dataclasses.field(default="/dev/log", metadata=RESTART)
    # "host:port" of a syslog collector over TLS (RFC 5425, usually 6514); "": none.
    remote_syslog: str = dataclasses.field(default="", metadata=RESTART)
    # The CAs that sign the collector's certificate (empty: the system's store).
    remote_syslog_ca_certificates: str = dataclasses.field(default="", metadata=RESTART)

    def remote(self) -> tuple[str, int] | None:
        if not self.remote_syslog:
            return None
        host, _, port = self.remote_syslog.rpartition(":")
        return host.strip("[]"), int(port)

    def validate(self) -> None:
        if self.remote_syslog:
            host, _, port = self.remote_syslog.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ConfigError(
                    f'Key "audit.remote_syslog" must be "host:port", got {self.remote_syslog!r}.'
                )


@dataclasses.dataclass(frozen=True)
class StorageSettings(Section):
    # The database, the spool and the association handlers are set up once:
    # every key here needs a restart.
    state_dir: str = dataclasses.field(default="", metadata=RESTART)
    database_url: str = dataclasses.field(default="", metadata=RESTART)
    spool_dir: str = dataclasses.field(default="", metadata=RESTART)
    # A second copy of a SOP Instance UID: "keep_first" (as Orthanc does) or
    # "replace_if_different" (a changed copy replaces the first and is triaged again).
    duplicate_policy: str = dataclasses.field(default="keep_first", metadata=RESTART)
    # Below this much free space in the spool, C-STOREs are refused with
    # 0xA700 (out of resources) so that the disk never fills.
    min_free_bytes: int = dataclasses.field(default=1_000_000_000, metadata=RESTART)
    # Disk each open association may still need: a new one is accepted only
    # while min_free_bytes plus this for every open association (and the
    # new one) is free; otherwise it is refused for now (transient).
    reserve_bytes_per_association: int = dataclasses.field(
        default=128 * 1024 * 1024, metadata=RESTART
    )
    # The database password, from a file, never the TOML: this path, or else
    # systemd's credential "database-password" (LoadCredential=, read from
    # $CREDENTIALS_DIRECTORY) when there is one.
    database_password_file: str = dataclasses.field(default="", metadata=RESTART)

    def validate(self) -> None:
        if self.min_free_bytes < 0:
            raise ConfigError('Key "storage.min_free_bytes" must not be negative.')
        if self.reserve_bytes_per_association < 0:
            raise ConfigError('Key "storage.reserve_bytes_per_association" must not be negative.')
        if self.duplicate_policy not in ("keep_first", "replace_if_different"):
            raise ConfigError(
                'Key "storage.duplicate_policy" must be "keep_first" or "replace_if_different".'
            )

    def resolved(self, environ: Mapping[str, str]) -> StorageSettings:
        state = Path(self.state_dir) if self.state_dir else default_state_dir(environ)
        database_url = self.database_url or f"sqlite:///{state / 'triage.sqlite3'}"
        if password_file := self._password_file(environ):
            database_url = _with_password(database_url, password_file)
        return dataclasses.replace(
            self,
            state_dir=str(state),
            database_url=database_url,
            spool_dir=self.spool_dir or str(state / "spool"),
        )

    def _password_file(self, environ: Mapping[str, str]) -> Path | None:
        if self.database_password_file:
            return Path(self.database_password_file)
        return credential(environ, DATABASE_PASSWORD_CREDENTIAL)


def reachable_beyond_loopback(host: str) -> bool:
    """Whether a socket bound to ``host`` can be reached from other hosts."""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"  # a host name: assume it is reachable


def credential(environ: Mapping[str, str], name: str) -> Path | None:
    """systemd's credential ``name`` (``LoadCredential=``), if the unit passed it."""
    if credentials := environ.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(credentials) / name
        if candidate.is_file():
            return candidate
    return None


DATABASE_PASSWORD_CREDENTIAL = "database-password"
TLS_PRIVATE_KEY_CREDENTIAL = "dicom-tls-private-key"
HTTP_CREDENTIALS = "http-credentials"
HTTP_TLS_KEY_CREDENTIAL = "http-tls-private-key"


def _with_password(database_url: str, password_file: Path) -> str:
    """``database_url`` with the password read from ``password_file``."""
    url = make_url(database_url)
    if url.password:
        raise ConfigError(
            f"The database URL has a password and {password_file} gives another: keep one, "
            "in the file."
        )
    try:
        password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"Cannot read the database password file {password_file}: {exc}") from exc
    if not password:
        raise ConfigError(f"The database password file {password_file} is empty.")
    return url.set(password=password).render_as_string(hide_password=False)


@dataclasses.dataclass(frozen=True)
class ModelSettings(Section):
    oct: str = ""
    cxr: str = ""
    # "auto" tries CUDA then falls back to the CPU; "cpu" never tries CUDA.
    device: str = "auto"
    # Micro-batches across instances: up to batch_size images, or whatever
    # has come batch_wait_ms after the first (a lone image waits that long).
    batch_size: int = 16
    batch_wait_ms: float = 20.0
    # Threads, each with its own decoder child process, made at start-up.
    decode_workers: int = dataclasses.field(default=2, metadata=RESTART)

    def resolved(self, state_dir: Path) -> ModelSettings:
        return dataclasses.replace(
            self,
            oct=self.oct or str(state_dir / "models" / "oct"),
            cxr=self.cxr or str(state_dir / "models" / "cxr"),
        )

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError('Key "models.device" must be one of "auto", "cpu", "cuda".')
        if not 1 <= self.batch_size <= 1024:
            raise ConfigError('Key "models.batch_size" must be between 1 and 1024.')
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ConfigError('Key "models.batch_wait_ms" must be between 0 and 1000.')
        if not 1 <= self.decode_workers <= 64:
            raise ConfigError('Key "models.decode_workers" must be between 1 and 64.')


@dataclasses.dataclass(frozen=True)
class StudySettings(Section):
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
class Destination(Section):
    ae_title: str
    host: str
    port: int
    # DICOM TLS towards this destination. Its certificate must be signed by
    # tls_ca_certificates (empty: [dicom] tls_ca_certificates, else the
    # system's trust store) and, with tls_check_hostname, name the host.
    # This node presents [dicom] tls_certificate and tls_private_key, when
    # set, to a PACS that requires a client certificate.
    tls: bool = False
    tls_ca_certificates: str = ""
    tls_check_hostname: bool = True

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
class DeliverySettings(Section):
    # Delays between C-STORE attempts, as dcm4chee writes them; after the
    # last one the delivery is dead-lettered (state "failed").
    retry_schedule: str = "5x1m,12x5m,24x1h"

    @functools.cached_property
    def delays(self) -> tuple[float, ...]:
        # Parsed once per settings object, not at every delivery outcome.
        return parse_retry_schedule(self.retry_schedule)

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.delays)

    @property
    def max_attempts(self) -> int:
        return self.retry_policy.max_attempts

    def validate(self) -> None:
        try:
            self.delays  # noqa: B018 - parsing is the validation
        except (ConfigError, ValueError) as exc:
            raise ConfigError(f'Key "delivery.retry_schedule": {exc}') from exc


@dataclasses.dataclass(frozen=True)
class OcclusionSettings(Section):
    # Occlusion maps (Kermany et al.: a blank box slid over the image).
    enabled: bool = dataclasses.field(default=True, metadata=RESTART)
    # Send the heat-map Secondary Capture to the destinations too (after the SR).
    send: bool = False
    box: int = 20
    mode: str = "fast"  # "fast", or "grid" at `stride`
    stride: int = 1
    fill: str = "mean"  # what the box holds: the image "mean" or "zero"
    referrals: tuple[str, ...] = ("urgent", "routine", "supportive care")
    # Threads and their queue are made once at start-up.
    workers: int = dataclasses.field(default=1, metadata=RESTART)
    queue_size: int = dataclasses.field(default=16, metadata=RESTART)

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
class RetentionSettings(Section):
    # `triage purge` always deletes old images from the spool; with
    # keep_results the triage results, reports and audit stay in SQL.
    keep_results: bool = True


@dataclasses.dataclass(frozen=True)
class MetricsSettings(Section):
    # Prometheus endpoint on 127.0.0.1; 0 disables it.
    port: int = dataclasses.field(default=0, metadata=RESTART)

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError('Key "metrics.port" must be in 0..65535.')


@dataclasses.dataclass(frozen=True)
class HttpSettings(Section):
    """The web pages, the REST API and DICOMweb (daemon.web)."""

    # 0: no HTTP service (the default).
    port: int = dataclasses.field(default=0, metadata=RESTART)
    host: str = dataclasses.field(default="127.0.0.1", metadata=RESTART)
    # Users and their scrypt password hashes, one "name:hash" a line, as
    # `triage http-user NAME` prints them. Empty: systemd's credential
    # "http-credentials" (LoadCredential=). Never the passwords themselves.
    credentials_file: str = dataclasses.field(default="", metadata=RESTART)
    # HTTPS when both are set; the key may come from systemd's credential
    # "http-tls-private-key".
    tls_certificate: str = dataclasses.field(default="", metadata=RESTART)
    tls_private_key: str = dataclasses.field(default="", metadata=RESTART)
    # A signed-in browser is signed out after this long.
    session_hours: float = dataclasses.field(default=8.0, metadata=RESTART)
    # Plain HTTP beyond loopback is refused at start-up unless this is true:
    # passwords and patient data would cross the network in clear.
    allow_plain_http: bool = dataclasses.field(default=False, metadata=RESTART)

    def resolved(self, environ: Mapping[str, str]) -> HttpSettings:
        """The credentials file and the TLS key from systemd's credentials
        when the configuration names none."""
        users = self.credentials_file or str(credential(environ, HTTP_CREDENTIALS) or "")
        key = self.tls_private_key or str(credential(environ, HTTP_TLS_KEY_CREDENTIAL) or "")
        return dataclasses.replace(self, credentials_file=users, tls_private_key=key)

    def https(self) -> bool:
        return bool(self.tls_certificate and self.tls_private_key)

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f'Key "http.port" must be in 0..65535, got {self.port}.')
        if not self.port:
            return
        if not self.credentials_file:
            raise ConfigError(
                'Key "http.port" needs "http.credentials_file" (or systemd\'s credential '
                f'"{HTTP_CREDENTIALS}"): every page but liveness asks who is there. '
                "Make a line with `triage http-user NAME`."
            )
        if bool(self.tls_certificate) != bool(self.tls_private_key):
            raise ConfigError('Keys "http.tls_certificate" and "http.tls_private_key" go together.')
        if not 0 < self.session_hours <= 24 * 7:
            raise ConfigError('Key "http.session_hours" must be in (0, 168].')
        if reachable_beyond_loopback(self.host) and not (self.https() or self.allow_plain_http):
            raise ConfigError(
                f"Serving HTTP on {self.host} without TLS would send passwords and patient "
                'data in clear: set "http.tls_certificate" and "http.tls_private_key", or '
                'listen on 127.0.0.1 behind a TLS proxy, or set "http.allow_plain_http = true".'
            )


@dataclasses.dataclass(frozen=True)
class LoggingSettings(Section):
    # Logging is configured by the entry point, once.
    level: str = dataclasses.field(default="INFO", metadata=RESTART)
    format: str = dataclasses.field(default="text", metadata=RESTART)  # "text", or "json"

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
    worklist: WorklistSettings = WorklistSettings()
    audit: AuditSettings = AuditSettings()
    retention: RetentionSettings = RetentionSettings()
    metrics: MetricsSettings = MetricsSettings()
    http: HttpSettings = HttpSettings()
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
            f"receivers={self.dicom.receivers} "
            f"database={_redact_url(self.storage.database_url)} spool={self.storage.spool_dir} "
            f"models=oct:{self.models.oct},cxr:{self.models.cxr} device={self.models.device} "
            f"stable_seconds={self.study.stable_seconds} destinations=[{dests}]"
        )


def _sections() -> dict[str, type[Section]]:
    """The ``[section]`` classes, from ``Settings``' own fields: the one list of them."""
    hints = typing.get_type_hints(Settings)
    return {
        field.name: hints[field.name]
        for field in dataclasses.fields(Settings)
        if field.name != "destinations"
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

    if _url_password(raw.get("storage", {}).get("database_url", "")):
        raise ConfigError(
            f"The database password must not sit in {path}: put it in a file named by "
            '"storage.database_password_file", or in systemd\'s credential '
            f'"{DATABASE_PASSWORD_CREDENTIAL}" (LoadCredential=; see docs/operations.md).'
        )
    classes = _sections()
    unknown = set(raw) - set(classes) - {"destinations"}
    if unknown:
        raise ConfigError(f"Unknown configuration section(s): {', '.join(sorted(unknown))}.")

    sections: dict[str, Any] = {}
    for name, cls in classes.items():
        values = dict(raw.get(name, {}))
        values.update(_env_overrides(name, cls, env))
        sections[name] = _build(name, cls, values)
    # Paths left empty default to the state directory.
    sections["storage"] = sections["storage"].resolved(env)
    sections["dicom"] = sections["dicom"].resolved(env).sized(usable_cores())
    sections["models"] = sections["models"].resolved(Path(sections["storage"].state_dir))
    sections["http"] = sections["http"].resolved(env)

    destinations = tuple(
        _build("destinations", Destination, dict(item)) for item in raw.get("destinations", [])
    )
    if env_dest := env.get(f"{ENV_PREFIX}DESTINATIONS"):
        destinations = _destinations_from_env(env_dest)

    for section in (*sections.values(), *destinations):
        section.validate()
    return Settings(**sections, destinations=destinations)


def restart_needed(running: Settings, loaded: Settings) -> list[str]:
    """The keys that differ between two settings and take effect only at a restart."""
    changed = []
    for name in _sections():
        before, after = getattr(running, name), getattr(loaded, name)
        for field in dataclasses.fields(before):
            if field.metadata.get("restart") and getattr(before, field.name) != getattr(
                after, field.name
            ):
                changed.append(f"{name}.{field.name}")
    return changed


def keep_restart_keys(running: Settings, loaded: Settings) -> Settings:
    """``loaded``, with every restart-only key as it runs now (what a reload applies)."""
    replaced = {}
    for name in _sections():
        before = getattr(running, name)
        kept = {
            field.name: getattr(before, field.name)
            for field in dataclasses.fields(before)
            if field.metadata.get("restart")
        }
        if kept:
            replaced[name] = dataclasses.replace(getattr(loaded, name), **kept)
    return dataclasses.replace(loaded, **replaced)


def restart_only_keys() -> list[str]:
    """Every key that a reload cannot change (for the documentation's test)."""
    return [
        f"{name}.{field.name}"
        for name, cls in _sections().items()
        for field in dataclasses.fields(cls)  # type: ignore[arg-type]
        if field.metadata.get("restart")
    ]


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


def _url_password(database_url: str) -> str | None:
    """The password in a database URL, if it has one."""
    if not database_url:
        return None
    try:
        return make_url(database_url).password
    except ArgumentError:  # not a URL at all: the engine says so where it is used
        return None


def _redact_url(url: str) -> str:
    """Hide a password in a database URL before it is logged."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
