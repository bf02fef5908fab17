//! Resource limits through real sockets: the connection limit sheds load with a clear
//! 503 while connected clients keep being served; oversized or too many headers get
//! 431; a slow head (slowloris) and an idle connection are closed.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::{Duration, Instant};

use egress_proxy::proxy::{ERROR_HEADER, Limits};
use egress_proxy_tests::proxy::{ProxyOptions, TestProxy};
use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn plain_upstream() -> Upstream {
    Upstream::start(UpstreamOptions {
        tls: false,
        ..UpstreamOptions::default()
    })
    .await
}

async fn proxy_with(upstream: &Upstream, limits: Limits) -> (TestProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Upstream::start(UpstreamOptions::default())
        .await
        .ca()
        .write_pem(dir.path());
    let routes = format!(
        "routes:\n  - host: localhost\n    ports: [{}]\n",
        upstream.port()
    );
    let mut options = ProxyOptions::new(&routes, &ca);
    options.limits = limits;
    (TestProxy::start(options).await, dir)
}

fn get(port: u16, path: &str) -> String {
    format!("GET http://localhost:{port}{path} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n")
}

/// One HTTP/1.1 response (head and `content-length` body), leaving the connection
/// positioned after it.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed mid-head");
        head.push(byte[0]);
    }
    let mut text = String::from_utf8(head).unwrap();
    let length = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    text.push_str(&String::from_utf8_lossy(&body));
    text
}

/// Whether the peer closes the connection within `within` (EOF or reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_limit_is_answered_503_and_others_keep_being_served() {
    let upstream = plain_upstream().await;
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (proxy, _dir) = proxy_with(&upstream, limits).await;
    let port = upstream.port();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        stream
            .write_all(get(port, "/echo/held").as_bytes())
            .await
            .unwrap();
        assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    // A flood of connections over the limit: each gets a clear 503.
    for _ in 0..20 {
        let mut extra = TcpStream::connect(proxy.addr()).await.unwrap();
        extra
            .write_all(get(port, "/echo/extra").as_bytes())
            .await
            .unwrap();
        let head = read_response(&mut extra).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        assert!(head.contains(ERROR_HEADER), "{head}");
        assert!(head.contains("--max-connections"), "{head}");
    }
    // The connected clients are still served.
    for stream in &mut held {
        stream
            .write_all(get(port, "/echo/again").as_bytes())
            .await
            .unwrap();
        let head = read_response(stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    // A slot freed is a slot available again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        stream
            .write_all(get(port, "/echo/later").as_bytes())
            .await
            .unwrap();
        let head = read_response(&mut stream).await;
        if head.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {head}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(upstream.seen().iter().all(|s| s.path != "/echo/extra"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_are_refused() {
    let upstream = plain_upstream().await;
    let limits = Limits {
        max_headers: 20,
        max_header_bytes: 16 * 1024,
        ..Limits::default()
    };
    let (proxy, _dir) = proxy_with(&upstream, limits).await;
    let port = upstream.port();
    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let large = format!("x-large: {}\r\n", "a".repeat(32 * 1024));
    for extra in [many, large] {
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        let raw = format!(
            "GET http://localhost:{port}/echo/x HTTP/1.1\r\nHost: localhost:{port}\r\n{extra}\r\n"
        );
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    }
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_and_an_idle_connection_are_closed() {
    let upstream = plain_upstream().await;
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    let (proxy, _dir) = proxy_with(&upstream, limits).await;
    let port = upstream.port();
    // Slowloris: a head that never completes.
    let mut slow = TcpStream::connect(proxy.addr()).await.unwrap();
    slow.write_all(format!("GET http://localhost:{port}/echo/x HTTP/1.1\r\nX-A: ").as_bytes())
        .await
        .unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(10)).await);
    // Idle keep-alive connection after a request.
    let mut idle = TcpStream::connect(proxy.addr()).await.unwrap();
    idle.write_all(get(port, "/echo/once").as_bytes())
        .await
        .unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(10)).await);
    assert!(started.elapsed() >= Duration::from_millis(400));
    // An idle CONNECT tunnel (no TLS bytes ever sent) is closed too.
    let (status, _, mut tunnel) = proxy.connect(&format!("localhost:{port}")).await;
    assert_eq!(status, 200);
    // (Well before the 10 s TLS handshake bound.)
    assert!(closed_within(&mut tunnel, Duration::from_secs(5)).await);
}
