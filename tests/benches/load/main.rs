//! Load benchmark: the same HTTPS load sent straight to an in-process upstream and
//! through an `egress-proxy run` process, on loopback, in one run, with a markdown
//! table of throughput, latency, the proxy's CPU per request and its peak RSS.
//!
//! `scripts/bench-load.sh` builds the release proxy and runs this. The proxy gets one
//! worker thread on CPU 0; this process (load generator and upstream, one thread) is
//! pinned to CPU 1 — or everything runs unpinned, and the output says so.
//!
//! Loads, each with fresh proxy processes (so their peak RSS is the scenario's), the
//! paths ([`Via`]) alternating for [`REPEATS_VAR`] rounds: direct; egress-proxy with
//! the access log off (`proxy`) and on (`proxy-log`, JSON to a pipe this process
//! drains); its transparent listener; and the peer, a plain hudsucker MITM proxy
//! (`bench/hudsucker`, built by `scripts/bench-load.sh`) with the same policy:
//! - `keep-alive-1`, `keep-alive-64`: keep-alive HTTP/1.1, small responses
//!   ([`SMALL_RESPONSE`]), 1 and 64 connections;
//! - `plain-keep-alive-64`: the same over plain HTTP (absolute-form requests through
//!   the proxies) to a plain upstream;
//! - `new-connection`: a new connection (TCP + TLS; through the proxy, CONNECT + TLS)
//!   per request;
//! - `sse`: back-to-back SSE streams: time to first event and events per second;
//! - `inspected-post`: keep-alive POSTs of a 16 KiB JSON body, 16 connections; the
//!   proxy runs the `body` test fixture (a 0.2.0 component that answers `need-body`
//!   and reads the whole body in 16 KiB slices in `decide-body`) for that host, so
//!   every request is held, inspected and then forwarded.
//!
//! Settings (environment): `LOAD_SECONDS`, `LOAD_WARMUP_SECONDS`, `LOAD_REPEATS`,
//! `LOAD_SSE_EVENTS`, `LOAD_ONLY` (ids above, comma-separated), `LOAD_VIAS`
//! (`proxy,proxy-log,transparent,hudsucker`, comma-separated), `LOAD_HUDSUCKER_BIN`,
//! `LOAD_SHADOW=1` (then also the shadow policy's overhead, see `shadow`; `only`: just
//! that). Every window also
//! records the CPU other processes used: figures taken while that is high are noise.
//!
//! Modules: `host` (pinning, `/proc`), `proxy` (the egress-proxy child process),
//! `peer` (the hudsucker child process), `drive` (load generators), `report` (tables).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

mod drive;
mod host;
mod peer;
mod proxy;
mod report;
mod shadow;

use std::path::{Path, PathBuf};
use std::time::Duration;

use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};

