#!/usr/bin/env bash
# Run a command in a private network namespace that has only loopback, so that
# Orthanc and dcmtk (which listen on every interface) reach nothing else.
set -euo pipefail
if [[ "${TRIAGE_IN_NETNS:-}" == 1 ]]; then
  ip link set lo up
  exec "$@"
fi
exec unshare --net env TRIAGE_IN_NETNS=1 bash "$0" "$@"
