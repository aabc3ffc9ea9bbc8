#!/usr/bin/env bash
# Install test on clean systems: debootstraps a minimal Debian 12 and Debian 11 (cached between
# runs), boots each with real systemd in systemd-nspawn, and inside it installs, runs, reloads,
# upgrades, removes and purges the .deb, then does the same with the .rpm. Needs root.
#
#   bash packaging/test-install.sh            builds the packages first
#   PKG_SKIP_BUILD=1 bash packaging/...  uses target/package as it is
#
# The checks run inside the container (packaging/install-checks.sh, as a oneshot unit that
# powers the container off when done); their report is printed here and decides the exit status.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "test-install.sh needs root (debootstrap, systemd-nspawn)" >&2
    exit 1
fi

bash packaging/tools.sh

cache=${PKG_TEST_CACHE:-/var/cache/brandgate-test}
mirror=${PKG_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Debian 12 (glibc 2.36, systemd 252) and Debian 11 (glibc 2.31, systemd 247, the oldest
# Debian the mirror serves): the binary is built for glibc 2.28 and must install and run on both.
suites=${PKG_TEST_SUITES:-bookworm bullseye}
# What each base root holds besides minbase: systemd to boot, and what the packages depend on
# (dpkg -i does not fetch dependencies). No xmlsec1 (libxml2 comes with rpm's libarchive): the
# binary carries the libraries the SAML sign-in needs, and the checks see that the running
# daemon loads no system XML or TLS library. The cache is keyed by this list, so changing it
# makes a new base.
include=systemd,systemd-sysv,dbus,procps,ca-certificates,rpm
mkdir -p "$cache"

out=target/package
if [ -z "${PKG_SKIP_BUILD:-}" ]; then
    rm -rf "$out"
    bash packaging/build.sh
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
upgrade="$version+test2"
echo "== upgrade packages ($upgrade)"
cargo deb --no-build --no-strip --target x86_64-unknown-linux-gnu --output "$out" --deb-version "$upgrade-1" >/dev/null
mkdir -p "$out/upgrade"
cargo generate-rpm --target x86_64-unknown-linux-gnu --output "$out/upgrade/brandgate-$version-2.x86_64.rpm" --set-metadata 'release = "2"' >/dev/null

# Boots a fresh copy of the suite's cached base with systemd and runs the checks in it;
# prints their report and fails when they did.
test_on() {
    local suite=$1
    local base
    base="$cache/$suite-base-$(printf '%s' "$include" | sha256sum | cut -c1-12)"
    if [ ! -e "$base/.complete" ]; then
        echo "== debootstrap a minimal Debian $suite into $base (cached for later runs)"
        rm -rf "$base" "$base.tmp"
        debootstrap --variant=minbase \
            --include="$include" \
            "$suite" "$base.tmp" "$mirror" >"$cache/debootstrap-$suite.log" 2>&1 || {
            tail -20 "$cache/debootstrap-$suite.log" >&2
            return 1
        }
        touch "$base.tmp/.complete"
        mv "$base.tmp" "$base"
    fi

    local root="$cache/run-$suite"
    rm -rf "$root"
    echo "== $suite: fresh root from the cached base"
    # (set -e does not hold in a function called with ||: each step says when it failed.)
    cp -a "$base" "$root" || return 1
    mkdir -p "$root/root/pkgs" || return 1
    cp "$out/brandgate_${version}-1_amd64.deb" "$root/root/pkgs/old.deb" || return 1
    cp "$out/brandgate_${upgrade}-1_amd64.deb" "$root/root/pkgs/new.deb" || return 1
    cp "$out"/brandgate-"$version"-1.*.rpm "$root/root/pkgs/old.rpm" || return 1
    cp "$out"/upgrade/brandgate-"$version"-2.*.rpm "$root/root/pkgs/new.rpm" || return 1
    install -m 0755 packaging/install-checks.sh "$root/root/install-checks.sh" || return 1
    echo "brandgate-test" >"$root/etc/hostname" || return 1
    cat >"$root/etc/systemd/system/brandgate-install-checks.service" <<'UNIT'
[Unit]
Description=brandgate package install checks
After=multi-user.target
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
ExecStart=/root/install-checks.sh
StandardOutput=journal+console
TimeoutStartSec=15min
[Install]
WantedBy=multi-user.target
UNIT
    ln -sf /etc/systemd/system/brandgate-install-checks.service \
        "$root/etc/systemd/system/multi-user.target.wants/brandgate-install-checks.service" || return 1

    echo "== $suite: boot it with systemd (systemd-nspawn)"
    # nspawn wants a terminal to boot; `script` gives it one. The checks power the container off.
    local console="$cache/console-$suite.log"
    timeout 1200 script -qfec "systemd-nspawn --keep-unit --register=no --private-network -D '$root' -b" "$console" \
        </dev/null >/dev/null 2>&1 || true

    local report="$root/root/install-checks.report"
    if [ ! -s "$report" ]; then
        echo "$suite: no report from inside the container; console:" >&2
        tail -60 "$console" >&2
        return 1
    fi
    cat "$report"
    grep -q '^RESULT: PASS$' "$report"
}

failed=()
for suite in $suites; do
    test_on "$suite" || failed+=("$suite")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "the install test failed on: ${failed[*]}" >&2
    exit 1
fi
echo "the install test passed on: $suites"
