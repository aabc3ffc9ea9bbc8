#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer): builds the targets in fuzz/ and runs each one, bounded.
#
#   bash tests/fuzz.sh                  short mode: each target for FUZZ_SECONDS (default 30)
#   bash tests/fuzz.sh --long           long mode (or FUZZ_MODE=long): each target until it has
#                                       run FUZZ_RUNS inputs (default 10,000,000)
#   bash tests/fuzz.sh [--long] TARGET  only the targets named
#   FUZZ_JOBS=2                         each target in 2 processes sharing its corpus (long
#                                       mode: the executions are split between them)
#
# Exits non-zero when any target crashes (a panic, an overflow, a stack overflow), times out on
# one input, or runs out of memory; the input that did it is left in
# fuzz/target/run/<target>/artifacts/ and the log says how to minimise it. Each target runs on a
# copy of its seed corpus (fuzz/corpus/<target>/) under fuzz/target/run/, so what a run finds
# never lands in git; the next run on this machine starts from what the last one grew.
#
# Built with `-s none` (no AddressSanitizer): the code is safe Rust, panics and overflow checks
# are what find bugs, and without `-Zsanitizer` the stable toolchain builds it as it is.
# FUZZ_SANITIZER=address builds with ASan instead, which needs RUSTC_BOOTSTRAP=1 on stable (set
# here for that case only).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${FUZZ_MODE:-short}
targets=()
for arg in "$@"; do
    case "$arg" in
        --long) mode=long ;;
        --short) mode=short ;;
        -*) echo "unknown option $arg" >&2; exit 2 ;;
        *) targets+=("$arg") ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(push_request relay_request consumer_token config saml_response)

seconds=${FUZZ_SECONDS:-30}
runs=${FUZZ_RUNS:-10000000}
# Processes per target, side by side on one corpus (long mode on 2 cores: FUZZ_JOBS=2).
jobs=${FUZZ_JOBS:-1}
sanitizer=${FUZZ_SANITIZER:-none}
target_dir=${FUZZ_TARGET_DIR:-$PWD/fuzz/target}

log() { printf '\n== %s\n' "$*"; }

# The longest input each target is given: above what the daemon reads where that is small
# (a consumer token: 2 KiB), and enough to pass the 4096-byte push payload limit.
max_len() {
    case "$1" in
        push_request | config) echo 8192 ;;
        saml_response) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi
# The daemon's own build settings must not leak in (a shared target dir, instrumentation).
unset CARGO_TARGET_DIR RUSTFLAGS CARGO_BUILD_RUSTFLAGS

log "building the fuzz targets (release, debug assertions and overflow checks, sanitizer: $sanitizer)"
build_start=$SECONDS
# `cargo fuzz build` builds one target, or all of them.
one=()
[ ${#targets[@]} -eq 1 ] && one=("${targets[0]}")
(cd fuzz && cargo fuzz build -O --debug-assertions -s "$sanitizer" --target-dir "$target_dir" "${one[@]}")
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="$target_dir/$triple/release"
for t in "${targets[@]}"; do
    if [ ! -x "$bin_dir/$t" ]; then
        echo "the fuzz target $t was not built ($bin_dir/$t)" >&2
        exit 1
    fi
done
echo "built in $((SECONDS - build_start)) s"

run_root="$target_dir/run"
failed=()
summary=()
for t in "${targets[@]}"; do
    work="$run_root/$t"
    mkdir -p "$work/corpus" "$work/artifacts" "$work/tmp"
    # One run of a target at a time: they share its work directory.
    exec {lock}>"$work/lock"
    if ! flock -n "$lock"; then
        echo "!! $t: another run is using $work; not run" >&2
        failed+=("$t")
        exec {lock}>&-
        continue
    fi
    cp -n fuzz/corpus/"$t"/* "$work/corpus/" 2>/dev/null || true
    rm -rf "${work:?}/tmp/"* "$work"/log.*
    args=(
        "$work/corpus"
        -artifact_prefix="$work/artifacts/"
        -max_len="$(max_len "$t")"
        -rss_limit_mb=2048
        -timeout=20
        -print_final_stats=1
    )
    if [ "$mode" = long ]; then
        # The executions are shared between the processes; they share the corpus as it grows.
        args+=(-runs="$(((runs + jobs - 1) / jobs))")
        log "$t: $runs executions, $jobs process(es)"
    else
        args+=(-max_total_time="$seconds")
        log "$t: $seconds s, $jobs process(es)"
    fi
    start=$SECONDS
    touch "$work/started"
    pids=()
    for j in $(seq "$jobs"); do
        # The harness's own files (a config file, a SQLite store) go to a directory of the run.
        mkdir -p "$work/tmp/$j"
        TMPDIR="$work/tmp/$j" "$bin_dir/$t" "${args[@]}" </dev/null >"$work/log.$j" 2>&1 &
        pids+=($!)
    done
    status=0
    for pid in "${pids[@]}"; do
        wait "$pid" || status=$?
    done
    wall=$((SECONDS - start))
    exec {lock}>&-
    execs=0
    rss=0
    cov=
    best=-1
    for j in $(seq "$jobs"); do
        n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log.$j" | tail -1)
        execs=$((execs + ${n:-0}))
        r=$(sed -n 's/^stat::peak_rss_mb: *//p' "$work/log.$j" | tail -1)
        [ "${r:-0}" -gt "$rss" ] && rss=$r
        c=$(grep -aoE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$work/log.$j" | tail -1 || true)
        n=$(echo "$c" | awk '{print $2}')
        if [ -n "$n" ] && [ "$n" -gt "$best" ]; then best=$n; cov=$c; fi
    done
    rate=$((execs / (wall > 0 ? wall : 1)))
    line=$(printf '%-15s %12s execs %6s s %8s exec/s  %-32s rss %s MB' \
        "$t" "$execs" "$wall" "$rate" "${cov:-cov: ?}" "$rss")
    summary+=("$line")
    echo "$line"
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        for j in $(seq "$jobs"); do
            echo "!! $t failed (exit $status); the end of its log ($work/log.$j):" >&2
            # The panic's message first: a backtrace is longer than the tail below.
            grep -a -A 3 "panicked at" "$work/log.$j" | head -n 12 >&2 || true
            tail -n 40 "$work/log.$j" >&2
        done
        for a in "$work"/artifacts/*; do
            [ "$a" -nt "$work/started" ] || continue
            echo "!! reproducer: $a" >&2
            echo "   minimise: (cd fuzz && cargo fuzz tmin -O -a -s $sanitizer $t $a)" >&2
        done
    fi
done

log "fuzzing summary ($mode mode)"
printf '%s\n' "${summary[@]}"
echo "$((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets that failed: ${failed[*]}" >&2
    exit 1
fi
