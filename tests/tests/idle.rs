//! What an idle proxy costs. One proxy runs beside every sandboxed agent, and agents
//! are idle most of the time, so with no request in flight the `egress-proxy run`
//! process must not wake up on a timer: the target is at most
//! [`MAX_WAKE_UPS_PER_SECOND`] and no measurable CPU, with keep-alive connections
//! (a TLS tunnel and a plain-HTTP connection) and a pooled upstream connection open.
//! Measured from `/proc` on the real binary (see [`Usage`]).
//!
//! Also here: the policy's time limit still holds for the first call after a long
//! idle period (the epoch ticker parks while idle), and, as an ignored measurement
//! that `scripts/bench-idle.sh` runs on the release binary, the memory each idle
//! keep-alive tunnel costs.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use egress_proxy::policy::PolicyStats;
use egress_proxy_tests::process::{RunningProxy, Usage};
use egress_proxy_tests::proxy::{TOKEN_NAME, TOKEN_VALUE, read_head, standard_routes};
use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};
use egress_proxy_tests::{MapSecrets, get, misbehave, test_runtime};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

/// The target: context switches per second of an idle proxy, all threads together
/// (was ~178 before the epoch ticker and the file-event debouncer stopped ticking).
const MAX_WAKE_UPS_PER_SECOND: u64 = 2;
/// How long the test watches the idle proxy. Short enough for CI, long enough that
/// a 10 ms or 100 ms timer shows up as dozens of wake-ups.
const WINDOW: Duration = Duration::from_secs(4);
/// CPU time allowed over [`WINDOW`], in clock ticks (10 ms): 0.25% of one core. An
/// idle proxy that does not wake up uses none.
const MAX_IDLE_CPU_TICKS: u64 = 1;
/// Time for the traffic's after-effects to end before measuring: the epoch ticker
/// parks within two ticks of the last policy call, tasks finish.
const SETTLE: Duration = Duration::from_millis(1500);

/// An `egress-proxy run` process with routes for `upstream` (injecting
/// [`TOKEN_VALUE`]), its files in `dir`. The routes file has a directory of its own, so
/// nothing the test writes raises a file event the proxy would act on.
fn start_proxy(upstream: &Upstream, dir: &Path) -> RunningProxy {
    let upstream_ca = upstream.ca().write_pem(dir);
    let routes_dir = dir.join("routes");
    std::fs::create_dir(&routes_dir).unwrap();
    let routes = routes_dir.join("routes.yaml");
    std::fs::write(&routes, standard_routes(upstream.port())).unwrap();
    RunningProxy::start(
        &routes,
        &dir.join("state"),
        &["--upstream-ca", upstream_ca.to_str().unwrap()],
        &[(TOKEN_NAME, TOKEN_VALUE)],
    )
}

