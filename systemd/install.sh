#!/usr/bin/env bash
# Install dicom-triage as a systemd service (run as root from the source tree).
#   systemd/install.sh            install or upgrade
#   systemd/install.sh uninstall  remove everything except the data and the config
# DESTDIR=/some/root installs into a staging root instead (no user, no systemctl);
# SKIP_VENV=1 leaves the virtual environment alone; WITH_TRAIN=1 adds the trainer.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
root=${DESTDIR:-}
prefix=$root/opt/dicom-triage
etc=$root/etc/dicom-triage
unit_dir=$root/etc/systemd/system
sysusers_dir=$root/usr/lib/sysusers.d
state=$root/var/lib/dicom-triage

live() { [[ -z "$root" ]] && [[ -d /run/systemd/system ]]; }

if [[ "${1:-install}" == uninstall ]]; then
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
  python3.11 -m venv "$prefix/.venv"
  "$prefix/.venv/bin/pip" install --quiet --upgrade pip
  extra=""; [[ "${WITH_TRAIN:-0}" == 1 ]] && extra="[train]"
  "$prefix/.venv/bin/pip" install --quiet "$src$extra"
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
