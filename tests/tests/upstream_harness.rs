//! Smoke tests for the test upstream (`egress_proxy_tests::upstream`), talking to it
//! directly, without the proxy.

#![expect(
    clippy::expect_used,
    reason = "test helpers: a broken set-up should fail the test loudly"
)]

use std::process::Command;
use std::sync::Arc;

use egress_proxy_tests::upstream::{
    BYTES_PERIOD, GIT_README, Upstream, UpstreamOptions, git_bare_repo,
};
use futures_util::{SinkExt, StreamExt};
use reqwest::{StatusCode, Version};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A client that trusts only `upstream`'s CA and ignores proxy settings.
fn client(upstream: &Upstream) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(upstream.ca().cert_pem().as_bytes())
        .expect("CA certificate parses");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .no_proxy()
}

async fn plain_upstream() -> Upstream {
    Upstream::start(UpstreamOptions {
        tls: false,
        ..UpstreamOptions::default()
    })
    .await
}

/// The response body as JSON.
async fn json(response: reqwest::Response) -> Value {
    let body = response.bytes().await.expect("response body");
    serde_json::from_slice(&body).expect("JSON body")
}

/// Reads from `response` until `buffer` ends with `want`, panicking if the body ends.
async fn read_until(response: &mut reqwest::Response, buffer: &mut String, want: &str) {
    while !buffer.ends_with(want) {
        let chunk = response
            .chunk()
            .await
            .expect("body chunk")
            .expect("body ended early");
        buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8 body"));
    }
}

#[tokio::test]
async fn echo_over_http1() {
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let client = client(&upstream).http1_only().build().unwrap();

    let response = client
        .post(upstream.url("/echo/a/b?x=1"))
        .header("X-Test", "one")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "echo answers JSON"
    );
    let echo = json(response).await;
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo/a/b?x=1");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["body_bytes"], 5);
    let headers = echo["headers"].as_array().unwrap();
    assert!(
        headers.contains(&serde_json::json!(["x-test", "one"])),
        "{headers:?}"
    );
    assert!(
        headers.contains(&serde_json::json!([
            "host",
            format!("localhost:{}", upstream.port())
        ])),
        "{headers:?}"
    );
}

#[tokio::test]
async fn alpn_picks_http2_by_default() {
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let client = client(&upstream).build().unwrap();

    let response = client.get(upstream.url("/echo")).send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    let echo = json(response).await;
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["path"], "/echo");
    assert_eq!(echo["body_bytes"], 0);
}

#[tokio::test]
async fn http2_off_means_http1_only() {
    let upstream = Upstream::start(UpstreamOptions {
        http2: false,
        ..UpstreamOptions::default()
    })
    .await;
    let client = client(&upstream).build().unwrap();

    let response = client.get(upstream.url("echo")).send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
    let echo = json(response).await;
    assert_eq!(echo["version"], "HTTP/1.1");
}

#[tokio::test]
async fn plain_echo() {
    let upstream = plain_upstream().await;
    assert!(upstream.url("/echo").starts_with("http://localhost:"));
    let client = client(&upstream).build().unwrap();

    let response = client
        .put(upstream.url("/echo"))
        .body(vec![0_u8; 70_000])
        .send()
        .await
        .unwrap();
    let echo = json(response).await;
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["body_bytes"], 70_000);
}

#[tokio::test]
async fn seen_records_every_request_in_order() {
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let client = client(&upstream).http1_only().build().unwrap();
    assert_eq!(upstream.hits(), 0);

    for path in ["/echo?first", "/nowhere", "/status/204"] {
        client
            .get(upstream.url(path))
            .header("X-Order", path)
            .send()
            .await
            .unwrap();
    }
    let seen = upstream.seen();
    assert_eq!(upstream.hits(), 3);
    let paths: Vec<_> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/echo?first", "/nowhere", "/status/204"]);
    let last = &seen[2];
    assert_eq!(last.method, "GET");
    assert_eq!(last.version, http::Version::HTTP_11);
    assert_eq!(last.header("x-order"), Some("/status/204"));
    assert!(
        last.headers
            .iter()
            .all(|(name, _)| *name == name.to_lowercase()),
        "{:?}",
        last.headers
    );
}

