//! Real clients through the proxy: the `curl` and `git` binaries, server-sent
//! events, a WebSocket, an upstream proxy chain, graceful shutdown, and the
//! `egress-proxy run` binary itself (its log never holds a credential).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use egress_proxy_tests::process::RunningProxy;
use egress_proxy_tests::proxy::{
    ProxyOptions, TOKEN_NAME, TOKEN_VALUE, TestProxy, standard_proxy, standard_routes,
};
use egress_proxy_tests::upstream::{GIT_README, Upstream, UpstreamOptions, git_bare_repo};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// A command that reaches the network only through `proxy`, whatever the CI
/// environment's proxy variables say.
fn through_proxy(program: &str, proxy: &TestProxy, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HTTPS_PROXY", proxy.url())
        .env("https_proxy", proxy.url())
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0");
    cmd
}

/// Run a client binary off the async runtime (the proxy serves on it meanwhile).
async fn run(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        cmd.output().unwrap_or_else(|e| {
            panic!("cannot run {:?} (is it installed?): {e}", cmd.get_program())
        })
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let mut cmd = through_proxy("curl", &proxy, dir.path());
    cmd.args(["-sS", "--fail", "--http2", "-x", &proxy.url(), "--cacert"])
        .arg(proxy.ca_path())
        .args([
            "-H",
            "Authorization: Bearer agent-token",
            "-w",
            "\n%{http_version}",
        ])
        .arg(upstream.url("/echo/curl"));
    let output = run(cmd).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (body, version) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(version, "2", "curl spoke HTTP/2 to the proxy");
    let echo: Value = serde_json::from_str(body).unwrap();
    let text = echo["headers"].to_string();
    assert!(text.contains(&format!("Bearer {TOKEN_VALUE}")), "{text}");
    assert!(!text.contains("agent-token"), "{text}");

    // A denied path: curl gets the 403 and its JSON.
    let mut cmd = through_proxy("curl", &proxy, dir.path());
    cmd.args(["-sS", "-x", &proxy.url(), "--cacert"])
        .arg(proxy.ca_path())
        .args(["-w", "\n%{http_code}"])
        .arg(upstream.url("/status/204"));
    let output = run(cmd).await;
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.ends_with("\n403"), "{stdout}");
    assert!(stdout.contains("denied_by_egress_policy"), "{stdout}");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clone_over_https_through_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir(&served).unwrap();
    git_bare_repo(&served);
    let upstream = Upstream::start(UpstreamOptions {
        files_root: Some(served),
        ..UpstreamOptions::default()
    })
    .await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let url = upstream.url("/git/repo.git");
    let dest = dir.path().join("clone");
    let mut cmd = through_proxy("git", &proxy, dir.path());
    cmd.env("GIT_SSL_CAINFO", proxy.ca_path())
        .args(["clone", "--quiet", &url])
        .arg(&dest);
    let output = run(cmd).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let readme = std::fs::read_to_string(dest.join("README.md")).unwrap();
    assert_eq!(readme, GIT_README);
    let seen = upstream.seen();
    assert!(
        seen.iter()
            .any(|s| s.path.ends_with("/info/refs?service=git-upload-pack"))
    );
    assert!(
        seen.iter()
            .all(|s| s.header("authorization") == Some(&format!("Bearer {TOKEN_VALUE}"))),
        "every request carried the injected credential"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_while_the_stream_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    for http1_only in [true, false] {
        let mut response = proxy
            .client(http1_only)
            .get(upstream.url("/sse?events=3"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        // The upstream holds event 1 until released: event 0 must arrive on its own.
        let first = response.chunk().await.unwrap().unwrap();
        assert_eq!(&first[..], b"data: event 0\n\n");
        upstream.release_sse(2);
        let mut rest = Vec::new();
        while let Some(chunk) = response.chunk().await.unwrap() {
            rest.extend_from_slice(&chunk);
        }
        assert_eq!(rest, b"data: event 1\n\ndata: event 2\n\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_an_intercepted_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let authority = format!("localhost:{}", upstream.port());
    let tls = proxy.tunnel(&authority, "localhost").await;
    let (mut ws, response) = tokio_tungstenite::client_async(format!("wss://{authority}/ws"), tls)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "through the proxy"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data()[..],
        [0u8, 1, 2, 255]
    );
    ws.close(None).await.unwrap();
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
    assert_eq!(
        seen[0].header("authorization"),
        Some(&*format!("Bearer {TOKEN_VALUE}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_through_an_upstream_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let upstream_ca = upstream.ca().write_pem(dir.path());
    // The outer proxy (B) injects its own token; the inner one (A) dials through B
    // and trusts B's CA, as it would a corporate proxy's.
    let outer = TestProxy::start(
        ProxyOptions::new(&standard_routes(upstream.port()), &upstream_ca)
            .secret(TOKEN_NAME, "outer-token"),
    )
    .await;
    let mut options = ProxyOptions::new(&standard_routes(upstream.port()), outer.ca_path())
        .secret(TOKEN_NAME, TOKEN_VALUE);
    options.upstream_proxy = Some(outer.url());
    let inner = TestProxy::start(options).await;
    let echo: Value = inner
        .client(true)
        .get(upstream.url("/echo/chained"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/echo/chained");
    assert_eq!(
        upstream.seen()[0].header("authorization"),
        Some("Bearer outer-token")
    );
    assert_eq!(
        outer.proxy().leaf_cache().minted(),
        1,
        "the chain went through the outer proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_drains_in_flight_streams() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let mut proxy = standard_proxy(&upstream, dir.path()).await;
    let mut response = proxy
        .client(true)
        .get(upstream.url("/sse?events=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        &response.chunk().await.unwrap().unwrap()[..],
        b"data: event 0\n\n"
    );
    let serving = proxy.begin_shutdown();
    // New connections are refused once the listener is gone.
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(proxy.addr()).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener still accepts after shutdown began");
    assert!(
        !serving.is_finished(),
        "shutdown did not wait for the open stream"
    );
    upstream.release_sse(1);
    assert_eq!(
        &response.chunk().await.unwrap().unwrap()[..],
        b"data: event 1\n\n"
    );
    assert!(response.chunk().await.unwrap().is_none());
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("drained")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_binary_serves_logs_every_request_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let upstream_ca = upstream.ca().write_pem(dir.path());
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, standard_routes(upstream.port())).unwrap();
    let state = dir.path().join("state");
    let mut proxy = RunningProxy::start(
        &routes,
        &state,
        &[
            "--log",
            "debug",
            "--upstream-ca",
            upstream_ca.to_str().unwrap(),
        ],
        &[(TOKEN_NAME, TOKEN_VALUE)],
    );
    assert!(
        proxy.ca_path().exists(),
        "the CA was created in the state directory"
    );
    let client = proxy.client();
    let ok = client
        .get(upstream.url("/echo/logged"))
        .header("authorization", "Bearer agent-own-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    ok.bytes().await.unwrap();
    let denied = client
        .get(upstream.url("/status/200"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    denied.bytes().await.unwrap();
    // A download much larger than the proxy's memory streams through in bounded
    // memory: its peak RSS grows by far less than the body.
    let hwm = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .unwrap()
            .to_owned();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let before = hwm();
    let size: u64 = 128 << 20;
    let mut download = client
        .get(upstream.url(&format!("/bytes?n={size}")))
        .send()
        .await
        .unwrap();
    let mut received = 0u64;
    while let Some(chunk) = download.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    assert_eq!(received, size);
    let growth = hwm().saturating_sub(before);
    assert!(
        growth < 32 << 20,
        "peak RSS grew by {growth} bytes for a {size}-byte body"
    );
    drop(client);

    assert!(proxy.stop(), "SIGTERM exits 0");
    let text = proxy.log_text();
    assert!(
        !text.contains(TOKEN_VALUE),
        "the injected secret leaked into the log"
    );
    assert!(
        !text.contains("agent-own-secret"),
        "the agent's credential leaked into the log"
    );
    let access: Vec<Value> = proxy
        .events()
        .into_iter()
        .filter(|e| e["target"] == "egress_proxy::access")
        .collect();
    let summary: Vec<(String, String, u64)> = access
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_owned(),
                e["decision"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("CONNECT".to_owned(), "allow".to_owned(), 200),
            ("GET".to_owned(), "inject".to_owned(), 200),
            ("GET".to_owned(), "deny".to_owned(), 403),
            ("GET".to_owned(), "inject".to_owned(), 200),
        ],
        "{text}"
    );
    let get = &access[1];
    assert_eq!(get["path"], "/echo/logged");
    assert_eq!(get["rule"], "localhost");
    assert!(get["bytes"].as_u64().unwrap() > 0);
    assert!(get["duration_ms"].is_string() || get["duration_ms"].is_number());
    assert_eq!(
        get["client"].as_str().unwrap().split(':').next(),
        Some("127.0.0.1")
    );
}
