//! The data plane through real sockets: an in-process HTTPS upstream that echoes what
//! it received, the proxy in-process on 127.0.0.1:0, and reqwest (HTTP/1.1 and
//! HTTP/2) or hand-written bytes as the agent.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use egress_proxy::proxy::{DENY_HEADER, DENY_HINT, ERROR_HEADER};
use egress_proxy_tests::proxy::{ProxyOptions, TOKEN_VALUE, TestProxy, read_head, standard_proxy};
use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn upstream() -> Upstream {
    Upstream::start(UpstreamOptions::default()).await
}

fn headers_of(echo: &Value) -> Vec<(String, String)> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_owned(),
                pair[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_request_carries_the_injected_credential_not_the_agents() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let response = proxy
        .client(true)
        .get(upstream.url("/echo/a?b=1"))
        .header("authorization", "Bearer agent-made-up-token")
        .header("proxy-authorization", "Basic YWdlbnQ6cHc=")
        .header("x-agent", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/echo/a?b=1");
    let headers = headers_of(&echo);
    let auth: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "authorization")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(auth, [format!("Bearer {TOKEN_VALUE}")]);
    assert!(!headers.iter().any(|(n, _)| n == "proxy-authorization"));
    assert!(headers.iter().any(|(n, v)| n == "x-agent" && v == "kept"));
    // HTTP/2 upstream: no Host header (the authority travels as :authority).
    assert!(
        headers
            .iter()
            .filter(|(n, _)| n == "host")
            .all(|(_, v)| *v == format!("localhost:{}", upstream.port()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_request_never_reaches_upstream_and_gets_the_json_deny() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let response = proxy
        .client(true)
        .get(upstream.url("/status/200"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let reason_header = response.headers()[DENY_HEADER].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "denied_by_egress_policy");
    assert_eq!(body["rule"], "localhost");
    assert_eq!(body["hint"], DENY_HINT);
    let module = proxy.proxy().generation().module().sha256().to_owned();
    assert_eq!(body["policy"], format!("sha256:{module}"));
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("/status/200"), "{reason}");
    assert!(
        reason_header.starts_with("path `/status/200`"),
        "{reason_header}"
    );
    assert_eq!(upstream.hits(), 0, "a denied request reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_an_unrouted_host_is_refused_before_any_tls() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let (status, head, _stream) = proxy.connect("evil.example:443").await;
    assert_eq!(status, 403, "{head}");
    assert!(head.contains("denied_by_egress_policy"), "{head}");
    assert!(head.contains(&format!(
        "{DENY_HEADER}: no route allows host `evil.example`"
    )));
    let (status, _, _) = proxy
        .connect(&format!("localhost:{}", upstream.port() as u32 + 1))
        .await;
    assert_eq!(status, 403, "unrouted port");
    assert_eq!(proxy.proxy().leaf_cache().minted(), 0, "a leaf was minted");
    // reqwest sees the tunnel refused.
    let err = proxy
        .client(true)
        .get("https://evil.example/")
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    for (http1_only, version, upstream_version) in [
        (true, reqwest::Version::HTTP_11, "HTTP/2.0"),
        (false, reqwest::Version::HTTP_2, "HTTP/2.0"),
    ] {
        let response = proxy
            .client(http1_only)
            .post(upstream.url("/echo/v"))
            .body(vec![7u8; 100_000])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), version);
        let echo: Value = response.json().await.unwrap();
        assert_eq!(echo["version"], upstream_version);
        assert_eq!(echo["body_bytes"], 100_000);
        assert!(headers_of(&echo).iter().any(|(n, _)| n == "authorization"));
    }
    // An HTTP/1.1-only upstream is spoken to in HTTP/1.1, even by an HTTP/2 client.
    let h1_upstream = Upstream::start(UpstreamOptions {
        http2: false,
        ..UpstreamOptions::default()
    })
    .await;
    let proxy = standard_proxy(&h1_upstream, dir.path()).await;
    let echo: Value = proxy
        .client(false)
        .get(h1_upstream.url("/echo/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["version"], "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_goes_through_the_same_policy() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions {
        tls: false,
        ..UpstreamOptions::default()
    })
    .await;
    let ca = upstream.ca().write_pem(dir.path());
    // With auth, a plain-HTTP route is refused (credentials only over TLS) ...
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let response = proxy
        .client(true)
        .get(upstream.url("/echo/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert!(body["reason"].as_str().unwrap().contains("https"), "{body}");
    assert_eq!(upstream.hits(), 0);
    // ... without auth, it is forwarded, stripped of the agent's credentials.
    let routes = format!(
        "routes:\n  - host: localhost\n    ports: [{}]\n    path_allowlist: [/echo/]\n",
        upstream.port()
    );
    let proxy = TestProxy::start(ProxyOptions::new(&routes, &ca)).await;
    let client = proxy.client(true);
    let echo: Value = client
        .get(upstream.url("/echo/plain"))
        .header("authorization", "Bearer agent")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/echo/plain");
    assert!(!headers_of(&echo).iter().any(|(n, _)| n == "authorization"));
    let denied = client.get(upstream.url("/elsewhere")).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_form_requests_get_a_clear_400() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let response = reqwest::Client::new()
        .get(format!("{}/echo/", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response.headers()[ERROR_HEADER]
            .to_str()
            .unwrap()
            .contains("not a web server")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_tls_bytes_in_a_tunnel_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let (status, _, mut stream) = proxy
        .connect(&format!("localhost:{}", upstream.port()))
        .await;
    assert_eq!(status, 200);
    stream
        .write_all(b"GET /echo/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("must start with a TLS handshake"), "{head}");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the tunnel stays closed");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_silent_upstream_is_504() {
    let dir = tempfile::tempdir().unwrap();
    let ca = egress_proxy_tests::upstream::TestCa::new().write_pem(dir.path());
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    // A server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let routes = format!(
        "routes:\n  - host: localhost\n    ports: [{closed_port}, {silent_port}]\n  - host: 127.0.0.1\n    ports: [{closed_port}]\n"
    );
    let mut options = ProxyOptions::new(&routes, &ca);
    options.response_timeout = Duration::from_millis(500);
    let proxy = TestProxy::start(options).await;
    let client = proxy.client(true);
    for url in [
        format!("http://localhost:{closed_port}/"),
        format!("https://127.0.0.1:{closed_port}/x"),
    ] {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 502, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "upstream_unavailable");
        assert!(
            body["reason"].as_str().unwrap().contains("connect"),
            "{body}"
        );
    }
    let response = client
        .get(format!("http://localhost:{silent_port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_another_host_inside_a_tunnel_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let port = upstream.port();
    // The tunnel is to localhost:PORT, the inner Host says another port.
    let response = proxy
        .client(true)
        .get(upstream.url("/echo/"))
        .header("host", format!("localhost:{}", port as u32 + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 421);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let client = proxy.client(false);
    let n = 64 << 20;
    let mut response = client
        .get(upstream.url(&format!("/bytes?n={n}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut total = 0usize;
    let mut mismatch = None;
    while let Some(chunk) = response.chunk().await.unwrap() {
        for (i, byte) in chunk.iter().enumerate() {
            if mismatch.is_none() && *byte != ((total + i) % 251) as u8 {
                mismatch = Some(total + i);
            }
        }
        total += chunk.len();
    }
    assert_eq!((total, mismatch), (n, None));
    let upload = client
        .put(upstream.url("/echo/upload"))
        .body(vec![1u8; 16 << 20])
        .send()
        .await
        .unwrap();
    let echo: Value = upload.json().await.unwrap();
    assert_eq!(echo["body_bytes"], 16 << 20);
}

/// A TLS client for a hand-made tunnel, trusting the proxy's CA only.
fn tls_connector(proxy: &TestProxy) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(proxy.ca_path()).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_sni_naming_another_host_than_the_connect_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let authority = format!("localhost:{}", upstream.port());
    let connector = tls_connector(&proxy);
    // Agreeing SNI: the handshake succeeds with a certificate for localhost.
    let (status, _, tcp) = proxy.connect(&authority).await;
    assert_eq!(status, 200);
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    drop(tls);
    // Another SNI through the same CONNECT target: no certificate, no tunnel.
    let (status, _, tcp) = proxy.connect(&authority).await;
    assert_eq!(status, 200);
    let err = connector
        .connect("api.github.com".try_into().unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("alert"), "{err}");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_address_target_gets_an_ip_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream().await;
    let ca = upstream.ca().write_pem(dir.path());
    let routes = format!(
        "routes:\n  - host: 127.0.0.1\n    ports: [{}]\n    path_allowlist: [/echo/]\n",
        upstream.port()
    );
    let proxy = TestProxy::start(ProxyOptions::new(&routes, &ca)).await;
    let echo: Value = proxy
        .client(false)
        .get(format!("https://127.0.0.1:{}/echo/ip", upstream.port()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["path"], "/echo/ip");
}
