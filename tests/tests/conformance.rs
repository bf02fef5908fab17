//! The bypass conformance suite: one test per class of trick an agent (or a prompt
//! injection steering it) could use to reach somewhere the policy does not allow, or
//! to get a credential sent where it should not go. Each test asserts that the request
//! never reaches the upstream (the test upstream records every request it receives),
//! and where a credential is involved, that it was not sent.
//!
//! Classes, by test name (`bypass_<class>`):
//! path traversal (plain, percent-encoded, double-encoded, encoded slashes,
//! backslashes, `..;`, runs of slashes);
//! host case and trailing dot; IDN and punycode look-alikes; suffix look-alikes
//! against `*.` routes; IP-literal encodings of a routed address and of a private one;
//! host names resolving to private addresses; requests to the proxy itself;
//! Host/SNI/CONNECT mismatches; absolute-form smuggling inside a tunnel; CL/TE and
//! other framing tricks; plain HTTP to a route that injects only over TLS; CONNECT to
//! the IP of a routed host; redirects to another host; header injection through
//! secret values; `Authorization`/`Proxy-Authorization` passed upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::Arc;
use std::time::Duration;

use egress_proxy_tests::proxy::{
    ProxyOptions, TOKEN_NAME, TOKEN_VALUE, TestProxy, standard_proxy, standard_routes,
};
use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

async fn tls_upstream() -> Upstream {
    Upstream::start(UpstreamOptions::default()).await
}

async fn plain_upstream() -> Upstream {
    Upstream::start(UpstreamOptions {
        tls: false,
        ..UpstreamOptions::default()
    })
    .await
}

/// Send raw bytes and read until the peer closes (requests say `Connection: close`).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, raw: &str) -> String {
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to {raw:?}");
    String::from_utf8_lossy(&response).into_owned()
}

/// One request inside a fresh tunnel to `localhost:port`.
async fn in_tunnel(proxy: &TestProxy, port: u16, request_line: &str, extra: &str) -> String {
    let authority = format!("localhost:{port}");
    let mut tls = proxy.tunnel(&authority, "localhost").await;
    let raw = format!("{request_line}\r\nHost: {authority}\r\n{extra}Connection: close\r\n\r\n");
    exchange(&mut tls, &raw).await
}

/// A plain-HTTP request to the proxy (absolute-form, or whatever `raw` is).
async fn plain(proxy: &TestProxy, raw: &str) -> String {
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    exchange(&mut stream, raw).await
}

fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

