#!/usr/bin/env bash
# Installs what packaging and the install test need, when missing: Debian's debootstrap,
# systemd-container, rpm, rpmlint, lintian, and cargo-deb / cargo-generate-rpm / cargo-auditable
# from crates.io; for the release build against glibc 2.28, Zig (PyPI's `ziglang`, which
# packages the official Zig release) and cargo-zigbuild (crates.io), both pinned.
set -euo pipefail

missing=()
for pkg in debootstrap systemd-container rpm rpmlint lintian binutils patch make xz-utils debian-archive-keyring; do
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
ZIG_VERSION=0.14.1
CARGO_ZIGBUILD_VERSION=0.24.1
[ "$(python3 -m ziglang version 2>/dev/null)" = "$ZIG_VERSION" ] ||
    python3 -m pip install --quiet --disable-pip-version-check "ziglang==$ZIG_VERSION"
cargo-zigbuild --version 2>/dev/null | grep -qx "cargo-zigbuild $CARGO_ZIGBUILD_VERSION" ||
    cargo install --locked cargo-zigbuild --version "$CARGO_ZIGBUILD_VERSION"
