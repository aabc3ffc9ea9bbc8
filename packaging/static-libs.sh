#!/usr/bin/env bash
# Builds the C libraries the agents' SAML sign-in links (OpenSSL's libcrypto, libxml2, xmlsec1
# with its OpenSSL back end) as static libraries for glibc 2.28, so that the released binary
# carries them and runs on Debian 11+, Ubuntu 20.04+ and RHEL/Rocky/Alma 8+, whatever XML and
# TLS libraries (if any) the system has.
#
# The sources are Debian 12's source packages (bookworm and bookworm-security), fetched with
# apt, which checks them against the signed archive index, and built with Debian's own patch
# series applied: the security fixes Debian carries are in what we ship. The newest version
# the mirror serves whole is taken, so a rebuild picks up Debian's security updates; an
# index that cannot be fetched fails the build, and a newer version is skipped only when the
# mirror answers 404 for one of its files (said loudly, and kept in $prefix/SKIPPED). The
# versions built are in $prefix/VERSIONS (the packages' licence notices quote it).
# Compiled with Zig's C compiler against glibc 2.28's symbols (the same `zig cc` that
# cargo-zigbuild uses for the Rust side), with the hardening Debian builds them with (stack
# protector, _FORTIFY_SOURCE), and only what the sign-in needs: no shared libraries, no ICU,
# iconv, zlib, catalogs, network or XSLT support, no MD5/RIPEMD-160 in xmlsec, no programs.
#
#   bash packaging/static-libs.sh      prints the prefix (lib/, include/, bin/xmlsec1-config)
#
# The result is cached under $PKG_BUILD_CACHE (default /var/cache/brandgate-build, or
# target/static-libs when that is not writable), keyed by this script, Zig's version and the
# source versions; runs sharing the cache take turns (flock).
set -euo pipefail
self=$(realpath "${BASH_SOURCE[0]}")
cd "$(dirname "$self")/.."
root=$PWD
# Only this script's flags reach the C builds.
unset CFLAGS CPPFLAGS CXXFLAGS LDFLAGS LIBS PKG_CONFIG_PATH

