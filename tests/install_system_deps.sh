#!/usr/bin/env bash
# Install the real DICOM peers and tools the tests talk to (Debian packages).
set -euo pipefail
needed=()
command -v storescu >/dev/null || needed+=(dcmtk)
command -v Orthanc >/dev/null || needed+=(orthanc)
command -v dciodvfy >/dev/null || needed+=(dicom3tools)
command -v ip >/dev/null || needed+=(iproute2)
command -v unshare >/dev/null || needed+=(util-linux)
command -v systemd-analyze >/dev/null || needed+=(systemd)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || needed+=(postgresql)
# The web pages' tests drive Debian's browser through its WebDriver.
command -v chromium >/dev/null || needed+=(chromium)
command -v chromedriver >/dev/null || needed+=(chromium-driver)
if ((${#needed[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${needed[@]}"
fi
