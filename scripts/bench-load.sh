#!/usr/bin/env bash
# Load benchmark: direct-to-upstream vs through egress-proxy (explicit with the
# access log off and on, and its transparent listener dialled as the upstream) vs
# through a plain hudsucker MITM proxy (bench/hudsucker, the peer) on loopback, in
# one run.
#
# Builds the release proxy and the peer, then runs `tests/benches/load` pinned to
# CPU 1 (the benchmark starts the proxies on CPU 0 with one worker thread each).
# Without taskset or a second CPU everything runs unpinned, and the report says so.
#
# Settings (environment): LOAD_SECONDS (measured seconds per run, default 3),
# LOAD_WARMUP_SECONDS (default 1), LOAD_REPEATS (direct/proxy/transparent rounds per scenario,
# default 3), LOAD_SSE_EVENTS (events per SSE stream, default 10000), LOAD_ONLY
# (some of keep-alive-1,keep-alive-64,plain-keep-alive-64,new-connection,sse,inspected-post),
# LOAD_VIAS (some of proxy,proxy-log,transparent,hudsucker; direct always runs). The markdown report goes
# to stdout, progress to stderr. Run it on a quiet machine: the "other load" column
# shows how much CPU everything else used during the measurements.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p egress-proxy
# The peer: its own workspace and lock file (hudsucker's defaults build aws-lc-rs,
# which the proxy never links).
if [[ ",${LOAD_VIAS:-hudsucker}," == *,hudsucker,* ]]; then
    cargo build --release --locked --manifest-path bench/hudsucker/Cargo.toml \
        --target-dir target/hudsucker-peer
fi
# Build the benchmark unpinned (the compiler may use every CPU), then run it pinned.
cargo bench --locked -p egress-proxy-tests --bench load --no-run

bench=(cargo bench --locked -p egress-proxy-tests --bench load)
if command -v taskset >/dev/null && taskset -c 1 true 2>/dev/null; then
    exec taskset -c 1 "${bench[@]}"
fi
echo "bench-load: taskset or CPU 1 unavailable; running unpinned" >&2
exec "${bench[@]}"
