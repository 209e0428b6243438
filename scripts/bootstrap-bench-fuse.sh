#!/bin/bash
# System packages `make bench-fuse` needs beyond `make deps` (bench/fuse_binding.py
# builds pyfuse3 and llfuse from source). Debian 12, as root.
set -euo pipefail
packages=(gcc python3-dev pkg-config libfuse3-dev libfuse-dev fuse3)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
