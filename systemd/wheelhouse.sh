#!/usr/bin/env bash
# Every wheel the service needs, for a host with no network (run where there is one):
#   systemd/wheelhouse.sh DIR [PYTHON_VERSION] [cpu|gpu] [GLIBC_VERSION]
# DIR then holds the wheels of requirements/<flavour>.txt (hash-checked) for
# that Python on x86_64 Linux with that glibc or later (default: this host's;
# Debian 12 has 2.36, Ubuntu 24.04 2.39, Debian 13 2.41), the project's own
# wheel, and the list itself; copy DIR to the host and run
# systemd/install.sh --wheelhouse DIR there.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: wheelhouse.sh DIR [PYTHON_VERSION] [cpu|gpu] [GLIBC_VERSION]}
python=${PYTHON:-python3}  # any with pip: it only downloads, for the version asked
version=${2:-$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
flavour=${3:-cpu}
glibc=${4:-$("$python" -c 'import platform; print(platform.libc_ver()[1])')}
abi=cp${version/./}
mkdir -p "$out"
platforms=()
for ((minor = ${glibc#*.}; minor >= 5; minor--)); do
  platforms+=(--platform "manylinux_2_${minor}_x86_64")
done
for legacy in manylinux2014 manylinux2010 manylinux1; do
  platforms+=(--platform "${legacy}_x86_64")
done
# pip judges the lock's environment markers by the Python it runs on, not by
# --python-version: keep here the requirements that apply to the target.
"$python" - "$src/requirements/$flavour.txt" "$version" > "$out/requirements.txt" <<'PY'
import re
import sys

from pip._vendor.packaging.markers import Marker, default_environment

path, version = sys.argv[1], sys.argv[2]
environment = {
    **default_environment(),
    "python_version": version,
    "python_full_version": f"{version}.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
# One requirement per block: "name==version ; marker \" then its hash lines.
for block in re.split(r"\n(?=\S)", open(path).read().strip()):
    first, _, rest = block.partition("\n")
    requirement, _, marker = first.rstrip(" \\").partition(" ; ")
    if marker and not Marker(marker).evaluate(environment):
        continue
    print(f"{requirement} \\\n{rest}" if rest else requirement)
PY
"$python" -m pip download --quiet --disable-pip-version-check --require-hashes --no-deps \
  --only-binary=:all: --implementation cp --python-version "$version" \
  --abi "$abi" --abi abi3 --abi none "${platforms[@]}" --platform any \
  -r "$out/requirements.txt" -d "$out"
# The project as a wheel: installing it then needs no build tools.
"$python" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$out" "$src"
echo "$out: $(ls "$out"/*.whl | wc -l) wheels for Python $version ($flavour)"
