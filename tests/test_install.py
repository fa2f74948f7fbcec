"""Installing as a hospital would: from the lock, on each supported Python,
with no network at all (a wheelhouse), then the demo from what was installed."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import free_port

ROOT = Path(__file__).resolve().parent.parent
EXPORTS = {
    "cpu.txt": ["--extra", "cpu"],
    "gpu.txt": ["--extra", "gpu"],
    "dev.txt": ["--extra", "cpu", "--extra", "train", "--extra", "test"],
}
# `make test` writes them before the suite enters its network namespace.
WHEELHOUSES = Path(os.environ.get("TRIAGE_TEST_WHEELHOUSES", ROOT / ".wheelhouse"))


def test_the_requirement_lists_are_the_locks_exports(tmp_path: Path) -> None:
    """requirements/*.txt, which pip installs from, say what uv.lock says."""
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        pytest.skip("uv is not installed here (make install-dev installs it)")
    for name, extras in EXPORTS.items():
        out = tmp_path / name
        subprocess.run(
            [str(uv), "export", "--frozen", "--no-emit-project", "--no-header", *extras,
             "-o", str(out)],
            cwd=ROOT, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        assert out.read_text() == (ROOT / "requirements" / name).read_text(), (
            f"requirements/{name} is stale: run make lock"
        )


def _interpreter(version: str) -> str | None:
    """The executable of a Python ``version`` that really runs (not a pyenv shim)."""
    roots = {os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv"), "/root/.pyenv"}
    pyenv = [
        p for r in roots if r for p in glob.glob(f"{r}/versions/{version}.*/bin/python{version}")
    ]
    for candidate in [*sorted(pyenv, reverse=True), shutil.which(f"python{version}")]:
        if candidate is None:
            continue
        said = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2], sys.executable)"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        words = said.stdout.split()
        if said.returncode == 0 and len(words) == 2 and words[0] == version:
            return words[1]
    return None


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_an_offline_install_runs_the_demo(tmp_path: Path, version: str) -> None:
    python = _interpreter(version)
    wheelhouse = WHEELHOUSES / version
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    if not (wheelhouse / "requirements.txt").exists():
        pytest.skip(f"no wheelhouse for Python {version} in {WHEELHOUSES} (make test writes it)")
    root = tmp_path / "root"
    env = {**os.environ, "DESTDIR": str(root), "PYTHON": python}
    env.pop("VIRTUAL_ENV", None)
    # A namespace of its own with no network at all, not even loopback.
    install = subprocess.run(
        ["unshare", "--net", "bash", str(ROOT / "systemd" / "install.sh"),
         "--wheelhouse", str(wheelhouse)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if install.returncode != 0 and "unshare failed" in install.stderr:
        pytest.skip("cannot make a network namespace here (make test runs as root)")
    assert install.returncode == 0, install.stdout + install.stderr
    assert f"installed for Python {version}" in install.stdout
    assert "ONNX Runtime's cpu build" in install.stdout
    triage = root / "opt" / "dicom-triage" / ".venv" / "bin" / "triage"
    # A port of its own: the demo's default, 11112, may be taken by another test.
    demo_env = {k: v for k, v in env.items() if not k.startswith("TRIAGE_")}
    demo_env["TRIAGE_DICOM_PORT"] = str(free_port())
    demo = subprocess.run(
        [str(triage), "demo", "--state-dir", str(tmp_path / "demo"), "--count", "1"],
        env=demo_env,
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "urgent referral" in demo.stdout + demo.stderr
    assert (
        "Inference runs on CPUExecutionProvider: ONNX Runtime's CPU build"
        in demo.stderr + demo.stdout
    )


@pytest.mark.parametrize(
    ("driver", "flags", "build"),
    [(False, [], "cpu"), (True, [], "gpu"), (True, ["--cpu"], "cpu"), (False, ["--gpu"], "gpu")],
)
def test_the_install_picks_the_gpu_build_where_a_driver_is(
    tmp_path: Path, driver: bool, flags: list[str], build: str
) -> None:
    """With the NVIDIA driver loaded, ONNX Runtime's GPU build (CUDA and cuDNN
    as pip wheels: the host needs nothing else); otherwise the CPU one; a
    flag decides instead."""
    version_file = tmp_path / "nvidia-version"
    if driver:
        version_file.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95\n")
    path = ":".join(p for p in os.environ["PATH"].split(":") if not Path(p, "nvidia-smi").exists())
    plan = subprocess.run(
        ["bash", str(ROOT / "systemd" / "install.sh"), "--plan", *flags],
        env={**os.environ, "NVIDIA_DRIVER_FILE": str(version_file), "PATH": path},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert f"onnxruntime: {build} build" in plan.stdout
    assert f"requirements/{build}.txt" in plan.stdout
    gpu = (ROOT / "requirements" / "gpu.txt").read_text()
    assert "onnxruntime-gpu==" in gpu and "nvidia-cudnn-cu13==" in gpu
    assert "onnxruntime==" not in gpu
