//! Secrets hygiene of the `run` binary: an injected token never appears in its log at
//! any level, in a response the proxy writes itself (denials, refusals, upstream
//! errors), in `/metrics` or in `/policy`; the CA key it creates is mode 0600, and a
//! key that group or others can read is warned about at start.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use egress_proxy_tests::process::RunningProxy;
use egress_proxy_tests::proxy::{TOKEN_NAME, TOKEN_VALUE, standard_routes};
use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};

/// Everything, at trace level, but the policy compiler's per-function chatter.
const TRACE_EVERYTHING: &str = "trace,cranelift_codegen=info,cranelift_frontend=info,regalloc2=info,wasmtime_cranelift=info,wasmtime=info";

/// A raw request to `addr`; the whole response.
fn raw(addr: &str, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_leaves_the_proxy_except_in_the_upstream_request() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let upstream_ca = upstream.ca().write_pem(dir.path());
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        format!(
            "{}  - host: 127.0.0.1\n",
            standard_routes(upstream.port()).replace(
                &format!("ports: [{}]", upstream.port()),
                &format!("ports: [{}, {closed_port}]", upstream.port())
            )
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let mut proxy = RunningProxy::start(
        &routes,
        &state,
        &[
            "--log",
            TRACE_EVERYTHING,
            "--upstream-ca",
            upstream_ca.to_str().unwrap(),
        ],
        &[(TOKEN_NAME, TOKEN_VALUE)],
    );
    let key = state.join("ca/ca.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pem = std::fs::read(state.join("ca/ca.crt")).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .proxy(reqwest::Proxy::all(format!("http://{}", proxy.listen)).unwrap())
        .build()
        .unwrap();

    // The one place the token goes: the upstream request.
    let allowed = client.get(upstream.url("/echo/x")).send().await.unwrap();
    assert_eq!(allowed.status(), 200);
    allowed.bytes().await.unwrap();
    assert_eq!(
        upstream.seen()[0].header("authorization"),
        Some(format!("Bearer {TOKEN_VALUE}").as_str())
    );

    // Responses the proxy writes itself.
    let mut own_responses = Vec::new();
    for (url, status) in [
        (upstream.url("/status/200"), 403),
        (format!("https://localhost:{closed_port}/echo/x"), 502),
    ] {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), status, "{url}");
        own_responses.push(format!("{:?}", response.headers()));
        own_responses.push(response.text().await.unwrap());
    }
    let port = upstream.port();
    let listen = proxy.listen.clone();
    let admin = proxy.admin.clone();
    for (request, status) in [
        // Injection is TLS-only: plain HTTP is denied.
        (
            format!(
                "GET http://localhost:{port}/echo/x HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
            ),
            "403",
        ),
        // Bad requests.
        (
            format!("GET http://localhost:{port}/echo/..%2f HTTP/1.1\r\nConnection: close\r\n\r\n"),
            "400",
        ),
        (
            "GET /echo/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            "400",
        ),
        // The admin listener through the proxy: refused, though 127.0.0.1 is routed.
        (
            format!("GET http://{admin}/policy HTTP/1.1\r\nConnection: close\r\n\r\n"),
            "403",
        ),
    ] {
        let response = raw(&listen, &request);
        assert_eq!(&response[9..12], status, "{request}: {response}");
        own_responses.push(response);
    }
    assert!(
        own_responses
            .last()
            .unwrap()
            .contains("the egress proxy itself")
    );
    for response in &own_responses {
        assert!(!response.contains(TOKEN_VALUE), "{response}");
    }

    // The admin endpoints.
    for path in ["/metrics", "/policy", "/healthz", "/readyz"] {
        let response = raw(
            &admin,
            &format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"),
        );
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        assert!(!response.contains(TOKEN_VALUE), "{path}: {response}");
    }

    assert!(proxy.stop(), "SIGTERM exits 0");
    let log = proxy.log_text();
    assert!(
        log.contains("\"level\":\"TRACE\""),
        "the log is not at trace level"
    );
    assert!(!log.contains(TOKEN_VALUE), "the token is in the log");
    drop(proxy);

    // The same CA, its key now readable by others: warned about at start.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut proxy = RunningProxy::start(
        &routes,
        &dir.path().join("other-state"),
        &[
            "--ca-cert",
            state.join("ca/ca.crt").to_str().unwrap(),
            "--ca-key",
            key.to_str().unwrap(),
        ],
        &[(TOKEN_NAME, TOKEN_VALUE)],
    );
    let log = proxy.log_text();
    assert!(
        log.contains("the CA private key is readable by group or others"),
        "{log}"
    );
}
