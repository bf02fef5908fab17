//! Report mode on the real binary: `--enforcement report` forwards what enforce mode
//! denies (logged `would_deny` with rule and reason, no credential injected, the
//! agent's credentials still stripped), yet the address guard, the framing checks and
//! the connection limit still refuse; a per-route `report: true` trials one route
//! while the rest enforce.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use egress_proxy_tests::process::RunningProxy;
use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REPORT_WARNING: &str = "REPORT MODE: the policy's denials are logged as would_deny and the requests FORWARDED; run with --enforcement enforce to enforce the policy";

/// `localhost` injects a token on /echo/ok only; 127.0.0.1 has no route.
fn routes(port: u16, report_route: bool) -> String {
    format!(
        "routes:\n  - host: localhost\n    ports: [{port}]\n    inject_over_http: true\n    path_allowlist: [/echo/ok]\n    auth: {{ scheme: Bearer, token_ref: TOKEN }}\n    report: {report_route}\n"
    )
}

/// Send raw bytes to the proxy's plain listener; the whole answer (the request asks
/// the connection to close).
async fn raw(proxy: &RunningProxy, request: &str) -> String {
    let mut stream = TcpStream::connect(&proxy.listen).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn get(url: &str) -> String {
    format!(
        "GET {url} HTTP/1.1\r\nAuthorization: Bearer agent-own-credential\r\nConnection: close\r\n\r\n"
    )
}

fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn access(proxy: &mut RunningProxy) -> Vec<Value> {
    proxy
        .events()
        .into_iter()
        .filter(|e| e["target"] == "egress_proxy::access")
        .collect()
}

fn start(dir: &std::path::Path, routes_text: &str, extra: &[&str]) -> RunningProxy {
    let routes = dir.join("routes.yaml");
    std::fs::write(&routes, routes_text).unwrap();
    RunningProxy::start(
        &routes,
        &dir.join("state"),
        extra,
        &[("TOKEN", "the-real-token")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_forwards_what_enforce_denies_and_still_refuses_the_unsafe() {
    let upstream = Upstream::start(UpstreamOptions {
        tls: false,
        ..UpstreamOptions::default()
    })
    .await;
    let port = upstream.port();
    let unrouted = format!("http://127.0.0.1:{port}/echo/unrouted");
    let off_path = format!("http://localhost:{port}/echo/no");
    let allowed = format!("http://localhost:{port}/echo/ok");

    // Enforce mode: both are denied, the allowed one injected.
    let dir = tempfile::tempdir().unwrap();
    let mut enforce = start(dir.path(), &routes(port, false), &[]);
    assert_eq!(status(&raw(&enforce, &get(&unrouted)).await), 403);
    assert_eq!(status(&raw(&enforce, &get(&off_path)).await), 403);
    assert_eq!(status(&raw(&enforce, &get(&allowed)).await), 200);
    assert_eq!(upstream.hits(), 1);
    assert!(enforce.stop());
    assert!(!enforce.log_text().contains(REPORT_WARNING));

    // Report mode: the same requests are forwarded.
    let dir = tempfile::tempdir().unwrap();
    let mut report = start(
        dir.path(),
        &routes(port, false),
        &["--enforcement", "report", "--max-connections", "2"],
    );
    assert!(
        report.log_text().contains(REPORT_WARNING),
        "warned at start"
    );
    for url in [&unrouted, &off_path, &allowed] {
        let response = raw(&report, &get(url)).await;
        assert_eq!(status(&response), 200, "{url}: {response}");
    }
    let seen = upstream.seen();
    let forwarded = &seen[seen.len() - 3..];
    // The agent's credential never reaches the upstream; the token is injected only
    // where the policy injects.
    assert_eq!(forwarded[0].header("authorization"), None);
    assert_eq!(forwarded[1].header("authorization"), None);
    assert_eq!(
        forwarded[2].header("authorization"),
        Some("Bearer the-real-token")
    );

    // Still refused: a private address (the guard), ambiguous framing, the
    // connection limit.
    let hits = upstream.hits();
    let private = raw(&report, &get("http://10.0.0.1/")).await;
    assert_eq!(status(&private), 403, "{private}");
    assert!(private.contains("destination_not_allowed"), "{private}");
    let smuggle = format!(
        "POST {unrouted} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    );
    let framing = raw(&report, &smuggle).await;
    assert_eq!(status(&framing), 400, "{framing}");
    assert!(framing.contains("ambiguous_framing"), "{framing}");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&report.listen).await.unwrap();
        stream
            .write_all(
                format!("GET {allowed} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(stream);
    }
    let over = raw(&report, &get(&unrouted)).await;
    assert_eq!(status(&over), 503, "{over}");
    assert_eq!(
        upstream.hits(),
        hits + 2,
        "only the two held requests went up"
    );
    drop(held);

    // Loud: /policy and every metric say so; a reload warns again.
    let admin = reqwest::Client::builder().no_proxy().build().unwrap();
    let policy: Value = admin
        .get(format!("http://{}/policy", report.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(policy["enforcement"], "report");
    let metrics = admin
        .get(format!("http://{}/metrics", report.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"egress_proxy_requests_total{enforcement="report",decision="would_deny",status="200"} 2"#),
        "{metrics}"
    );
    report.signal("-HUP");
    let warned = report.wait_for(REPORT_WARNING);
    assert_eq!(warned["generation"], 2);
    assert!(report.stop());

    let lines = access(&mut report);
    let would: Vec<&Value> = lines
        .iter()
        .filter(|e| e["decision"] == "would_deny")
        .collect();
    assert_eq!(would.len(), 2, "{lines:?}");
    assert_eq!(would[0]["rule"], "-");
    assert!(
        would[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("403 no route allows host `127.0.0.1`"),
        "{:?}",
        would[0]
    );
    assert_eq!(would[1]["rule"], "localhost");
    assert!(
        would[1]["reason"]
            .as_str()
            .unwrap()
            .contains("is not in the allowlist"),
        "{:?}",
        would[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_route_is_trialled_while_the_rest_enforce() {
    let upstream = Upstream::start(UpstreamOptions {
        tls: false,
        ..UpstreamOptions::default()
    })
    .await;
    let port = upstream.port();
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = start(dir.path(), &routes(port, true), &[]);
    let off_path = raw(&proxy, &get(&format!("http://localhost:{port}/echo/no"))).await;
    assert_eq!(status(&off_path), 200, "{off_path}");
    assert_eq!(
        upstream.seen()[0].header("authorization"),
        None,
        "not injected"
    );
    let ok = raw(&proxy, &get(&format!("http://localhost:{port}/echo/ok"))).await;
    assert_eq!(status(&ok), 200, "{ok}");
    assert_eq!(
        upstream.seen()[1].header("authorization"),
        Some("Bearer the-real-token")
    );
    // Another host has no route: enforced.
    let unrouted = raw(&proxy, &get(&format!("http://127.0.0.1:{port}/echo/x"))).await;
    assert_eq!(status(&unrouted), 403, "{unrouted}");
    assert_eq!(upstream.hits(), 2);
    assert!(proxy.stop());
    let lines = access(&mut proxy);
    let decisions: Vec<&str> = lines
        .iter()
        .map(|e| e["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["would_deny", "inject", "deny"], "{lines:?}");
    assert_eq!(lines[0]["rule"], "localhost");
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("403 path `/echo/no` is not in the allowlist"),
        "{:?}",
        lines[0]
    );
}