#[tokio::test]
async fn status_redirect_and_not_found() {
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let client = client(&upstream)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let teapot = client
        .get(upstream.url("/status/418"))
        .send()
        .await
        .unwrap();
    assert_eq!(teapot.status(), StatusCode::IM_A_TEAPOT);
    assert!(teapot.bytes().await.unwrap().is_empty());

    let bad = client
        .get(upstream.url("/status/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let redirect = client
        .get(upstream.url("/redirect?to=https%3A%2F%2Fexample.com%2Fnext%3Fa%3D1"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), StatusCode::FOUND);
    assert_eq!(
        redirect.headers()["location"],
        "https://example.com/next?a=1"
    );

    let missing = client.get(upstream.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sse_sends_first_event_then_waits_for_the_gate() {
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let client = client(&upstream).build().unwrap();

    let mut response = client
        .get(upstream.url("/sse?events=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-cache");

    // Event 0 arrives while the stream is held open by the gate.
    let mut received = String::new();
    read_until(&mut response, &mut received, "data: event 0\n\n").await;
    assert_eq!(received, "data: event 0\n\n");

    upstream.release_sse(2);
    read_until(&mut response, &mut received, "data: event 2\n\n").await;
    assert_eq!(
        received,
        "data: event 0\n\ndata: event 1\n\ndata: event 2\n\n"
    );
    // The stream ends (HTTP/2 may end it with an empty DATA frame).
    while let Some(rest) = response.chunk().await.unwrap() {
        assert!(rest.is_empty(), "nothing after the last event: {rest:?}");
    }
}

#[tokio::test]
async fn bytes_streams_exactly_n_pattern_bytes() {
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    for client in [
        client(&upstream).http1_only().build().unwrap(),
        client(&upstream).build().unwrap(),
    ] {
        let mut response = client
            .get(upstream.url("/bytes?n=1000000"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["content-length"], "1000000");
        let mut offset: u64 = 0;
        while let Some(chunk) = response.chunk().await.unwrap() {
            for byte in chunk {
                assert_eq!(byte, (offset % BYTES_PERIOD) as u8, "byte {offset}");
                offset += 1;
            }
        }
        assert_eq!(offset, 1_000_000);

        let empty = client.get(upstream.url("/bytes?n=0")).send().await.unwrap();
        assert!(empty.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn websocket_echo_round_trip() {
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(upstream.ca().roots())
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(upstream.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();

    let url = format!("wss://localhost:{}/ws", upstream.port());
    let (mut ws, response) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![1_u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1_u8, 2, 3])
    );

    ws.close(None).await.unwrap();
    // The server answers the close; the stream then ends.
    while let Some(message) = ws.next().await {
        assert!(message.unwrap().is_close());
    }

    assert_eq!(upstream.seen()[0].path, "/ws");
}

#[tokio::test]
async fn websocket_without_upgrade_is_400() {
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let client = client(&upstream).build().unwrap();
    let response = client.get(upstream.url("/ws")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn git_files_are_served() {
    let root = tempfile::tempdir().unwrap();
    let bare = git_bare_repo(root.path());
    assert_eq!(bare, root.path().join("repo.git"));
    let upstream = Upstream::start(UpstreamOptions {
        files_root: Some(root.path().to_path_buf()),
        ..UpstreamOptions::default()
    })
    .await;
    let client = client(&upstream).build().unwrap();

    let head = client
        .get(upstream.url("/git/repo.git/HEAD"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-type"], "application/octet-stream");
    assert_eq!(head.text().await.unwrap(), "ref: refs/heads/main\n");

    // Git asks for the smart protocol first; the static file answers it.
    let refs = client
        .get(upstream.url("/git/repo.git/info/refs?service=git-upload-pack"))
        .send()
        .await
        .unwrap();
    assert_eq!(refs.status(), StatusCode::OK);
    assert!(refs.text().await.unwrap().contains("\trefs/heads/main\n"));

    let head_request = client
        .head(upstream.url("/git/repo.git/HEAD"))
        .send()
        .await
        .unwrap();
    assert_eq!(head_request.status(), StatusCode::OK);
    assert_eq!(head_request.headers()["content-length"], "21");

    for (path, status) in [
        ("/git/repo.git/missing", StatusCode::NOT_FOUND),
        ("/git/repo.git", StatusCode::NOT_FOUND),
    ] {
        let response = client.get(upstream.url(path)).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    let post = client
        .post(upstream.url("/git/repo.git/HEAD"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn git_refuses_dot_dot_segments() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("inside"), "x").unwrap();
    let upstream = Upstream::start(UpstreamOptions {
        tls: false,
        files_root: Some(root.path().join("sub")),
        ..UpstreamOptions::default()
    })
    .await;

    // Sent raw: HTTP clients would normalise the `..` away.
    let mut tcp = TcpStream::connect(upstream.addr()).await.unwrap();
    tcp.write_all(b"GET /git/../inside HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    assert_eq!(upstream.seen()[0].path, "/git/../inside");

    let mut tcp = TcpStream::connect(upstream.addr()).await.unwrap();
    tcp.write_all(
        b"GET /git/%2E%2e/inside HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
}

#[tokio::test]
async fn git_clone_over_dumb_http() {
    let root = tempfile::tempdir().unwrap();
    git_bare_repo(root.path());
    let upstream = Upstream::start(UpstreamOptions {
        files_root: Some(root.path().to_path_buf()),
        ..UpstreamOptions::default()
    })
    .await;
    let scratch = tempfile::tempdir().unwrap();
    let ca_file = upstream.ca().write_pem(scratch.path());
    assert!(ca_file.ends_with("upstream-ca.crt"));
    let url = upstream.url("/git/repo.git");
    let clone = scratch.path().join("clone");

    let mut git = Command::new("git");
    git.args(["clone", "--quiet", &url])
        .arg(&clone)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", scratch.path())
        .env("GIT_SSL_CAINFO", &ca_file)
        .env("GIT_TERMINAL_PROMPT", "0");
    for proxy in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        git.env_remove(proxy);
    }
    let output = tokio::task::spawn_blocking(move || git.output())
        .await
        .unwrap()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git clone failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let readme = std::fs::read_to_string(clone.join("README.md")).unwrap();
    assert_eq!(readme, GIT_README);
    assert!(
        upstream
            .seen()
            .iter()
            .any(|seen| seen.path == "/git/repo.git/info/refs?service=git-upload-pack")
    );
}

#[tokio::test]
async fn dropping_the_upstream_stops_everything() {
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let addr = upstream.addr();
    let client = client(&upstream).http1_only().build().unwrap();
    let mut response = client.get(upstream.url("/sse")).send().await.unwrap();
    let mut received = String::new();
    read_until(&mut response, &mut received, "data: event 0\n\n").await;

    drop(upstream);
    assert!(
        !matches!(response.chunk().await, Ok(Some(_))),
        "the open stream is cut"
    );
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn shutdown_waits_for_tasks() {
    let upstream = plain_upstream().await;
    let addr = upstream.addr();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(upstream.url("/echo"))
        .send()
        .await
        .unwrap();
    upstream.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}