/// A TLS client configuration trusting the proxy's CA only, offering HTTP/1.1.
fn tls_config(proxy: &RunningProxy) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(proxy.ca_path()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// An HTTP/1.1 client connection, left open after its requests.
struct KeepAlive {
    sender: SendRequest<Empty<Bytes>>,
}

impl KeepAlive {
    /// Send `GET target` with `Host: host` and read the whole response; returns its
    /// status.
    async fn get(&mut self, target: &str, host: &str) -> u16 {
        let request = hyper::Request::get(target)
            .header("host", host)
            .body(Empty::new())
            .unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    }
}

/// CONNECT to the upstream through the proxy, a TLS handshake with the proxy's leaf,
/// and one allowed `GET` inside: an agent's keep-alive tunnel, now idle.
async fn idle_tunnel(
    proxy: &RunningProxy,
    tls: &Arc<rustls::ClientConfig>,
    upstream: &Upstream,
    connections: &mut JoinSet<()>,
) -> KeepAlive {
    let authority = format!("localhost:{}", upstream.port());
    let mut tcp = TcpStream::connect(&proxy.listen).await.unwrap();
    let connect = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(connect.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT: {head}");
    let stream = TlsConnector::from(Arc::clone(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    connections.spawn(async move {
        let _ = connection.await;
    });
    let mut tunnel = KeepAlive { sender };
    assert_eq!(tunnel.get("/echo/idle", &authority).await, 200);
    tunnel
}

/// A plain-HTTP keep-alive connection to the proxy that had one request denied.
async fn idle_plain_connection(proxy: &RunningProxy, connections: &mut JoinSet<()>) -> KeepAlive {
    let tcp = TcpStream::connect(&proxy.listen).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    connections.spawn(async move {
        let _ = connection.await;
    });
    let mut plain = KeepAlive { sender };
    assert_eq!(
        plain.get("http://denied.example/", "denied.example").await,
        403
    );
    plain
}

/// Watch the idle proxy for [`WINDOW`]; returns (wake-ups, CPU ticks, a description).
async fn watch_idle(proxy: &RunningProxy) -> (u64, u64, String) {
    let before = proxy.usage();
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let after = proxy.usage();
    let seconds = started.elapsed().as_secs_f64();
    let wake_ups = after.wake_ups_since(&before);
    let cpu = after.cpu_ticks - before.cpu_ticks;
    let report = format!(
        "{wake_ups} wake-ups in {seconds:.1} s ({:.1}/s), {cpu} CPU ticks (10 ms), {} threads, \
         VmRSS {} KiB; per thread: {:?}",
        wake_ups as f64 / seconds,
        after.threads.len(),
        after.rss_kib,
        after.wake_ups_by_thread(&before),
    );
    (wake_ups, cpu, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_proxy_does_not_wake_up() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let mut proxy = start_proxy(&upstream, dir.path());
    let tls = tls_config(&proxy);
    let mut connections = JoinSet::new();
    // Traffic first: policy calls, a minted leaf, a pooled upstream connection, and
    // two client connections that stay open.
    let mut tunnel = idle_tunnel(&proxy, &tls, &upstream, &mut connections).await;
    let _plain = idle_plain_connection(&proxy, &mut connections).await;
    tokio::time::sleep(SETTLE).await;

    let (wake_ups, cpu, report) = watch_idle(&proxy).await;
    eprintln!("idle proxy: {report}");
    let allowed = MAX_WAKE_UPS_PER_SECOND * WINDOW.as_secs();
    assert!(
        wake_ups <= allowed,
        "an idle proxy woke up more than {MAX_WAKE_UPS_PER_SECOND}/s: {report}"
    );
    assert!(
        cpu <= MAX_IDLE_CPU_TICKS,
        "an idle proxy used CPU: {report}"
    );
    // The connections were idle, not dead.
    let authority = format!("localhost:{}", upstream.port());
    assert_eq!(tunnel.get("/echo/again", &authority).await, 200);
    assert!(proxy.stop(), "SIGTERM exits 0");
}

/// The epoch ticker parks while no policy call runs; the first call after a long
/// idle period must still be stopped at its deadline — not before its timeout, and
/// not much after. (A ticker that stayed parked would let it run forever: the call
/// runs on a thread, so that fails here instead of hanging.)
#[test]
fn a_runaway_policy_after_a_long_idle_period_is_stopped_at_its_deadline() {
    let runtime = test_runtime();
    let timeout = runtime.config().decide_timeout;
    let generation = misbehave(&runtime, r#"{"mode":"ok"}"#, MapSecrets::default());
    let (done, finished) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let mut took = Vec::new();
        for idle in [
            Duration::from_millis(1500),
            Duration::ZERO,
            Duration::from_millis(700),
        ] {
            std::thread::sleep(idle);
            let started = Instant::now();
            let verdict = generation.evaluate(&get("loop.test"));
            took.push((idle, started.elapsed(), format!("{verdict:?}")));
        }
        done.send(took).unwrap();
    });
    let took = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("a runaway decide() was not stopped");
    worker.join().unwrap();
    for (idle, elapsed, verdict) in &took {
        eprintln!("after {idle:?} idle: stopped after {elapsed:?}");
        assert!(verdict.contains("timed out"), "{verdict}");
        assert!(
            *elapsed >= timeout,
            "stopped after {elapsed:?}, before its {timeout:?} timeout"
        );
        // The deadline is timeout + at most one tick (10 ms); the rest is slack for
        // a busy machine.
        assert!(
            *elapsed < timeout + Duration::from_millis(500),
            "stopped only after {elapsed:?} (timeout {timeout:?})"
        );
    }
    assert_eq!(PolicyStats::get(&runtime.stats().timeouts), 3);
}

/// How many idle tunnels [`memory_per_idle_keep_alive_tunnel`] opens.
const TUNNELS: usize = 300;

/// The memory an idle keep-alive tunnel (CONNECT, TLS with a minted leaf, one
/// request, then nothing) costs the proxy: VmRSS before and after opening
/// [`TUNNELS`] of them, after a warm-up that mints the leaf and pools the upstream
/// connection. Then the same idle check as above with all of them open. Run by
/// `scripts/bench-idle.sh` on the release binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (~15 s); scripts/bench-idle.sh runs it on the release binary"]
async fn memory_per_idle_keep_alive_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions {
        record_requests: false,
        ..UpstreamOptions::default()
    })
    .await;
    let proxy = start_proxy(&upstream, dir.path());
    let tls = tls_config(&proxy);
    let mut connections = JoinSet::new();
    let mut tunnels = Vec::new();
    for _ in 0..8 {
        tunnels.push(idle_tunnel(&proxy, &tls, &upstream, &mut connections).await);
    }
    tokio::time::sleep(SETTLE).await;
    let before = proxy.usage();
    for _ in 0..TUNNELS {
        tunnels.push(idle_tunnel(&proxy, &tls, &upstream, &mut connections).await);
    }
    tokio::time::sleep(SETTLE).await;
    let after: Usage = proxy.usage();
    let per_tunnel = (after.rss_kib.saturating_sub(before.rss_kib)) as f64 / TUNNELS as f64;
    let (wake_ups, cpu, report) = watch_idle(&proxy).await;
    println!(
        "{TUNNELS} idle keep-alive tunnels: VmRSS {} -> {} KiB, {per_tunnel:.1} KiB per tunnel",
        before.rss_kib, after.rss_kib
    );
    println!("with them open: {report}");
    // Sanity bounds, far above what is measured, so that a leak fails.
    assert!(per_tunnel < 256.0, "{per_tunnel:.1} KiB per idle tunnel");
    assert!(
        wake_ups <= MAX_WAKE_UPS_PER_SECOND * WINDOW.as_secs(),
        "{report}"
    );
    assert!(cpu <= MAX_IDLE_CPU_TICKS, "{report}");
    drop(tunnels);
}
