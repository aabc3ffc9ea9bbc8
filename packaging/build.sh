#!/usr/bin/env bash
# Builds the .deb and the .rpm from one release build, then lints both.
#   bash packaging/build.sh [--version VERSION]   (VERSION overrides the packages' version,
#                                                   for upgrade tests; the binary is unchanged)
# Output: target/package/*.deb, target/package/*.rpm
set -euo pipefail
cd "$(dirname "$0")/.."

version=""
if [ "${1:-}" = "--version" ]; then
    version="$2"
fi

bash packaging/tools.sh
bash packaging/build-deps.sh

out=target/package
mkdir -p "$out"

echo "== release build"
cargo build --release --locked
# Debug line tables are for crash reports during development; the packages ship a stripped
# binary (lintian: unstripped-binary-or-object).
strip --strip-unneeded target/release/brandgate
# Debian wants the upstream changelog as changelog.gz (compressed reproducibly: -n, no name or
# time stamp); the rpm ships CHANGELOG.md as it is.
gzip -9nc CHANGELOG.md > "$out/changelog.gz"
target/release/brandgate --help > "$out/brandgate-help.txt"
for cmd in serve check-config push-test; do
    printf '\n\n$ brandgate %s --help\n' "$cmd" >> "$out/brandgate-help.txt"
    target/release/brandgate "$cmd" --help >> "$out/brandgate-help.txt"
done

echo "== .deb"
deb_args=(--no-build --no-strip --output "$out")
[ -n "$version" ] && deb_args+=(--deb-version "$version-1")
cargo deb "${deb_args[@]}"

echo "== .rpm"
rpm_args=(--output "$out/")
[ -n "$version" ] && rpm_args+=(--set-metadata "version = \"$version\"")
cargo generate-rpm "${rpm_args[@]}"

deb=$(ls -t "$out"/brandgate_*.deb | head -1)
rpm=$(ls -t "$out"/brandgate-*.rpm | head -1)

echo "== lintian $deb"
# Errors fail the build; warnings are printed.
lintian --no-tag-display-limit --fail-on error "$deb"

# Both packages carry the documentation, the license and the changelogs.
deb_files=$(dpkg-deb -c "$deb" | awk '{print $NF}')
for expected in ./usr/share/doc/brandgate/README.md ./usr/share/doc/brandgate/brandgate-help.txt \
    ./usr/share/doc/brandgate/examples/credentials.conf ./usr/share/doc/brandgate/copyright \
    ./usr/share/doc/brandgate/changelog.Debian.gz ./usr/share/doc/brandgate/changelog.gz; do
    grep -qx "$expected" <<<"$deb_files" || { echo "deb lacks $expected" >&2; exit 1; }
done
# Debian's license file is doc/<package>/copyright: it must name the license.
dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ./usr/share/doc/brandgate/copyright | grep -q 'Apache-2.0' || {
    echo "deb: the copyright file does not name the license" >&2
    exit 1
}

echo "== rpmlint $rpm"
rpmlint --rpmlintrc packaging/brandgate.rpmlintrc "$rpm" || {
    echo "rpmlint reported errors" >&2
    exit 1
}
# The scriptlets are the ones in rpm/, and every file lands where the unit expects it.
scripts=$(rpm -qp --scripts "$rpm")
for expected in "preinstall scriptlet" "systemd-sysusers" "postinstall scriptlet" "systemctl enable" \
    "preuninstall scriptlet" "systemctl disable" "postuninstall scriptlet" "try-restart"; do
    grep -q "$expected" <<<"$scripts" || { echo "rpm scriptlets lack: $expected" >&2; exit 1; }
done
files=$(rpm -qlp "$rpm")
for expected in /usr/bin/brandgate /etc/brandgate/brandgate.toml /usr/lib/systemd/system/brandgate.service \
    /usr/lib/sysusers.d/brandgate.conf /usr/lib/tmpfiles.d/brandgate.conf \
    /usr/share/doc/brandgate/README.md /usr/share/doc/brandgate/brandgate-help.txt \
    /usr/share/doc/brandgate/examples/credentials.conf /usr/share/doc/brandgate/CHANGELOG.md \
    /usr/share/licenses/brandgate/LICENSE; do
    grep -qx "$expected" <<<"$files" || { echo "rpm lacks $expected" >&2; exit 1; }
done
# The documentation is marked as such (rpm --excludedocs leaves it out).
docs=$(rpm -qdp "$rpm")
for expected in /usr/share/doc/brandgate/README.md /usr/share/doc/brandgate/CHANGELOG.md \
    /usr/share/licenses/brandgate/LICENSE; do
    grep -qx "$expected" <<<"$docs" || { echo "rpm: $expected is not marked as documentation" >&2; exit 1; }
done
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" | grep -q '^cn /etc/brandgate/brandgate.toml$' || {
    echo "rpm: the config is not %config(noreplace)" >&2
    exit 1
}
echo "built: $deb $rpm"
