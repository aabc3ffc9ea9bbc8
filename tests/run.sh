#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit and integration tests (the
# attack matrix, the workspace in Chromium, overload), the benchmarks in quick mode, and every
# fuzz target for a short bounded time. Installs what the tests need when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

need_debian_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        if [ "$(id -u)" -ne 0 ]; then
            echo "run as root, or install: ${missing[*]}" >&2
            exit 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# openssl makes the PKCS#12 bundles the APNs certificate tests load; curl is the HTTP/2 client
# (nghttp2) the early-refusal test sends bodies with.
need_debian_packages openssl curl
# What the build needs (xmlsec1 and libclang for the agents' SAML sign-in).
bash packaging/build-deps.sh
# The agents' SAML sign-in is tested against Debian's pysaml2 (which signs with the xmlsec1
# CLI); its attack fixtures are edited with lxml and signed again with xmlsec1.
need_debian_packages python3-pysaml2 python3-lxml xmlsec1
# Egress through the brand's HTTP proxy is tested through a real one (the binary only: the
# tinyproxy package would start a system service).
need_debian_packages tinyproxy-bin
# promtool checks the shipped alert rules. Only the tool is taken from Debian's prometheus
# package (installing the package would start a Prometheus server).
if ! command -v promtool >/dev/null 2>&1 && [ ! -x target/tools/promtool ]; then
    log "fetching promtool (Debian's prometheus package, unpacked into target/tools)"
    mkdir -p target/tools/prometheus-deb
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    (cd target/tools/prometheus-deb && apt-get download -qq prometheus)
    dpkg-deb -x target/tools/prometheus-deb/prometheus_*.deb target/tools/prometheus-deb/root
    cp target/tools/prometheus-deb/root/usr/bin/promtool target/tools/promtool
fi
PROMTOOL=$(command -v promtool || echo "$PWD/target/tools/promtool")
export PROMTOOL
# The agents' workspace is tested in Debian's Chromium (driven by playwright-core, which cannot
# download a browser here).
need_debian_packages chromium

# The store's conformance suite runs against a real PostgreSQL on 127.0.0.1:5432 (it creates
# and drops its own databases). Under CI it must not be skipped: make sure the server runs.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    need_debian_packages postgresql
    cluster=$(ls /etc/postgresql 2>/dev/null | head -1)
    log "starting PostgreSQL $cluster"
    pg_ctlcluster --skip-systemctl-redirect "$cluster" main start
    for _ in $(seq 30); do
        pg_isready -q -h 127.0.0.1 -p 5432 && break
        sleep 1
    done
fi

# Independent test peers written in JavaScript (jose verifies what brandgate mints; the
# brand's OpenID provider; playwright-core and ws for the workspace in Chromium).
log "npm ci (tests/node)"
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

# The JSON Schema validator the relay tests check every frame with.
log "pip install (tests/python)"
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

profile=default
[ "${CI:-}" = "true" ] && profile=ci

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings
# The fuzz targets' doors (src/fuzzing.rs) build only with this feature.
cargo clippy --lib --locked --features fuzzing -- -D warnings

log "supply chain (cargo deny)"
bash tests/supply-chain.sh

log "tests"
cargo nextest run --locked --profile "$profile"
# Doc tests are not run by nextest.
cargo test --locked --doc --quiet

log "benchmarks (quick mode)"
cargo bench --locked --bench push_throughput -- --quick
cargo bench --locked --bench push_throughput -- --quick --store sqlite
cargo bench --locked --bench push_throughput -- --quick --store postgres
cargo bench --locked --bench mint -- --quick
cargo bench --locked --bench code_flow -- --quick
cargo bench --locked --bench relay -- --quick

log "fuzzing (short mode: each target 30 s; FUZZ_MODE=long for 10 million executions each)"
bash tests/fuzz.sh
