#!/usr/bin/env bash
# Install dicom-triage as a systemd service (run as root from the source tree).
#   systemd/install.sh [--cpu|--gpu] [--wheelhouse DIR]   install or upgrade
#   systemd/install.sh uninstall  remove everything except the data and the config
#   systemd/install.sh --plan [...]  say what an install would pick, and do nothing
# ONNX Runtime's GPU build (with CUDA and cuDNN as pip wheels: the host needs
# only the NVIDIA driver) when a driver is present, else the CPU build;
# --cpu or --gpu decides instead. --wheelhouse DIR installs with no network
# from a folder `make wheelhouse` wrote. Versions are uv.lock's (requirements/).
# PYTHON=python3.12 picks the interpreter (else the newest of 3.13, 3.12, 3.11).
# DESTDIR=/some/root installs into a staging root instead (no user, no systemctl);
# SKIP_VENV=1 leaves the virtual environment alone; WITH_TRAIN=1 adds the trainer.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
action=install flavour="" wheelhouse=""
# Where the NVIDIA kernel driver says it is loaded.
nvidia_driver=${NVIDIA_DRIVER_FILE:-/proc/driver/nvidia/version}
while (($#)); do
  case $1 in
    uninstall) action=uninstall ;;
    install) ;;
    --plan) action=plan ;;
    --cpu) flavour=cpu ;;
    --gpu) flavour=gpu ;;
    --wheelhouse) wheelhouse=$(cd "${2:?--wheelhouse needs a folder}" && pwd); shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -n "$wheelhouse" ]]; then
  # The wheels decide the ONNX Runtime build.
  flavour=cpu
  compgen -G "$wheelhouse/onnxruntime_gpu-*.whl" >/dev/null && flavour=gpu
elif [[ -z "$flavour" ]]; then
  if [[ -e "$nvidia_driver" ]] || command -v nvidia-smi >/dev/null; then
    flavour=gpu
  else
    flavour=cpu
  fi
fi

supported() { "$1" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null; }
find_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    supported "$PYTHON" && { echo "$PYTHON"; return; }
    echo "PYTHON=$PYTHON is not Python 3.11, 3.12 or 3.13" >&2; return 1
  fi
  for candidate in python3.13 python3.12 python3.11 python3; do
    command -v "$candidate" >/dev/null && supported "$candidate" && { echo "$candidate"; return; }
  done
  echo "dicom-triage needs Python 3.11, 3.12 or 3.13: apt install python3 python3-venv" >&2
  return 1
}
root=${DESTDIR:-}
prefix=$root/opt/dicom-triage
etc=$root/etc/dicom-triage
unit_dir=$root/etc/systemd/system
sysusers_dir=$root/usr/lib/sysusers.d
state=$root/var/lib/dicom-triage

live() { [[ -z "$root" ]] && [[ -d /run/systemd/system ]]; }

if [[ "$action" == plan ]]; then  # what an install would do, doing nothing
  echo "python: $(find_python)"
  echo "onnxruntime: $flavour build"
  echo "packages: ${wheelhouse:-$src/requirements/$flavour.txt (from the index)}"
  exit 0
fi

if [[ "$action" == uninstall ]]; then
  live && systemctl disable --now dicom-triage.service || true
  rm -f "$unit_dir/dicom-triage.service" "$sysusers_dir/dicom-triage.conf"
  rm -rf "$unit_dir/dicom-triage.service.d"
  rm -rf "$prefix"
  live && systemctl daemon-reload || true
  echo "dicom-triage removed; kept $etc and $state (delete them by hand to erase all data)"
  exit 0
fi

install -d -m 0755 "$prefix" "$unit_dir" "$sysusers_dir"
install -m 0644 "$src/systemd/dicom-triage.sysusers" "$sysusers_dir/dicom-triage.conf"
if [[ -z "$root" ]]; then
  if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers "$sysusers_dir/dicom-triage.conf"
  elif ! id dicom-triage >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/dicom-triage --shell /usr/sbin/nologin dicom-triage
  fi
fi
if [[ "${SKIP_VENV:-0}" != 1 ]]; then
  python=$(find_python)
  if ! "$python" -m venv --clear "$prefix/.venv"; then
    echo "cannot make a virtual environment with $python: apt install python3-venv" >&2
    exit 1
  fi
  pip=("$prefix/.venv/bin/pip" --quiet --disable-pip-version-check)
  if [[ -n "$wheelhouse" ]]; then
    # Nothing from the network: the wheels and the list they were chosen by.
    "${pip[@]}" install --no-index --find-links "$wheelhouse" --require-hashes \
      -r "$wheelhouse/requirements.txt"
    "${pip[@]}" install --no-index --no-deps "$wheelhouse"/dicom_triage-*.whl
  else
    "${pip[@]}" install --upgrade pip
    "${pip[@]}" install --require-hashes -r "$src/requirements/$flavour.txt"
    "${pip[@]}" install --no-deps "$src"
    if [[ "${WITH_TRAIN:-0}" == 1 ]]; then
      "${pip[@]}" install "$src[train]"
    fi
  fi
  echo "installed for $("$prefix/.venv/bin/python" -V) with ONNX Runtime's $flavour build"
fi
install -d -m 0750 "$etc"
if [[ ! -e "$etc/triage.toml" ]]; then
  install -m 0640 "$src/systemd/triage.example.toml" "$etc/triage.toml"
  echo "wrote $etc/triage.toml: set [dicom] and [[destinations]] for this site"
fi
[[ -z "$root" ]] && chgrp dicom-triage "$etc" "$etc/triage.toml"
install -m 0644 "$src/systemd/dicom-triage.service" "$unit_dir/dicom-triage.service"
# The kernel's fence from [dicom] allowed_networks (IPAddressAllow=), when
# the configuration names them; run again after changing them.
if [[ -x "$prefix/.venv/bin/triage" ]]; then
  if dropin=$("$prefix/.venv/bin/triage" systemd-dropin --config "$etc/triage.toml" 2>/dev/null); then
    install -d -m 0755 "$unit_dir/dicom-triage.service.d"
    printf '%s\n' "$dropin" > "$unit_dir/dicom-triage.service.d/network.conf"
    echo "wrote $unit_dir/dicom-triage.service.d/network.conf from [dicom] allowed_networks"
  else
    echo "no network drop-in: set [dicom] allowed_networks, then run systemd/install.sh again"
  fi
fi
install -d -m 0750 "$state/models"
install -m 0644 "$src/docs/operations.md" "$prefix/README.md"
if live; then
  systemctl daemon-reload
  echo "installed; put model packages in /var/lib/dicom-triage/models/{oct,cxr}, then:"
  echo "  systemctl enable --now dicom-triage"
fi
