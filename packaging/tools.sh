#!/usr/bin/env bash
# Installs what packaging and the install test need, when missing: Debian's debootstrap,
# systemd-container, rpm, rpmlint, lintian, and cargo-deb / cargo-generate-rpm / cargo-auditable
# from crates.io.
set -euo pipefail

missing=()
for pkg in debootstrap systemd-container rpm rpmlint lintian binutils; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo deb --version >/dev/null 2>&1 || cargo install --locked cargo-deb
cargo generate-rpm --version >/dev/null 2>&1 || cargo install --locked cargo-generate-rpm
cargo auditable --version >/dev/null 2>&1 || cargo install --locked cargo-auditable
