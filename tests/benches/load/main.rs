//! Load benchmark: the same HTTPS load sent straight to an in-process upstream and
//! through an `egress-proxy run` process, on loopback, in one run, with a markdown
//! table of throughput, latency, the proxy's CPU per request and its peak RSS.
//!
//! `scripts/bench-load.sh` builds the release proxy and runs this. The proxy gets one
//! worker thread on CPU 0; this process (load generator and upstream, one thread) is
//! pinned to CPU 1 — or everything runs unpinned, and the output says so.
//!
//! Loads, each with a fresh proxy process (so its peak RSS is the scenario's), direct
//! and proxied runs alternating for [`REPEATS_VAR`] rounds:
//! - `keep-alive-1`, `keep-alive-64`: keep-alive HTTP/1.1, small responses
//!   ([`SMALL_RESPONSE`]), 1 and 64 connections;
//! - `new-connection`: a new connection (TCP + TLS; through the proxy, CONNECT + TLS)
//!   per request;
//! - `sse`: back-to-back SSE streams: time to first event and events per second;
//! - `inspected-post`: keep-alive POSTs of a 16 KiB JSON body, 16 connections; the
//!   proxy runs the `body` test fixture (a 0.2.0 component that answers `need-body`
//!   and reads the whole body in 16 KiB slices in `decide-body`) for that host, so
//!   every request is held, inspected and then forwarded.
//!
//! Settings (environment): `LOAD_SECONDS`, `LOAD_WARMUP_SECONDS`, `LOAD_REPEATS`,
//! `LOAD_SSE_EVENTS`, `LOAD_ONLY` (ids above, comma-separated), `LOAD_SHADOW=1` (then
//! also the shadow policy's overhead, see `shadow`; `only`: just that). Every window also
//! records the CPU other processes used: figures taken while that is high are noise.
//!
//! Modules: `host` (pinning, `/proc`), `proxy` (the child process), `drive` (load
//! generators), `report` (tables).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

mod drive;
mod host;
mod proxy;
mod report;
mod shadow;

use std::path::{Path, PathBuf};
use std::time::Duration;

use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};

use crate::drive::{Load, Run, Sample, Window};
use crate::host::Pinning;
use crate::proxy::ProxyProcess;
use crate::report::Scenario;

/// Measured seconds per run.
const SECONDS_VAR: &str = "LOAD_SECONDS";
const DEFAULT_SECONDS: f64 = 3.0;
/// Warm-up seconds before each measured window.
const WARMUP_VAR: &str = "LOAD_WARMUP_SECONDS";
const DEFAULT_WARMUP_SECONDS: f64 = 1.0;
/// Direct/proxy/transparent rounds per scenario (the order rotates).
const REPEATS_VAR: &str = "LOAD_REPEATS";
const DEFAULT_REPEATS: usize = 3;
/// Events per SSE stream.
const SSE_EVENTS_VAR: &str = "LOAD_SSE_EVENTS";
const DEFAULT_SSE_EVENTS: u32 = 10_000;
/// Only these scenarios (comma-separated [`Load::id`]s); default all.
const ONLY_VAR: &str = "LOAD_ONLY";

/// The small response: 100 bytes.
const SMALL_RESPONSE: &str = "/bytes?n=100";
/// Connections in the busy keep-alive scenario.
const MANY_CONNECTIONS: usize = 64;
/// Requests in flight in the new-connection scenario.
const NEW_CONNECTION_CONCURRENCY: usize = 16;
/// The inspected POST's body size and connections.
const INSPECTED_BYTES: usize = 16 * 1024;
const INSPECTED_CONNECTIONS: usize = 16;
/// The host the `body` fixture inspects bodies for.
const INSPECTED_HOST: &str = "body.test";
/// Per-request timeout (SSE: per stream).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Settings {
    window: Window,
    repeats: usize,
    sse_events: u32,
    only: Option<String>,
}

impl Settings {
    fn from_env() -> Self {
        let seconds = |var, default| Duration::from_secs_f64(env_or(var, default));
        Self {
            window: Window {
                warmup: seconds(WARMUP_VAR, DEFAULT_WARMUP_SECONDS),
                measure: seconds(SECONDS_VAR, DEFAULT_SECONDS),
            },
            repeats: env_or(REPEATS_VAR, DEFAULT_REPEATS).max(1),
            sse_events: env_or(SSE_EVENTS_VAR, DEFAULT_SSE_EVENTS).max(1),
            only: std::env::var(ONLY_VAR).ok().filter(|only| !only.is_empty()),
        }
    }

