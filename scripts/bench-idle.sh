#!/usr/bin/env bash
# Idle cost of the release binary: wake-ups, CPU, threads, and memory per idle
# keep-alive tunnel (tests/tests/idle.rs, including its ignored measurement).
#
# Builds the release proxy and the idle test in release (the first time, a full
# release build of the workspace: ~10 min on 2 cores), then runs the tests one at a
# time with their output: per-thread context switches of the idle `egress-proxy run`
# process over 4 s, its CPU ticks and VmRSS, and VmRSS before/after opening 300 idle
# CONNECT+TLS keep-alive tunnels. EGRESS_PROXY_BIN=/path/to/egress-proxy measures
# another build (e.g. an older release) with the same harness.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p egress-proxy
cargo test --release --locked -p egress-proxy-tests --test idle --no-run
exec cargo test --release --locked -p egress-proxy-tests --test idle -- \
    --include-ignored --nocapture --test-threads 1
