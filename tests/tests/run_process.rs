//! The `egress-proxy run` process in its environment: it keeps serving when its log
//! reader goes away.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use egress_proxy_tests::process::RunningProxy;

#[test]
fn a_closed_log_pipe_does_not_stop_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, "routes:\n  - host: a.example\n").unwrap();
    let mut child = Command::new(egress_proxy_tests::proxy_bin())
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--allow-upstream-cidr",
            "127.0.0.1/32",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--routes")
        .arg(&routes)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listen = loop {
        let line = lines.next().expect("proxy started").unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["message"] == "egress-proxy listening" {
            break event["listen"].as_str().unwrap().to_owned();
        }
    };
    drop(lines);
    // Each request writes an access line into the closed pipe.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(&listen).unwrap();
        stream
            .write_all(
                b"GET http://b.example/ HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    }
    assert!(child.try_wait().unwrap().is_none(), "the proxy exited");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `GET` on the admin listener: (status, body).
fn admin_get(admin: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn the_admin_listener_reports_health_readiness_and_the_loaded_policy() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        "routes:\n  - host: api.github.com\n    auth: {scheme: Bearer, token_ref: GH_PAT}\n",
    )
    .unwrap();
    let mut proxy = RunningProxy::start(
        &routes,
        &dir.path().join("state"),
        &[],
        &[("GH_PAT", "never-shown-by-admin")],
    );
    let admin = proxy.admin.clone();
    assert_eq!(
        admin_get(&admin, "GET", "/healthz"),
        (200, "ok\n".to_owned())
    );
    assert_eq!(admin_get(&admin, "GET", "/readyz").0, 200);
    let (status, body) = admin_get(&admin, "GET", "/policy");
    assert_eq!(status, 200);
    let policy: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(policy["generation"], 1);
    assert_eq!(policy["module_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(policy["routes_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(policy["secrets"], serde_json::json!(["GH_PAT"]));
    assert!(policy["last_reload_error"].is_null());
    assert!(!body.contains("never-shown-by-admin"));
    assert_eq!(admin_get(&admin, "POST", "/policy").0, 405);

    // Metrics count what the data plane did.
    let mut stream = TcpStream::connect(&proxy.listen).unwrap();
    stream
        .write_all(
            b"GET http://b.example/ HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    let (status, metrics) = admin_get(&admin, "GET", "/metrics");
    assert_eq!(status, 200);
    for line in [
        "egress_proxy_requests_total{decision=\"deny\",status=\"403\"} 1",
        "egress_proxy_policy_decide_duration_seconds_count 1",
        "egress_proxy_request_duration_seconds_count 1",
        "egress_proxy_policy_generation 1",
        "egress_proxy_policy_traps_total 0",
        "egress_proxy_reloads_failed_total 0",
        "egress_proxy_leaf_certificates_cached 0",
        "egress_proxy_open_connections ",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert_eq!(admin_get(&admin, "GET", "/nothing").0, 404);

    // A bad routes file: the old generation stays, the error is reported.
    std::fs::write(&routes, "routes: [").unwrap();
    proxy.signal("-HUP");
    proxy.wait_for("policy reload failed; the previous generation keeps serving");
    let policy: serde_json::Value =
        serde_json::from_str(&admin_get(&admin, "GET", "/policy").1).unwrap();
    assert_eq!(policy["generation"], 1);
    assert_eq!(policy["reloads"]["failed"], 1);
    let metrics = admin_get(&admin, "GET", "/metrics").1;
    assert!(
        metrics.contains("egress_proxy_reloads_failed_total 1"),
        "{metrics}"
    );
    assert!(
        policy["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("not valid YAML"),
        "{policy}"
    );
}

#[test]
fn bad_configuration_at_start_up_exits_1_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("routes.yaml");
    std::fs::write(&bad, "routes:\n  - host: a.example\n    surprise: true\n").unwrap();
    let module = dir.path().join("policy.wasm");
    std::fs::write(&module, b"not wasm").unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "routes:\n  - host: a.example\n").unwrap();
    for (routes, policy, reason) in [
        (&bad, None, "surprise"),
        (&good, Some(&module), "not a valid WebAssembly component"),
        (&dir.path().join("missing.yaml"), None, "missing.yaml"),
    ] {
        let mut cmd = Command::new(egress_proxy_tests::proxy_bin());
        cmd.args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--allow-upstream-cidr",
            "127.0.0.1/32",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--routes")
        .arg(routes)
        .arg("--state-dir")
        .arg(dir.path().join("state"));
        if let Some(policy) = policy {
            cmd.arg("--policy").arg(policy);
        }
        let output = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(reason), "{reason} in {stderr}");
    }
}
