#!/usr/bin/env bash
# Installs, when missing, the Debian packages brandgate needs to build: the agents' SAML
# sign-in checks XML signatures with xmlsec1 (through the samael crate), whose bindings are
# generated with libclang at build time. Safe to run again; needs root only to install.
#   bash packaging/build-deps.sh
set -euo pipefail

missing=()
for pkg in libxmlsec1-dev libclang-dev pkg-config; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "brandgate needs these Debian packages to build; run: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "== installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