    fn loads(&self) -> Vec<Load> {
        let all = [
            Load::KeepAlive { connections: 1 },
            Load::KeepAlive {
                connections: MANY_CONNECTIONS,
            },
            Load::NewConnection {
                concurrency: NEW_CONNECTION_CONCURRENCY,
            },
            Load::Sse {
                events: self.sse_events,
            },
            Load::InspectedPost {
                connections: INSPECTED_CONNECTIONS,
                bytes: INSPECTED_BYTES,
            },
        ];
        let wanted = |load: &Load| {
            let id = load.id();
            self.only
                .as_ref()
                .is_none_or(|only| only.split(',').any(|want| want.trim() == id))
        };
        let loads: Vec<Load> = all.into_iter().filter(wanted).collect();
        assert!(
            !loads.is_empty(),
            "{ONLY_VAR} names no scenario; the ids are {:?}",
            all.map(|load| load.id())
        );
        loads
    }
}

/// `var` parsed, or `default` if unset; a value that does not parse is fatal.
fn env_or<T: std::str::FromStr>(var: &str, default: T) -> T {
    match std::env::var(var) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{var}={value:?} is not a valid value")),
        Err(_) => default,
    }
}

fn main() {
    // First, before any thread starts, so every thread inherits the CPU.
    let pinning = Pinning::pin_self();
    let settings = Settings::from_env();
    let bin = proxy_binary();
    let ticks_per_second = host::clock_ticks_per_second();
    eprintln!("{}; proxy binary {}", pinning.describe(), bin.display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if !shadow::only() {
        let scenarios = runtime.block_on(run(&settings, &pinning, &bin));

        let window = settings.window;
        let notes = [
            pinning.describe(),
            format!(
                "{} runs of {:.1} s (after {:.1} s warm-up) per scenario and path, direct, proxy and transparent in rotating order; small response: GET {SMALL_RESPONSE}, HTTP/1.1 over TLS; CLK_TCK {ticks_per_second}",
                settings.repeats,
                window.measure.as_secs_f64(),
                window.warmup.as_secs_f64()
            ),
            format!(
                "settings: {SECONDS_VAR}, {WARMUP_VAR}, {REPEATS_VAR}, {SSE_EVENTS_VAR}, {ONLY_VAR}; proxy binary {}",
                bin.display()
            ),
        ];
        report::print(&scenarios, ticks_per_second, &notes);
    }
    if shadow::wanted() {
        let rows = runtime.block_on(async {
            let upstream = Upstream::start(UpstreamOptions {
                record_requests: false,
                extra_names: vec![INSPECTED_HOST.to_owned()],
                ..UpstreamOptions::default()
            })
            .await;
            let dir = tempfile::tempdir().expect("tempdir");
            let upstream_ca = upstream.ca().write_pem(dir.path());
            let routes = proxy::write_routes(dir.path(), upstream.port());
            let rows = shadow::compare(
                &settings,
                &pinning,
                &bin,
                &upstream,
                dir.path(),
                &routes,
                &upstream_ca,
            )
            .await;
            upstream.shutdown().await;
            rows
        });
        shadow::print(&rows, ticks_per_second);
    }
}

/// The release `egress-proxy` next to this benchmark's `deps` directory.
fn proxy_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let expected = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("egress-proxy"));
    assert!(
        expected.is_some_and(|bin| bin.exists()),
        "no egress-proxy binary next to {}: run `cargo build --release -p egress-proxy` first (scripts/bench-load.sh does)",
        exe.display()
    );
    egress_proxy_tests::proxy_bin()
}

/// Which way a run's requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    /// The explicit proxy (`HTTPS_PROXY`, CONNECT).
    Proxy,
    /// The transparent listener, dialled as if it were the upstream: it listens on
    /// the upstream's port on another loopback address (127.0.0.2), so the original
    /// destination's port is the upstream's without a redirect rule (no root needed);
    /// the rest — ClientHello, SNI, the CONNECT decision, interception — is the
    /// redirected path.
    Transparent,
}

/// Where the transparent listener listens: the upstream's port on this address.
const TRANSPARENT_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