GLIBC_TARGET=2.28
mirror=${PKG_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${PKG_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
cache=${PKG_BUILD_CACHE:-/var/cache/brandgate-build}
if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
    cache=$root/target/static-libs
    mkdir -p "$cache"
fi

exec 9>"$cache/.lock"
flock 9

zig=$(python3 -c 'import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')

# A private apt configuration: the system's sources and state are not touched.
apt_dir=$cache/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
cat >"$apt_dir/sources.list" <<EOF
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $security bookworm-security main
EOF
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir" -o Debug::NoLocking=1
    -o APT::Sandbox::User=root -o APT::Update::Error-Mode=any
    -o Acquire::AllowInsecureRepositories=false -o Acquire::AllowDowngradeToInsecureRepositories=false)
apt-get "${apt_opts[@]}" update -qq >"$cache/apt-update.log" 2>&1 || {
    cat "$cache/apt-update.log" >&2
    exit 1
}

packages=(openssl libxml2 xmlsec1)
sources=$cache/sources
mkdir -p "$sources"
declare -A version
skipped=()
# Debian versions, newest first (dpkg's order: 1.0~rc1 before 1.0).
newest_first() {
    local sorted=() v i
    while read -r v; do
        i=${#sorted[@]}
        while [ "$i" -gt 0 ] && dpkg --compare-versions "$v" gt "${sorted[$((i - 1))]}"; do
            sorted[i]=${sorted[$((i - 1))]}
            i=$((i - 1))
        done
        sorted[i]=$v
    done
    printf '%s\n' "${sorted[@]}" | awk '!seen[$0]++'
}
# The newest version of each source package the mirror serves whole. A security mirror may list
# a version whose files are not there yet (404): that one is skipped, loudly; any other
# failure (network, a hash that does not match the signed index) stops the build.
for pkg in "${packages[@]}"; do
    for v in $(apt-cache "${apt_opts[@]}" showsrc "$pkg" | sed -n 's/^Version: //p' | newest_first); do
        dir=$sources/${pkg}_$v
        if [ -e "$dir/.complete" ]; then
            version[$pkg]=$v
            break
        fi
        rm -rf "$dir" && mkdir -p "$dir"
        if (cd "$dir" && apt-get "${apt_opts[@]}" source --download-only -qq "$pkg=$v" >fetch.log 2>&1); then
            touch "$dir/.complete"
            version[$pkg]=$v
            break
        fi
        if ! grep -q '404 *Not Found' "$dir/fetch.log"; then
            cat "$dir/fetch.log" >&2
            echo "fetching Debian's $pkg $v source package failed (above)" >&2
            exit 1
        fi
        echo "WARNING: $pkg $v is listed but the mirror does not serve all its files (404); building an older version" >&2
        skipped+=("$pkg $v: listed, not served whole (404)")
        rm -rf "$dir"
    done
    [ -n "${version[$pkg]:-}" ] || {
        echo "no version of Debian's $pkg source package could be fetched" >&2
        exit 1
    }
done

key=$( (cat "$self"; "$zig" version; for p in "${packages[@]}"; do echo "$p ${version[$p]}"; done) |
    sha256sum | cut -c1-16)
prefix=$cache/c-$key
# Unfinished builds of other keys are left-overs of failed runs; of the finished ones the three
# used last are kept (other branches, or the previous versions), the rest removed.
for old in "$cache"/build-*; do
    [ "$old" = "$cache/build-$key" ] || rm -rf "$old"
done
for old in $(ls -dt "$cache"/c-*/.complete 2>/dev/null | tail -n +4); do
    rm -rf "$(dirname "$old")"
done
for old in "$sources"/*_*; do
    [ -e "$old" ] || continue
    name=${old##*/}
    [ "${version[${name%%_*}]:-}" = "${name#*_}" ] || rm -rf "$old"
done
if [ -e "$prefix/.complete" ]; then
    touch "$prefix/.complete"
    echo "$prefix"
    exit 0
fi

echo "== building static OpenSSL ${version[openssl]}, libxml2 ${version[libxml2]}, xmlsec1 ${version[xmlsec1]} for glibc $GLIBC_TARGET (into $prefix)" >&2
work=$cache/build-$key
rm -rf "$work" "$prefix" && mkdir -p "$work/tools"
for tool in cc ar ranlib; do
    case $tool in
    cc) cmd="cc -target x86_64-linux-gnu.$GLIBC_TARGET" ;;
    *) cmd=$tool ;;
    esac
    printf '#!/bin/bash\nexec %q %s "$@"\n' "$zig" "$cmd" >"$work/tools/$tool"
    chmod +x "$work/tools/$tool"
done
export CC=$work/tools/cc AR=$work/tools/ar RANLIB=$work/tools/ranlib
jobs=$(nproc)
# What Debian compiles these libraries with (dpkg-buildflags), so the static copies keep the
# stack protector and the fortified string and printf functions. (Zig leaves both off unless
# asked.) The archives are checked for their traces after the build.
hardening=(-fstack-protector-strong -D_FORTIFY_SOURCE=2 -Wformat -Werror=format-security)

