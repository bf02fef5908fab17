//! The shadow policy on the real binary: a shadow that denies everything changes
//! nothing for clients while every request is counted as a disagreement; it reloads
//! like the live policy; a shadow that traps or loops is counted and harmless, and
//! when its calls are all busy requests are dropped from shadowing, not delayed.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;
use std::time::{Duration, Instant};

use egress_proxy_tests::MISBEHAVE_WASM;
use egress_proxy_tests::process::RunningProxy;
use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn plain_upstream() -> Upstream {
    Upstream::start(UpstreamOptions {
        tls: false,
        ..UpstreamOptions::default()
    })
    .await
}

/// One plain-HTTP GET through the proxy; its status.
async fn get(proxy: &RunningProxy, url: &str) -> u16 {
    let mut stream = TcpStream::connect(&proxy.listen).await.unwrap();
    stream
        .write_all(format!("GET {url} HTTP/1.1\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn admin() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn policy(proxy: &RunningProxy) -> Value {
    admin()
        .get(format!("http://{}/policy", proxy.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn metrics(proxy: &RunningProxy) -> String {
    admin()
        .get(format!("http://{}/metrics", proxy.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first metric line starting with `prefix`, 0 if none.
fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Poll the metrics until `prefix` reaches `want` (the shadow answers off the
/// request path, so its counts can lag the responses a little).
async fn wait_metric(proxy: &RunningProxy, prefix: &str, want: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(proxy).await;
        if metric(&text, prefix) >= want || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_all_shadow_changes_nothing_and_every_request_disagrees() {
    let upstream = plain_upstream().await;
    let port = upstream.port();
    let dir = tempfile::tempdir().unwrap();
    let routes = write(
        dir.path(),
        "routes.yaml",
        &format!("routes:\n  - host: localhost\n    ports: [{port}]\n"),
    );
    let shadow_dir = dir.path().join("shadow");
    std::fs::create_dir(&shadow_dir).unwrap();
    let shadow = write(&shadow_dir, "routes.yaml", "routes: []\n");
    let mut proxy = RunningProxy::start(
        &routes,
        &dir.path().join("state"),
        &["--shadow-routes", shadow.to_str().unwrap()],
        &[],
    );
    for i in 0..5 {
        assert_eq!(
            get(&proxy, &format!("http://localhost:{port}/echo/{i}")).await,
            200
        );
    }
    assert_eq!(upstream.hits(), 5, "every request went through");
    let text = wait_metric(
        &proxy,
        r#"egress_proxy_shadow_disagreements_total{live="allow",shadow="deny"}"#,
        5,
    )
    .await;
    assert_eq!(
        metric(
            &text,
            r#"egress_proxy_shadow_disagreements_total{live="allow",shadow="deny"}"#
        ),
        5,
        "{text}"
    );
    assert_eq!(
        metric(&text, "egress_proxy_shadow_decisions_total"),
        5,
        "{text}"
    );
    assert_eq!(
        metric(&text, "egress_proxy_shadow_faults_total"),
        0,
        "{text}"
    );
    let status = policy(&proxy).await;
    assert_eq!(status["generation"], 1, "{status}");
    assert_eq!(status["shadow"]["generation"], 1, "{status}");
    assert_eq!(
        status["shadow"]["disagreements_since_loaded"],
        serde_json::json!([{"live": "allow", "shadow": "deny", "count": 5}]),
        "{status}"
    );

    // The shadow reloads on its own file change; its counts since loading restart.
    std::fs::write(
        &shadow,
        format!("routes:\n  - host: localhost\n    ports: [{port}]\n"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while policy(&proxy).await["shadow"]["generation"] != 2 {
        assert!(Instant::now() < deadline, "the shadow did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = policy(&proxy).await;
    assert_eq!(
        status["generation"], 1,
        "the live policy is untouched: {status}"
    );
    assert_eq!(
        status["shadow"]["disagreements_since_loaded"],
        serde_json::json!([])
    );
    assert_eq!(
        get(&proxy, &format!("http://localhost:{port}/echo/after")).await,
        200
    );
    wait_metric(&proxy, "egress_proxy_shadow_decisions_total", 6).await;
    assert!(proxy.stop());

    let access: Vec<Value> = proxy
        .events()
        .into_iter()
        .filter(|e| e["target"] == "egress_proxy::access")
        .collect();
    let lines: Vec<&Value> = access.iter().filter(|e| e["message"] == "access").collect();
    assert_eq!(lines.len(), 6, "{access:?}");
    for line in &lines[..5] {
        assert_eq!(line["decision"], "allow");
        assert_eq!(line["rule"], "localhost");
        match line["shadow"].as_str().unwrap() {
            "disagree" => {
                assert_eq!(line["shadow_decision"], "deny");
                assert_eq!(line["shadow_rule"], "-");
            }
            // Written before the shadow answered: the shadow writes its own line.
            "pending" => assert!(
                access.iter().any(|e| e["message"] == "shadow"
                    && e["path"] == line["path"]
                    && e["shadow_decision"] == "deny"),
                "{access:?}"
            ),
            other => panic!("shadow = {other}: {line}"),
        }
    }
    assert!(
        ["agree", "pending"].contains(&lines[5]["shadow"].as_str().unwrap()),
        "{}",
        lines[5]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_traps_or_loops_is_counted_and_never_delays_a_request() {
    let upstream = plain_upstream().await;
    let port = upstream.port();
    let dir = tempfile::tempdir().unwrap();
    let routes = write(
        dir.path(),
        "routes.yaml",
        &format!(
            "routes:\n  - host: loop.test\n    ports: [{port}]\n  - host: panic.test\n    ports: [{port}]\n"
        ),
    );
    let shadow = write(dir.path(), "shadow.json", "{}");
    let to_loop = format!("loop.test:{port}:127.0.0.1:{port}");
    let to_panic = format!("panic.test:{port}:127.0.0.1:{port}");
    // A shadow call that loops runs until this deadline (2 s), long after the request
    // it shadows has been answered.
    let mut proxy = RunningProxy::start(
        &routes,
        &dir.path().join("state"),
        &[
            "--shadow-routes",
            shadow.to_str().unwrap(),
            "--shadow-policy",
            MISBEHAVE_WASM,
            "--shadow-queue",
            "8",
            "--policy-timeout",
            "2s",
            "--connect-to",
            &to_loop,
            "--connect-to",
            &to_panic,
        ],
        &[],
    );
    assert_eq!(
        get(&proxy, &format!("http://panic.test:{port}/echo/p")).await,
        200
    );
    let text = wait_metric(&proxy, "egress_proxy_shadow_faults_total", 1).await;
    assert_eq!(
        metric(&text, "egress_proxy_shadow_faults_total"),
        1,
        "{text}"
    );
    assert_eq!(
        metric(&text, "egress_proxy_shadow_disagreements_total"),
        0,
        "{text}"
    );

    // Ten requests whose shadow loops: all answered at once; eight shadow calls are
    // queued or run (to their deadline, two at a time), the rest are dropped from
    // shadowing.
    let started = Instant::now();
    for i in 0..10 {
        assert_eq!(
            get(&proxy, &format!("http://loop.test:{port}/echo/{i}")).await,
            200
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "the requests waited for the shadow: {took:?}"
    );
    assert_eq!(upstream.hits(), 11);
    let text = wait_metric(&proxy, "egress_proxy_shadow_faults_total", 9).await;
    assert_eq!(
        metric(&text, "egress_proxy_shadow_faults_total"),
        9,
        "{text}"
    );
    assert_eq!(
        metric(&text, "egress_proxy_shadow_dropped_total"),
        2,
        "{text}"
    );
    // The live policy never faulted.
    assert_eq!(
        metric(&text, "egress_proxy_policy_traps_total"),
        0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "egress_proxy_policy_timeouts_total"),
        0,
        "{text}"
    );
    let status = policy(&proxy).await;
    assert_eq!(status["shadow"]["faults"], 9, "{status}");
    assert_eq!(status["shadow"]["dropped"], 2, "{status}");
    assert!(proxy.stop());
}