fn refused(response: &str) -> bool {
    matches!(status(response), 400 | 403 | 421 | 431)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_path_traversal_is_resolved_before_the_policy_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tls_upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let port = upstream.port();
    // Every one of these would climb out of the allowed `/echo/` into `/status/200`.
    for path in [
        "/echo/../status/200",
        "/echo/./../status/200",
        "/echo/%2e%2e/status/200",
        "/echo/%2E%2E/status/200",
        "/echo/.%2e/status/200",
        "/echo/..%2fstatus/200",
        "/echo/..%2Fstatus/200",
        "/echo/x%2F..%2F..%2Fstatus/200",
        "/echo/..%5cstatus/200",
        "/echo/..;/status/200",
        "/echo/.;/../status/200",
        "/echo//../../status/200",
        // Read as `..` by a server that decodes twice.
        "/echo/%252e%252e/status/200",
        "/echo/%252E%252E/status/200",
        "/echo/..%252fstatus/200",
        // A run of slashes: collapsed by some servers, not by others.
        "//echo/x",
        "/echo//x",
    ] {
        let response = in_tunnel(&proxy, port, &format!("GET {path} HTTP/1.1"), "").await;
        assert!(refused(&response), "{path}: {response}");
    }
    assert_eq!(upstream.hits(), 0, "{:?}", upstream.seen());
    // The path the policy saw is the path the upstream gets.
    let response = in_tunnel(&proxy, port, "GET /status/../echo/%61b HTTP/1.1", "").await;
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(upstream.seen()[0].path, "/echo/ab");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_host_case_and_trailing_dot_name_the_same_route() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tls_upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let port = upstream.port();
    // Case and a trailing dot are the same host: allowed, the credential injected.
    let mut tls = proxy
        .tunnel(&format!("LocalHost.:{port}"), "localhost")
        .await;
    let raw =
        format!("GET /echo/x HTTP/1.1\r\nHost: LOCALHOST.:{port}\r\nConnection: close\r\n\r\n");
    let response = exchange(&mut tls, &raw).await;
    assert_eq!(status(&response), 200, "{response}");
    assert_eq!(
        upstream.seen()[0].header("authorization"),
        Some(format!("Bearer {TOKEN_VALUE}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_idn_punycode_and_suffix_look_alikes_are_not_the_routed_host() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tls_upstream().await;
    let ca = upstream.ca().write_pem(dir.path());
    let routes = format!(
        "{}  - host: \"*.trusted.test\"\n",
        standard_routes(upstream.port())
    );
    let proxy =
        TestProxy::start(ProxyOptions::new(&routes, &ca).secret(TOKEN_NAME, TOKEN_VALUE)).await;
    let port = upstream.port();
    for authority in [
        // Cyrillic "о" in place of the Latin "o": refused as non-ASCII.
        format!("l\u{043e}calhost:{port}"),
        // Its punycode form is simply another host.
        format!("xn--lcalhost-9fg:{port}"),
        format!("localhost.evil.test:{port}"),
        format!("evil-localhost:{port}"),
        // Suffix look-alikes of the wildcard route, and its apex.
        "trusted.test:443".to_owned(),
        "eviltrusted.test:443".to_owned(),
        "trusted.test.evil.test:443".to_owned(),
        "trusted-test:443".to_owned(),
    ] {
        let (status, head, _) = proxy.connect(&authority).await;
        assert!(
            matches!(status, 400 | 403),
            "CONNECT {authority}: {status} {head}"
        );
    }
    assert_eq!(proxy.proxy().leaf_cache().len(), 0, "a leaf was minted");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_ip_literal_encodings_are_normalised_before_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = plain_upstream().await;
    let port = upstream.port();
    let routes = format!(
        "routes:\n  - host: 127.0.0.1\n    ports: [{port}]\n    path_allowlist: [/echo/]\n"
    );
    let ca = tls_upstream().await.ca().write_pem(dir.path());
    let proxy = TestProxy::start(ProxyOptions::new(&routes, &ca)).await;
    // Every spelling of 127.0.0.1 is 127.0.0.1 to the policy: the path rule applies.
    for host in [
        "2130706433",
        "0x7f000001",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "127.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
    ] {
        let denied = plain(
            &proxy,
            &format!("GET http://{host}:{port}/status/200 HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status(&denied), 403, "{host}: {denied}");
        let allowed = plain(
            &proxy,
            &format!("GET http://{host}:{port}/echo/{} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n", host.len()),
        )
        .await;
        assert_eq!(status(&allowed), 200, "{host}: {allowed}");
    }
    assert!(
        upstream
            .seen()
            .iter()
            .all(|seen| seen.path.starts_with("/echo/"))
    );
    // Spellings that are not an address are refused, not guessed at.
    for host in [
        "127.0.0.256",
        "1.2.3.4.5",
        "0x1.0x100.0.1",
        "[fe80::1%25lo]",
    ] {
        let response = plain(
            &proxy,
            &format!("GET http://{host}:{port}/echo/x HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status(&response), 400, "{host}: {response}");
    }
    assert_eq!(upstream.hits(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_private_and_metadata_addresses_are_refused_even_when_routed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls_upstream().await.ca().write_pem(dir.path());
    // The policy allows them; the address guard still refuses.
    let routes = "routes:\n  - host: 169.254.169.254\n  - host: 10.0.0.1\n  - host: fd00::1\n";
    let proxy = TestProxy::start(ProxyOptions::new(routes, &ca)).await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/latest/meta-data/",
        "http://0xa9fea9fe/latest/meta-data/",
        "http://0251.0376.0251.0376/latest/meta-data/",
        "http://169.254.43518/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://10.0.0.1/",
        "http://012.0.0.1/",
        "http://[fd00::1]/",
    ] {
        let response = plain(
            &proxy,
            &format!("GET {url} HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status(&response), 403, "{url}: {response}");
        assert!(
            response.contains("destination_not_allowed"),
            "{url}: {response}"
        );
    }
    for authority in [
        "169.254.169.254:443",
        "[::ffff:a9fe:a9fe]:443",
        "[64:ff9b::a9fe:a9fe]:443",
    ] {
        let (status, head, _) = proxy.connect(authority).await;
        assert_eq!(status, 403, "CONNECT {authority}: {head}");
    }
    assert_eq!(proxy.proxy().leaf_cache().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_a_routed_name_resolving_to_a_private_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tls_upstream().await;
    let ca = upstream.ca().write_pem(dir.path());
    // `localhost` is routed, but it resolves to loopback, which this proxy may not
    // reach (no --allow-upstream-cidr).
    let mut options =
        ProxyOptions::new(&standard_routes(upstream.port()), &ca).secret(TOKEN_NAME, TOKEN_VALUE);
    options.allow_upstream_cidr.clear();
    let proxy = TestProxy::start(options).await;
    let response = in_tunnel(&proxy, upstream.port(), "GET /echo/x HTTP/1.1", "").await;
    assert_eq!(status(&response), 403, "{response}");
    assert!(response.contains("destination_not_allowed"), "{response}");
    assert!(response.contains("loopback"), "{response}");
    assert!(!response.contains(TOKEN_VALUE));
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_requests_to_the_proxy_itself_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tls_upstream().await.ca().write_pem(dir.path());
    let proxy = TestProxy::start(ProxyOptions::new("routes:\n  - host: 127.0.0.1\n", &ca)).await;
    let own = proxy.addr();
    for host in [
        own.to_string(),
        format!("localhost:{}", own.port()),
        format!("2130706433:{}", own.port()),
    ] {
        let response = plain(
            &proxy,
            &format!("GET http://{host}/ HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(refused(&response), "{host}: {response}");
    }
    let response = plain(
        &proxy,
        &format!("GET http://{own}/ HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(response.contains("the egress proxy itself"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_host_sni_and_connect_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tls_upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let port = upstream.port();
    // Inner Host naming another host, or another port, than the tunnel.
    for host in [
        "evil.test".to_owned(),
        format!("localhost:{}", port + 1),
        format!("evil.test:{port}"),
    ] {
        let mut tls = proxy
            .tunnel(&format!("localhost:{port}"), "localhost")
            .await;
        let raw = format!("GET /echo/x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let response = exchange(&mut tls, &raw).await;
        assert_eq!(status(&response), 421, "Host {host}: {response}");
    }
    // SNI naming another host than the CONNECT: no certificate, no handshake.
    let (status_code, _, stream) = proxy.connect(&format!("localhost:{port}")).await;
    assert_eq!(status_code, 200);
    let config = proxy.tls_config(&[]);
    let handshake = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("evil.test").unwrap(), stream)
        .await;
    assert!(handshake.is_err());
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_absolute_form_inside_a_tunnel_naming_another_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tls_upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let port = upstream.port();
    for target in [
        "https://evil.test/echo/x".to_owned(),
        format!("https://evil.test:{port}/echo/x"),
        format!("http://localhost:{port}/echo/x"),
        format!("https://localhost:{}/echo/x", port + 1),
    ] {
        let response = in_tunnel(&proxy, port, &format!("GET {target} HTTP/1.1"), "").await;
        assert_eq!(status(&response), 421, "{target}: {response}");
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_ambiguous_framing_cl_te_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tls_upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let port = upstream.port();
    let authority = format!("localhost:{port}");
    let smuggled = format!("GET /status/200 HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    // Refused outright: conflicting lengths, a non-chunked final transfer coding,
    // obsolete line folding, a space before the colon.
    for head in [
        "Content-Length: 4\r\nContent-Length: 40\r\n".to_owned(),
        "Transfer-Encoding: chunked, identity\r\n".to_owned(),
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n".to_owned(),
        "X-Folded: a\r\n b\r\nContent-Length: 0\r\n".to_owned(),
        "Content-Length : 4\r\n".to_owned(),
        "Content-Length: -1\r\n".to_owned(),
    ] {
        let mut tls = proxy.tunnel(&authority, "localhost").await;
        let raw =
            format!("POST /echo/x HTTP/1.1\r\nHost: {authority}\r\n{head}\r\n0\r\n\r\n{smuggled}");
        let response = exchange(&mut tls, &raw).await;
        assert_eq!(status(&response), 400, "{head:?}: {response}");
    }
    // Both Content-Length and Transfer-Encoding, in either order: refused (hyper
    // would take the chunked framing; the proxy does not forward it at all), and the
    // bytes after it never become a request.
    for head in [
        "Content-Length: 60\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 60\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ] {
        let mut tls = proxy.tunnel(&authority, "localhost").await;
        let raw =
            format!("POST /echo/x HTTP/1.1\r\nHost: {authority}\r\n{head}\r\n0\r\n\r\n{smuggled}");
        let response = exchange(&mut tls, &raw).await;
        assert_eq!(status(&response), 400, "{head:?}: {response}");
        assert!(response.contains("ambiguous_framing"), "{response}");
        assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{response}");
    }
    // The same on the plain-HTTP listener.
    let plain_head = format!(
        "POST http://{authority}/echo/x HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
    );
    let response = plain(&proxy, &plain_head).await;
    assert_eq!(status(&response), 400, "{response}");
    assert!(response.contains("ambiguous_framing"), "{response}");
    assert_eq!(upstream.hits(), 0, "{:?}", upstream.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_plain_http_does_not_get_the_tls_only_credential() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = plain_upstream().await;
    let ca = tls_upstream().await.ca().write_pem(dir.path());
    let proxy = TestProxy::start(
        ProxyOptions::new(&standard_routes(upstream.port()), &ca).secret(TOKEN_NAME, TOKEN_VALUE),
    )
    .await;
    let port = upstream.port();
    let response = plain(
        &proxy,
        &format!("GET http://localhost:{port}/echo/x HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status(&response), 403, "{response}");
    assert!(!response.contains(TOKEN_VALUE));
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_connect_to_the_ip_of_a_routed_host_is_denied() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tls_upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    for authority in [
        format!("127.0.0.1:{}", upstream.port()),
        format!("[::1]:{}", upstream.port()),
        format!("2130706433:{}", upstream.port()),
    ] {
        let (status, head, _) = proxy.connect(&authority).await;
        assert_eq!(status, 403, "CONNECT {authority}: {head}");
    }
    assert_eq!(proxy.proxy().leaf_cache().len(), 0);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_a_redirect_to_another_host_is_not_followed_with_the_credential() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tls_upstream().await;
    let proxy = standard_proxy(&upstream, dir.path()).await;
    let port = upstream.port();
    let response = in_tunnel(
        &proxy,
        port,
        "GET /redirect?to=https://evil.test/steal HTTP/1.1",
        "",
    )
    .await;
    // The proxy hands the redirect back; it does not follow it.
    assert_eq!(status(&response), 302, "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("location: https://evil.test/steal")
    );
    assert_eq!(upstream.hits(), 1);
    // The agent's next request is decided on its own: evil.test is not routed.
    let (status_code, head, _) = proxy.connect("evil.test:443").await;
    assert_eq!(status_code, 403, "{head}");
    assert!(!head.contains(TOKEN_VALUE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_header_injection_through_a_secret_value_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tls_upstream().await;
    let ca = upstream.ca().write_pem(dir.path());
    let proxy = TestProxy::start(
        ProxyOptions::new(&standard_routes(upstream.port()), &ca)
            .secret(TOKEN_NAME, "tok\r\nx-injected: 1"),
    )
    .await;
    let response = in_tunnel(&proxy, upstream.port(), "GET /echo/x HTTP/1.1", "").await;
    assert_eq!(status(&response), 403, "{response}");
    assert!(response.contains("credential_unavailable"), "{response}");
    assert!(!response.contains("x-injected"), "{response}");
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_agent_credentials_are_never_passed_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = tls_upstream().await;
    let ca = upstream.ca().write_pem(dir.path());
    // A route without injection: the agent's own credentials still do not pass.
    let routes = format!(
        "routes:\n  - host: localhost\n    ports: [{}]\n",
        upstream.port()
    );
    let proxy = TestProxy::start(ProxyOptions::new(&routes, &ca)).await;
    let response = in_tunnel(
        &proxy,
        upstream.port(),
        "GET /echo/x HTTP/1.1",
        "Authorization: Bearer agent-token\r\nProxy-Authorization: Basic YTpi\r\nauthorization: token second\r\n",
    )
    .await;
    assert_eq!(status(&response), 200, "{response}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].header("authorization").is_none(), "{seen:?}");
    assert!(seen[0].header("proxy-authorization").is_none(), "{seen:?}");
    // Plain HTTP, too.
    let plain_upstream = plain_upstream().await;
    let routes = format!(
        "routes:\n  - host: localhost\n    ports: [{}]\n",
        plain_upstream.port()
    );
    proxy.reload(&routes);
    let port = plain_upstream.port();
    let response = plain(
        &proxy,
        &format!("GET http://localhost:{port}/echo/x HTTP/1.1\r\nHost: localhost:{port}\r\nAuthorization: Bearer agent\r\nProxy-Authorization: Basic YTpi\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status(&response), 200, "{response}");
    let seen = plain_upstream.seen();
    assert!(seen[0].header("authorization").is_none(), "{seen:?}");
    assert!(seen[0].header("proxy-authorization").is_none(), "{seen:?}");
}