async fn run(settings: &Settings, pinning: &Pinning, bin: &Path) -> Vec<Scenario> {
    let upstream = Upstream::start(UpstreamOptions {
        record_requests: false,
        extra_names: vec![INSPECTED_HOST.to_owned()],
        ..UpstreamOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream_ca = upstream.ca().write_pem(dir.path());
    let routes = proxy::write_routes(dir.path(), upstream.port());

    let mut scenarios = Vec::new();
    for load in settings.loads() {
        let mut extra = match load {
            Load::InspectedPost { .. } => vec![
                "--policy".to_owned(),
                egress_proxy_tests::BODY_WASM.to_owned(),
                "--connect-to".to_owned(),
                format!("{INSPECTED_HOST}:{}:{}", upstream.port(), upstream.addr()),
            ],
            _ => Vec::new(),
        };
        extra.push("--transparent-listen".to_owned());
        extra.push(format!("{TRANSPARENT_IP}:{}", upstream.port()));
        let proxy = ProxyProcess::start(bin, pinning, dir.path(), &routes, &upstream_ca, &extra);
        let started = proxy.memory();
        let url = match load {
            Load::Sse { events } => upstream.url(&format!("/sse?events={events}")),
            Load::InspectedPost { .. } => {
                format!("https://{INSPECTED_HOST}:{}/echo", upstream.port())
            }
            _ => upstream.url(SMALL_RESPONSE),
        };
        let mut direct = Vec::new();
        let mut proxied = Vec::new();
        let mut transparent = Vec::new();
        for round in 0..settings.repeats {
            let mut order = [Via::Direct, Via::Proxy, Via::Transparent];
            order.rotate_left(round % 3);
            for via in order {
                let client = client(via, load, &upstream, &proxy);
                let sample = || Sample {
                    at: std::time::Instant::now(),
                    proxy_ticks: (via != Via::Direct).then(|| proxy.cpu_ticks()),
                    bench_ticks: host::cpu_ticks("self"),
                    system_ticks: host::system_busy_ticks(),
                };
                let run =
                    drive::measure(load, &client, &upstream, &url, settings.window, &sample).await;
                progress(load, via, round, &run);
                match via {
                    Via::Direct => direct.push(run),
                    Via::Proxy => proxied.push(run),
                    Via::Transparent => transparent.push(run),
                }
            }
        }
        let memory = [started, proxy.memory()];
        scenarios.push(Scenario {
            load,
            direct,
            proxy: proxied,
            transparent,
            memory,
            proxy_warnings: proxy.stop(),
        });
    }
    upstream.shutdown().await;
    scenarios
}

/// An HTTP/1.1 client for `load`, going `via` the proxy or straight to `upstream`.
fn client(via: Via, load: Load, upstream: &Upstream, proxy: &ProxyProcess) -> reqwest::Client {
    let idle_per_host = match load {
        Load::KeepAlive { connections } | Load::InspectedPost { connections, .. } => connections,
        Load::NewConnection { .. } => 0,
        Load::Sse { .. } => 1,
    };
    let builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .http1_only()
        .pool_max_idle_per_host(idle_per_host)
        .timeout(REQUEST_TIMEOUT);
    let builder = match via {
        // Resolve `localhost` up front: the system resolver is not what is measured.
        Via::Direct => builder
            .no_proxy()
            .resolve("localhost", upstream.addr())
            .resolve(INSPECTED_HOST, upstream.addr())
            .add_root_certificate(certificate(upstream.ca().cert_pem().as_bytes())),
        Via::Proxy => builder
            .proxy(reqwest::Proxy::all(proxy.url()).expect("proxy URL"))
            .add_root_certificate(certificate(proxy.ca_pem())),
        // No proxy settings at all: the client dials "the upstream", which is the
        // transparent listener.
        Via::Transparent => {
            let listener = std::net::SocketAddr::from((TRANSPARENT_IP, upstream.port()));
            builder
                .no_proxy()
                .resolve("localhost", listener)
                .resolve(INSPECTED_HOST, listener)
                .add_root_certificate(certificate(proxy.ca_pem()))
        }
    };
    builder.build().expect("reqwest client")
}

fn certificate(pem: &[u8]) -> reqwest::Certificate {
    reqwest::Certificate::from_pem(pem).expect("CA certificate PEM")
}

/// One line per run on stderr, so the spread between repeats is visible.
fn progress(load: Load, via: Via, round: usize, run: &Run) {
    let cpu = run
        .proxy_ticks
        .map(|ticks| format!(", proxy {ticks} ticks"))
        .unwrap_or_default();
    let error = run
        .first_error
        .as_ref()
        .map(|e| format!(", {} errors (first: {e})", run.errors))
        .unwrap_or_default();
    eprintln!(
        "{} {via:?} #{}: {:.0}/s over {:.2} s, µs p50 {} p90 {} p99 {} p99.9 {} max {}, bench {} ticks{cpu}, others {} ticks{error}",
        load.id(),
        round + 1,
        run.rate(),
        run.elapsed.as_secs_f64(),
        run.latency_us(0.5),
        run.latency_us(0.9),
        run.latency_us(0.99),
        run.latency_us(0.999),
        run.latency_us(1.0),
        run.bench_ticks,
        run.other_ticks,
    );
}