use crate::drive::{Load, Run, Sample, Window};
use crate::host::Pinning;
use crate::peer::PeerProcess;
use crate::proxy::ProxyProcess;
use crate::report::{PathRuns, Scenario};

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
/// Only these paths besides direct (comma-separated [`Via::id`]s); default all.
const VIAS_VAR: &str = "LOAD_VIAS";

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
    vias: Vec<Via>,
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
            vias: vias_from_env(),
        }
    }

    fn loads(&self) -> Vec<Load> {
        let all = [
            Load::KeepAlive { connections: 1 },
            Load::KeepAlive {
                connections: MANY_CONNECTIONS,
            },
            Load::PlainKeepAlive {
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

/// The paths [`VIAS_VAR`] names (direct always first), or all of them.
fn vias_from_env() -> Vec<Via> {
    let Some(list) = std::env::var(VIAS_VAR).ok().filter(|v| !v.is_empty()) else {
        return Via::ALL.to_vec();
    };
    let mut vias = vec![Via::Direct];
    for id in list.split(',').map(str::trim) {
        let via = Via::ALL
            .into_iter()
            .find(|via| via.id() == id)
            .unwrap_or_else(|| {
                panic!(
                    "{VIAS_VAR}: `{id}` is not a path; the ids are {:?}",
                    Via::ALL.map(Via::id)
                )
            });
        if !vias.contains(&via) {
            vias.push(via);
        }
    }
    vias
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
                "{} runs of {:.1} s (after {:.1} s warm-up) per scenario and path, paths in rotating order; small response: GET {SMALL_RESPONSE}, HTTP/1.1 (over TLS but for plain-keep-alive); CLK_TCK {ticks_per_second}",
                settings.repeats,
                window.measure.as_secs_f64(),
                window.warmup.as_secs_f64()
            ),
            format!(
                "settings: {SECONDS_VAR}, {WARMUP_VAR}, {REPEATS_VAR}, {SSE_EVENTS_VAR}, {ONLY_VAR}, {VIAS_VAR}; proxy binary {}",
                bin.display()
            ),
        ];
        report::print(&scenarios, ticks_per_second, &notes);
    }
    if shadow::wanted() {
        let rows = runtime.block_on(async {
            let upstream = Upstream::start(UpstreamOptions {
                http2: false,
                record_requests: false,
                extra_names: vec![INSPECTED_HOST.to_owned()],
                ..UpstreamOptions::default()
            })
            .await;
            let dir = tempfile::tempdir().expect("tempdir");
            let upstream_ca = upstream.ca().write_pem(dir.path());
            let routes = proxy::write_routes(dir.path(), &[upstream.port()]);
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
pub enum Via {
    Direct,
    /// egress-proxy as an explicit proxy (`HTTPS_PROXY`, CONNECT), access log off.
    Proxy,
    /// The same with the access log on (JSON, one line per request, to stderr).
    Logged,
    /// egress-proxy's transparent listener, dialled as if it were the upstream: it
    /// listens on the upstream's port on another loopback address (127.0.0.2), so the
    /// original destination's port is the upstream's without a redirect rule (no root
    /// needed); the rest — ClientHello, SNI, the CONNECT decision, interception — is
    /// the redirected path. TLS loads only.
    Transparent,
    /// The peer: a plain hudsucker MITM proxy (`bench/hudsucker`) with the same
    /// policy, no log.
    Hudsucker,
}

impl Via {
    pub const ALL: [Via; 5] = [
        Via::Direct,
        Via::Proxy,
        Via::Logged,
        Via::Transparent,
        Via::Hudsucker,
    ];

    /// The name in `LOAD_VIAS` and in the report.
    pub fn id(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Proxy => "proxy",
            Via::Logged => "proxy-log",
            Via::Transparent => "transparent",
            Via::Hudsucker => "hudsucker",
        }
    }

    fn serves(self, load: Load) -> bool {
        match self {
            Via::Transparent => !matches!(load, Load::PlainKeepAlive { .. }),
            // The peer has no body policy; an inspected POST is egress-proxy's alone.
            Via::Hudsucker => !matches!(load, Load::InspectedPost { .. }),
            _ => true,
        }
    }
}

/// Where the transparent listener listens: the upstream's port on this address.
const TRANSPARENT_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

/// The processes one scenario's paths go through.
pub(crate) struct Proxies {
    /// Log off; also serves the transparent path.
    pub(crate) quiet: Option<ProxyProcess>,
    logged: Option<ProxyProcess>,
    peer: Option<PeerProcess>,
}

impl Proxies {
    /// Just one egress-proxy, log off.
    pub(crate) fn quiet(proxy: ProxyProcess) -> Self {
        Self {
            quiet: Some(proxy),
            logged: None,
            peer: None,
        }
    }

    fn ticks(&self, via: Via) -> Option<u64> {
        match via {
            Via::Direct => None,
            Via::Proxy | Via::Transparent => self.quiet.as_ref().map(ProxyProcess::cpu_ticks),
            Via::Logged => self.logged.as_ref().map(ProxyProcess::cpu_ticks),
            Via::Hudsucker => self.peer.as_ref().map(PeerProcess::cpu_ticks),
        }
    }
}

async fn run(settings: &Settings, pinning: &Pinning, bin: &Path) -> Vec<Scenario> {
    // HTTP/1.1 upstreams, as the peer speaks (its client has no h2 by default).
    let upstream = Upstream::start(UpstreamOptions {
        http2: false,
        record_requests: false,
        extra_names: vec![INSPECTED_HOST.to_owned()],
        ..UpstreamOptions::default()
    })
    .await;
    let plain = Upstream::start(UpstreamOptions {
        tls: false,
        http2: false,
        record_requests: false,
        ..UpstreamOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream_ca = upstream.ca().write_pem(dir.path());
    let routes = proxy::write_routes(dir.path(), &[upstream.port(), plain.port()]);
    let peer_bin = settings.vias.contains(&Via::Hudsucker).then(peer::binary);

    let mut scenarios = Vec::new();
    for load in settings.loads() {
        let vias: Vec<Via> = settings
            .vias
            .iter()
            .copied()
            .filter(|via| via.serves(load))
            .collect();
        let mut extra = match load {
            Load::InspectedPost { .. } => vec![
                "--policy".to_owned(),
                egress_proxy_tests::BODY_WASM.to_owned(),
                "--connect-to".to_owned(),
                format!("{INSPECTED_HOST}:{}:{}", upstream.port(), upstream.addr()),
            ],
            _ => Vec::new(),
        };
        let start = |logged: bool, extra: &[String]| {
            let state = dir.path().join(if logged { "logged" } else { "quiet" });
            ProxyProcess::start(bin, pinning, &state, &routes, &upstream_ca, logged, extra)
        };
        let quiet = vias
            .iter()
            .any(|v| matches!(v, Via::Proxy | Via::Transparent))
            .then(|| {
                let mut extra = extra.clone();
                if vias.contains(&Via::Transparent) {
                    extra.push("--transparent-listen".to_owned());
                    extra.push(format!("{TRANSPARENT_IP}:{}", upstream.port()));
                }
                start(false, &extra)
            });
        let logged = vias.contains(&Via::Logged).then(|| start(true, &extra));
        extra.clear();
        let peer = vias.contains(&Via::Hudsucker).then(|| {
            let bin = peer_bin.as_ref().expect("peer binary");
            PeerProcess::start(bin, pinning, &dir.path().join("peer"), &upstream_ca)
        });
        let proxies = Proxies {
            quiet,
            logged,
            peer,
        };
        let started = [
            proxies.quiet.as_ref().map(ProxyProcess::memory),
            proxies.logged.as_ref().map(ProxyProcess::memory),
            proxies.peer.as_ref().map(PeerProcess::memory),
        ];
        let url = match load {
            Load::Sse { events } => upstream.url(&format!("/sse?events={events}")),
            Load::InspectedPost { .. } => {
                format!("https://{INSPECTED_HOST}:{}/echo", upstream.port())
            }
            Load::PlainKeepAlive { .. } => plain.url(SMALL_RESPONSE),
            _ => upstream.url(SMALL_RESPONSE),
        };
        let target = if matches!(load, Load::PlainKeepAlive { .. }) {
            &plain
        } else {
            &upstream
        };
        let mut paths: Vec<PathRuns> = vias.iter().map(|&via| PathRuns::new(via)).collect();
        for round in 0..settings.repeats {
            let mut order: Vec<usize> = (0..paths.len()).collect();
            order.rotate_left(round % paths.len());
            for index in order {
                let via = paths[index].via;
                let client = client(via, load, target, &proxies);
                let sample = || Sample {
                    at: std::time::Instant::now(),
                    proxy_ticks: proxies.ticks(via),
                    bench_ticks: host::cpu_ticks("self"),
                    system_ticks: host::system_busy_ticks(),
                };
                let run =
                    drive::measure(load, &client, target, &url, settings.window, &sample).await;
                progress(load, via, round, &run);
                paths[index].runs.push(run);
            }
        }
        let [quiet_start, logged_start, peer_start] = started;
        for path in &mut paths {
            let (memory, end) = match path.via {
                Via::Direct => continue,
                Via::Proxy | Via::Transparent => (
                    quiet_start,
                    proxies.quiet.as_ref().map(ProxyProcess::memory),
                ),
                Via::Logged => (
                    logged_start,
                    proxies.logged.as_ref().map(ProxyProcess::memory),
                ),
                Via::Hudsucker => (peer_start, proxies.peer.as_ref().map(PeerProcess::memory)),
            };
            path.memory = memory.zip(end).map(|(a, b)| [a, b]);
        }
        let warnings = proxies.quiet.map_or(0, ProxyProcess::stop)
            + proxies.logged.map_or(0, ProxyProcess::stop);
        if let Some(peer) = proxies.peer {
            peer.stop();
        }
        scenarios.push(Scenario {
            load,
            paths,
            proxy_warnings: warnings,
        });
    }
    upstream.shutdown().await;
    plain.shutdown().await;
    scenarios
}

/// An HTTP/1.1 client for `load`, going `via` a proxy or straight to `upstream`.
pub(crate) fn client(
    via: Via,
    load: Load,
    upstream: &Upstream,
    proxies: &Proxies,
) -> reqwest::Client {
    let idle_per_host = match load {
        Load::KeepAlive { connections }
        | Load::PlainKeepAlive { connections }
        | Load::InspectedPost { connections, .. } => connections,
        Load::NewConnection { .. } => 0,
        Load::Sse { .. } => 1,
    };
    let builder = || {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .http1_only()
            .pool_max_idle_per_host(idle_per_host)
            .timeout(REQUEST_TIMEOUT)
    };
    let through = |url: String, ca: &[u8]| {
        builder()
            .proxy(reqwest::Proxy::all(url).expect("proxy URL"))
            .add_root_certificate(certificate(ca))
    };
    let quiet = || proxies.quiet.as_ref().expect("the quiet proxy");
    let builder = match via {
        // Resolve `localhost` up front: the system resolver is not what is measured.
        Via::Direct => builder()
            .no_proxy()
            .resolve("localhost", upstream.addr())
            .resolve(INSPECTED_HOST, upstream.addr())
            .add_root_certificate(certificate(upstream.ca().cert_pem().as_bytes())),
        Via::Proxy => through(quiet().url(), quiet().ca_pem()),
        Via::Logged => {
            let logged = proxies.logged.as_ref().expect("the logging proxy");
            through(logged.url(), logged.ca_pem())
        }
        Via::Hudsucker => {
            let peer = proxies.peer.as_ref().expect("the peer");
            through(peer.url(), peer.ca_pem())
        }
        // No proxy settings at all: the client dials "the upstream", which is the
        // transparent listener.
        Via::Transparent => {
            let listener = std::net::SocketAddr::from((TRANSPARENT_IP, upstream.port()));
            builder()
                .no_proxy()
                .resolve("localhost", listener)
                .resolve(INSPECTED_HOST, listener)
                .add_root_certificate(certificate(quiet().ca_pem()))
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
        "{} {} #{}: {:.0}/s over {:.2} s, µs p50 {} p90 {} p99 {} p99.9 {} max {}, bench {} ticks{cpu}, others {} ticks{error}",
        load.id(),
        via.id(),
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
