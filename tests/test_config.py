from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from daemon.config import Settings, load_settings
from domain.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "triage.example.toml"


def test_defaults_run_out_of_the_box(tmp_path: Path) -> None:
    settings = load_settings(None, environ={"STATE_DIRECTORY": str(tmp_path)})
    assert settings.dicom.ae_title == "TRIAGE"
    assert (settings.dicom.host, settings.dicom.port) == ("127.0.0.1", 11112)
    assert settings.dicom.allowed_calling_aets == ()
    assert settings.storage.database_url == f"sqlite:///{tmp_path / 'triage.sqlite3'}"
    assert settings.spool_dir == tmp_path / "spool"
    assert settings.models.oct == str(tmp_path / "models" / "oct")
    assert settings.study.stable_seconds == 5.0
    assert settings.destinations == ()


def test_toml_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "triage.toml"
    config.write_text(
        '[dicom]\nae_title = "FROMFILE"\nport = 104\nallowed_calling_aets = ["OCT1"]\n'
        "[study]\nstable_seconds = 3\n"
        '[[destinations]]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 4242\n'
    )
    settings = load_settings(
        config,
        environ={"TRIAGE_DICOM_PORT": "11113", "TRIAGE_DICOM_ALLOWED_CALLING_AETS": "A,B"},
    )
    assert settings.dicom.ae_title == "FROMFILE"
    assert settings.dicom.port == 11113
    assert settings.dicom.allowed_calling_aets == ("A", "B")
    assert settings.study.stable_seconds == 3.0
    assert [(d.ae_title, d.port) for d in settings.destinations] == [("PACS", 4242)]


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("[dicom]\nport = 70000\n", {}, "dicom.port"),
        ("[dicom]\nprot = 1\n", {}, "prot"),
        ("[nonsense]\n", {}, "nonsense"),
        ('[dicom]\nae_title = "MUCH_TOO_LONG_AE_TITLE"\n', {}, "dicom.ae_title"),
        ('[dicom]\nport = "104"\n', {}, "dicom.port"),
        ("", {"TRIAGE_DICOM_PORT": "eleven"}, "TRIAGE_DICOM_PORT"),
        ("", {"TRIAGE_DESTINATIONS": "{"}, "TRIAGE_DESTINATIONS"),
        ("[study]\nstable_seconds = -1\n", {}, "stable_seconds"),
    ],
)
def test_bad_values_are_errors(tmp_path: Path, text: str, environ: dict, message: str) -> None:
    config = tmp_path / "triage.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(config, environ=environ)


def test_example_file_documents_every_key() -> None:
    documented = tomllib.loads(EXAMPLE.read_text())
    for field in dataclasses.fields(Settings):
        if field.name == "destinations":
            assert "[[destinations]]" in EXAMPLE.read_text()
            continue
        section_type = type(getattr(Settings(), field.name))
        keys = {f.name for f in dataclasses.fields(section_type)}
        assert set(documented[field.name]) == keys, field.name
    load_settings(EXAMPLE, environ={})


def test_password_is_not_in_the_startup_summary() -> None:
    settings = load_settings(
        None, environ={"TRIAGE_STORAGE_DATABASE_URL": "postgresql://triage:s3cret@db/triage"}
    )
    assert "s3cret" not in settings.describe()


def test_retry_schedule_in_dcm4chee_style() -> None:
    from daemon.config import DeliverySettings, parse_retry_schedule

    delays = parse_retry_schedule("5x1m,12x5m,24x1h")
    assert len(delays) == 41
    assert delays[0] == 60 and delays[5] == 300 and delays[-1] == 3600
    assert parse_retry_schedule("30s") == (30,)
    assert DeliverySettings("2x1s").max_attempts == 3
    with pytest.raises(ConfigError, match="retry_schedule"):
        load_settings(None, environ={"TRIAGE_DELIVERY_RETRY_SCHEDULE": "5y1m"})


@pytest.mark.parametrize(
    ("environ", "refused"),
    [
        ({"TRIAGE_DICOM_HOST": "0.0.0.0"}, True),
        ({"TRIAGE_DICOM_HOST": "::"}, True),
        ({"TRIAGE_DICOM_HOST": "10.1.2.3"}, True),
        ({"TRIAGE_DICOM_HOST": "pacs-gateway.example"}, True),
        ({"TRIAGE_DICOM_HOST": "127.0.0.1"}, False),
        ({"TRIAGE_DICOM_HOST": "::1"}, False),
        ({"TRIAGE_DICOM_HOST": "localhost"}, False),
        ({"TRIAGE_DICOM_HOST": "0.0.0.0", "TRIAGE_DICOM_ALLOWED_CALLING_AETS": "OCT1"}, False),
        (
            {
                "TRIAGE_DICOM_HOST": "0.0.0.0",
                "TRIAGE_DICOM_TLS_PORT": "2762",
                "TRIAGE_DICOM_TLS_CERTIFICATE": "/etc/triage/cert.pem",
                "TRIAGE_DICOM_TLS_PRIVATE_KEY": "/etc/triage/key.pem",
            },
            False,
        ),
        ({"TRIAGE_DICOM_HOST": "0.0.0.0", "TRIAGE_DICOM_ALLOW_OPEN_NETWORK": "true"}, False),
    ],
)
def test_listening_beyond_loopback_needs_an_allow_list_tls_or_an_explicit_opt_out(
    tmp_path: Path, environ: dict[str, str], refused: bool
) -> None:
    environ = {"STATE_DIRECTORY": str(tmp_path), **environ}
    if refused:
        with pytest.raises(ConfigError, match="allow_open_network"):
            load_settings(None, environ)
    else:
        load_settings(None, environ)