# Unpacks a fetched source package and applies Debian's patch series.
unpack() {
    local pkg=$1 dir
    dir=$sources/${pkg}_${version[$pkg]}
    mkdir -p "$work/$pkg"
    local orig debian
    for orig in "$dir"/*.orig.tar.gz "$dir"/*.orig.tar.xz "$dir"/*.orig.tar.bz2; do
        [ -f "$orig" ] && break
    done
    for debian in "$dir"/*.debian.tar.xz "$dir"/*.debian.tar.gz; do
        [ -f "$debian" ] && break
    done
    tar -xf "$orig" -C "$work/$pkg" --strip-components=1
    tar -xf "$debian" -C "$work/$pkg"
    if [ -f "$work/$pkg/debian/patches/series" ]; then
        grep -v '^\s*#' "$work/$pkg/debian/patches/series" | awk 'NF { print $1 }' | while read -r patch; do
            patch -s -p1 -d "$work/$pkg" <"$work/$pkg/debian/patches/$patch"
        done
    fi
    # Patches that touch Makefile.am would make make rerun automake: every file gets one old
    # time stamp, then the generated ones a newer one, so they stay as shipped.
    find "$work/$pkg" -exec touch -h -d '@1700000000' {} +
    find "$work/$pkg" -name aclocal.m4 -exec touch -d '@1700000100' {} +
    find "$work/$pkg" \( -name configure -o -name Makefile.in -o -name config.h.in \) \
        -exec touch -d '@1700000200' {} +
}

log=$work/build.log
# Every step must succeed; on a failure the end of the log is shown (on the script's own
# stderr, fd 3: inside the block, stderr goes to the log).
exec 3>&2
set -o errtrace
trap 'tail -40 "$log" >&3; echo "building the static C libraries failed; the whole log is $log" >&3' ERR
{
    unpack openssl
    cd "$work/openssl"
    # No provider modules are loaded from disk (no-dso), and the default configuration file
    # would be under a directory that does not exist; xmlsec still reads OPENSSL_CONF if the
    # environment names one (the unit unsets it).
    ./Configure linux-x86_64 no-shared no-tests no-dso no-engine "${hardening[@]}" \
        --prefix="$prefix" --libdir=lib --openssldir=/nonexistent/brandgate-openssl
    make -j"$jobs" build_libs
    make install_dev

    unpack libxml2
    cd "$work/libxml2"
    CFLAGS="-O2 ${hardening[*]}" ./configure --prefix="$prefix" --disable-shared --enable-static \
        --with-pic --disable-maintainer-mode --without-python --without-icu --without-lzma \
        --without-zlib --without-http --without-ftp --without-iconv --without-readline \
        --without-debug --without-modules --without-catalog
    make -j"$jobs" libxml2.la
    make install-libLTLIBRARIES install-pkgconfigDATA install-binSCRIPTS
    make -C include install

    unpack xmlsec1
    cd "$work/xmlsec1"
    CFLAGS="-O2 ${hardening[*]}" PKG_CONFIG_LIBDIR=$prefix/lib/pkgconfig ./configure \
        --prefix="$prefix" --disable-shared --enable-static --with-pic --disable-crypto-dl \
        --disable-md5 --disable-ripemd160 \
        --disable-apps-crypto-dl --disable-apps --disable-docs --disable-mans \
        --without-libxslt --without-gnutls --without-gcrypt --without-nss --without-nspr \
        --with-openssl="$prefix" --with-libxml="$prefix"
    make -j"$jobs" -C src
    make -C src install
    make -C include install
    make install-pkgconfigDATA install-binSCRIPTS
} >"$log" 2>&1
trap - ERR
cd "$root"

# The hardening took: every archive calls the stack protector's and the fortified functions'
# failure paths.
for lib in crypto xml2 xmlsec1 xmlsec1-openssl; do
    symbols=$(nm -A "$prefix/lib/lib$lib.a" 2>/dev/null)
    grep -q ' U __stack_chk_fail$' <<<"$symbols" && grep -qE ' U __[a-z]+_chk$' <<<"$symbols" || {
        echo "lib$lib.a was built without the stack protector or _FORTIFY_SOURCE" >&2
        exit 1
    }
done

# samael's build script asks for xmlsec1, xml2, ssl and crypto as shared libraries, and Zig's
# linker does not fall back from a missing shared library to a static one: a linker script
# under each shared name points at the static archive instead.
for lib in xmlsec1-openssl xmlsec1 xml2 ssl crypto; do
    printf 'INPUT(%s)\n' "$prefix/lib/lib$lib.a" >"$prefix/lib/lib$lib.so"
done

# What was built and the licences that come with it (for THIRD-PARTY-LICENSES).
for pkg in "${packages[@]}"; do echo "$pkg ${version[$pkg]}"; done >"$prefix/VERSIONS"
printf '%s\n' "${skipped[@]}" | sed '/^$/d' >"$prefix/SKIPPED"
mkdir -p "$prefix/licenses"
cp "$work/openssl/LICENSE.txt" "$prefix/licenses/openssl"
cp "$work/libxml2/Copyright" "$prefix/licenses/libxml2"
cp "$work/xmlsec1/COPYING" "$prefix/licenses/xmlsec1"
rm -rf "$work"
touch "$prefix/.complete"
echo "$prefix"
