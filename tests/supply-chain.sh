#!/usr/bin/env bash
# The dependency tree against deny.toml: licences, bans (several versions of a crate warned),
# sources; and advisories against the RustSec database when it can be fetched (or a copy
# fetched earlier is there), with the written exceptions in deny.toml. Installs cargo-deny
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deny --version >/dev/null 2>&1; then
    echo "== installing cargo-deny"
    cargo install --locked cargo-deny
fi
cargo deny --locked check --hide-inclusion-graph licenses bans sources
if timeout 120 cargo deny --locked fetch db >/dev/null 2>&1; then
    cargo deny --locked check advisories
elif ls "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/*/ >/dev/null 2>&1; then
    echo "advisories: the RustSec database could not be fetched; checking against the copy fetched earlier"
    cargo deny --locked check --disable-fetch advisories
else
    echo "advisories: NOT CHECKED: the RustSec database (github.com/rustsec/advisory-db) cannot be"
    echo "fetched from this machine and no earlier copy exists; licences, bans and sources were checked"
fi