def test_the_daemon_refuses_to_start_open_to_the_network(tmp_path: Path) -> None:
    """Exit status 78 (configuration), which systemd does not restart, and the reason."""
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "serve"],
        env={**os.environ, "STATE_DIRECTORY": str(tmp_path), "TRIAGE_DICOM_HOST": "0.0.0.0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78, result.stdout + result.stderr
    assert "allow_open_network" in result.stdout + result.stderr


def test_the_database_password_comes_from_a_file_never_the_toml(tmp_path: Path) -> None:
    url = "postgresql+psycopg://triage@db.example/triage"
    config = tmp_path / "triage.toml"
    config.write_text(
        '[storage]\ndatabase_url = "postgresql+psycopg://triage:s3cret@db.example/triage"\n'
    )
    with pytest.raises(ConfigError, match="must not sit in"):
        load_settings(config, {"STATE_DIRECTORY": str(tmp_path)})

    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    config.write_text(f'[storage]\ndatabase_url = "{url}"\ndatabase_password_file = "{secret}"\n')
    settings = load_settings(config, {"STATE_DIRECTORY": str(tmp_path)})
    assert settings.storage.database_url == "postgresql+psycopg://triage:s3cret@db.example/triage"
    assert "s3cret" not in settings.describe()

    # systemd's LoadCredential=database-password:... without any key in the file.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "database-password").write_text("from-systemd")
    config.write_text(f'[storage]\ndatabase_url = "{url}"\n')
    settings = load_settings(
        config, {"STATE_DIRECTORY": str(tmp_path), "CREDENTIALS_DIRECTORY": str(credentials)}
    )
    assert settings.storage.database_url.endswith("triage:from-systemd@db.example/triage")

    secret.write_text("")
    config.write_text(f'[storage]\ndatabase_url = "{url}"\ndatabase_password_file = "{secret}"\n')
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(config, {"STATE_DIRECTORY": str(tmp_path)})


def test_the_tls_key_may_come_from_a_systemd_credential(tmp_path: Path) -> None:
    environ = {
        "STATE_DIRECTORY": str(tmp_path),
        "TRIAGE_DICOM_TLS_PORT": "2762",
        "TRIAGE_DICOM_TLS_CERTIFICATE": "/etc/dicom-triage/tls.pem",
    }
    with pytest.raises(ConfigError, match="tls_private_key"):
        load_settings(None, environ)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "dicom-tls-private-key").write_text("-----BEGIN PRIVATE KEY-----\n")
    settings = load_settings(None, {**environ, "CREDENTIALS_DIRECTORY": str(credentials)})
    assert settings.dicom.tls_private_key == str(credentials / "dicom-tls-private-key")
    # A key named in the configuration wins.
    named = load_settings(
        None,
        {
            **environ,
            "CREDENTIALS_DIRECTORY": str(credentials),
            "TRIAGE_DICOM_TLS_PRIVATE_KEY": "/etc/dicom-triage/tls.key",
        },
    )
    assert named.dicom.tls_private_key == "/etc/dicom-triage/tls.key"


def test_allowed_networks_and_the_worklist_policy(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        {
            "STATE_DIRECTORY": str(tmp_path),
            "TRIAGE_DICOM_HOST": "0.0.0.0",
            "TRIAGE_DICOM_ALLOWED_NETWORKS": "10.20.0.0/16,192.168.4.7,fd00::/8",
            "TRIAGE_WORKLIST_ALLOWED_CALLING_AETS": "READING1",
            "TRIAGE_WORKLIST_ALLOWED_NETWORKS": "10.20.30.0/24",
        },
    )
    dicom, worklist = settings.dicom, settings.worklist
    assert not dicom.unprotected()
    assert dicom.network_allowed("10.20.255.1")
    assert dicom.network_allowed("::ffff:192.168.4.7")  # IPv4 on an IPv6 socket
    assert dicom.network_allowed("fd00::1")
    assert not dicom.network_allowed("192.168.4.8")
    assert not dicom.network_allowed("127.0.0.1")  # loopback is not implied
    assert not dicom.network_allowed("not an address")
    assert worklist.allows("READING1", "10.20.30.4")
    assert not worklist.allows("READING1", "10.20.31.4")
    assert not worklist.allows("SNOOP", "10.20.30.4")
    # Without either list: this host only.
    default = load_settings(None, {"STATE_DIRECTORY": str(tmp_path)}).worklist
    assert default.allows("ANY", "127.0.0.1") and default.allows("ANY", "::1")
    assert not default.allows("ANY", "10.20.30.4")
    for key, value in (
        ("TRIAGE_DICOM_ALLOWED_NETWORKS", "10.20.0.0/33"),
        ("TRIAGE_WORKLIST_ALLOWED_NETWORKS", "hospital"),
        ("TRIAGE_WORKLIST_MAX_ANSWERS", "0"),
    ):
        with pytest.raises(ConfigError, match=key.removeprefix("TRIAGE_").split("_")[0].lower()):
            load_settings(None, {"STATE_DIRECTORY": str(tmp_path), key: value})
