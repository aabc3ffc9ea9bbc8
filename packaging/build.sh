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

# The oldest glibc the released binary runs on, and where cargo puts it.
GLIBC_TARGET=2.28
TARGET=x86_64-unknown-linux-gnu
bin=target/$TARGET/release/brandgate

out=target/package
mkdir -p "$out"

# The C libraries the SAML sign-in links, built static for glibc 2.28 from Debian's sources.
static_libs=$(bash packaging/static-libs.sh)
echo "== static C libraries: $(tr '\n' ' ' <"$static_libs/VERSIONS")"
if [ -s "$static_libs/SKIPPED" ]; then
    echo "   newer versions listed but not served whole by the mirror (skipped):" >&2
    sed 's/^/     /' "$static_libs/SKIPPED" >&2
fi

echo "== release build for glibc $GLIBC_TARGET (cargo-zigbuild; cargo auditable: the dependency list goes into the binary)"
# Zig's C compiler and linker build against glibc 2.28's symbols, so the binary runs on
# Debian 11+, Ubuntu 20.04+ and RHEL 8+. samael's build finds the static xmlsec1 through its
# xmlsec1-config and pkg-config files; openssl-sys the static OpenSSL through OPENSSL_DIR.
# Scanners (cargo audit bin, syft, trivy, grype) read the crates and versions from the
# binary's .dep-v0 section, so an installed brandgate can be checked without its source.
PATH=$static_libs/bin:$PATH \
    PKG_CONFIG_LIBDIR=$static_libs/lib/pkgconfig PKG_CONFIG_PATH= PKG_CONFIG_ALL_STATIC=1 \
    OPENSSL_DIR=$static_libs OPENSSL_STATIC=1 \
    cargo auditable zigbuild --release --locked --target "$TARGET.$GLIBC_TARGET"
# Debug line tables are for crash reports during development; the packages ship a stripped
# binary (lintian: unstripped-binary-or-object).
strip --strip-unneeded "$bin"
objdump -h "$bin" | grep -q '\.dep-v0' || {
    echo "the binary carries no dependency list (.dep-v0): was it built with cargo auditable?" >&2
    exit 1
}
# The newest glibc symbol version the binary needs decides the oldest system it runs on.
glibc_needed=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
echo "the binary needs glibc $glibc_needed (allowed: up to $GLIBC_TARGET)"
if [ "$(printf '%s\n%s\n' "$glibc_needed" "$GLIBC_TARGET" | sort -V | tail -1)" != "$GLIBC_TARGET" ]; then
    echo "the binary needs glibc $glibc_needed, newer than $GLIBC_TARGET" >&2
    exit 1
fi
# It links nothing but glibc's own libraries (and libgcc's unwinder): the SAML libraries are
# inside, so no distribution's libxml2, xmlsec1 or OpenSSL version matters.
needed=$(objdump -p "$bin" | awk '/NEEDED/ { print $2 }' | sort)
unexpected=$(grep -Ev '^(libc|libm|libdl|libpthread|librt|libgcc_s|ld-linux-x86-64)\.so\.[0-9]+$' <<<"$needed" || true)
if [ -n "$unexpected" ]; then
    echo "the binary links libraries besides glibc's: $unexpected" >&2
    exit 1
fi
# Debian wants the upstream changelog as changelog.gz (compressed reproducibly: -n, no name or
# time stamp); the rpm ships CHANGELOG.md as it is.
gzip -9nc CHANGELOG.md > "$out/changelog.gz"
"$bin" --help > "$out/brandgate-help.txt"
# Man pages and shell completions, made by the binary from its own command definition.
rm -rf "$out/man" "$out/completions"
"$bin" man-pages --dir "$out/man"
gzip -9n "$out"/man/*.1
mkdir -p "$out/completions"
"$bin" completions bash > "$out/completions/brandgate"
"$bin" completions zsh > "$out/completions/_brandgate"
"$bin" completions fish > "$out/completions/brandgate.fish"
# The licence notices of every crate linked into the binary.
python3 packaging/third-party-licenses.py --c-libraries "$static_libs" > "$out/THIRD-PARTY-LICENSES.md"
for cmd in serve check-config push-test; do
    printf '\n\n$ brandgate %s --help\n' "$cmd" >> "$out/brandgate-help.txt"
    "$bin" "$cmd" --help >> "$out/brandgate-help.txt"
done

echo "== .deb"
deb_args=(--no-build --no-strip --target "$TARGET" --output "$out")
[ -n "$version" ] && deb_args+=(--deb-version "$version-1")
cargo deb "${deb_args[@]}"

echo "== .rpm"
rpm_args=(--target "$TARGET" --output "$out/")
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
    ./usr/share/doc/brandgate/changelog.Debian.gz ./usr/share/doc/brandgate/changelog.gz \
    ./usr/share/doc/brandgate/THIRD-PARTY-LICENSES.md ./usr/share/man/man1/brandgate.1.gz \
    ./usr/share/man/man1/brandgate-reload.1.gz ./usr/share/bash-completion/completions/brandgate \
    ./usr/share/zsh/vendor-completions/_brandgate ./usr/share/fish/vendor_completions.d/brandgate.fish; do
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
    /usr/share/licenses/brandgate/LICENSE /usr/share/licenses/brandgate/THIRD-PARTY-LICENSES.md \
    /usr/share/man/man1/brandgate.1.gz /usr/share/man/man1/brandgate-reload.1.gz \
    /usr/share/bash-completion/completions/brandgate /usr/share/zsh/site-functions/_brandgate \
    /usr/share/fish/vendor_completions.d/brandgate.fish; do
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
