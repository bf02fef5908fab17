//! The body phase through the real data plane: the `body` fixture (a compiled 0.2.0
//! component) answers `need-body`, the proxy holds the request, reads the body, and
//! asks `decide-body`. A denied body never reaches the upstream (nor its headers); an
//! allowed one arrives byte for byte (HTTP/1.1, HTTP/2, chunked, gzip-encoded, and
//! `Expect: 100-continue` from the real curl); the limits hold (bombs, bodies over the
//! cap, slow bodies, the memory budget); guest faults in `decide-body` deny and the
//! proxy keeps serving; rate-limit state is shared by concurrent requests and
//! survives a reload.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::Write as _;
use std::process::Command;
use std::time::Duration;

use egress_proxy::proxy::InspectConfig;
use egress_proxy_tests::BODY_WASM;
use egress_proxy_tests::proxy::{ProxyOptions, TestProxy};
use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};
use serde_json::Value;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The fixture's hosts, all served by the one test upstream.
const HOSTS: &[&str] = &[
    "body.test",
    "huge.test",
    "loop-body.test",
    "trap-body.test",
    "again.test",
    "rate.test",
    "connect.test",
    "plain.test",
];

struct Setup {
    upstream: Upstream,
    proxy: TestProxy,
    _dir: tempfile::TempDir,
}

async fn setup(inspect: InspectConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions {
        extra_names: HOSTS.iter().map(|h| (*h).to_owned()).collect(),
        ..UpstreamOptions::default()
    })
    .await;
    let ca = upstream.ca().write_pem(dir.path());
    let mut options = ProxyOptions::new("{\"routes\": []}", &ca).policy(BODY_WASM);
    for host in HOSTS {
        options = options.connect_to(host, 443, upstream.addr());
    }
    options.inspect = inspect;
    let proxy = TestProxy::start(options).await;
    Setup {
        upstream,
        proxy,
        _dir: dir,
    }
}

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A body that never says `forbidden`: bytes 128..=255, no ASCII letters.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| 128 + (i % 128) as u8).collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let mut request = client.post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_bodies_arrive_byte_identical_over_h1_h2_and_chunked() {
    let s = setup(InspectConfig::default()).await;
    let body = payload(300 * 1024);
    for http1_only in [true, false] {
        let client = s.proxy.client(http1_only);
        let (status, _, text) = post(&client, "https://body.test/echo", body.clone(), &[]).await;
        assert_eq!(status, 200, "{text}");
        let echo: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(echo["body_sha256"], sha256(&body), "h1 only: {http1_only}");
        let version = echo["version"].as_str().unwrap();
        assert!(version.starts_with("HTTP/"), "{version}");
    }
    // A streamed body of unknown length: chunked on HTTP/1.1.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(10_000).map(|c| Ok(c.to_vec())).collect();
    let stream = futures_util::stream::iter(chunks);
    let client = s.proxy.client(true);
    let (status, _, text) = post(
        &client,
        "https://body.test/echo",
        reqwest::Body::wrap_stream(stream),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let echo: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(echo["body_sha256"], sha256(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_body_never_reaches_the_upstream() {
    let s = setup(InspectConfig::default()).await;
    let client = s.proxy.client(false);
    let mut body = payload(100 * 1024);
    // Across a 16 KiB slice boundary of the fixture's reads.
    body.splice(16 * 1024 - 4..16 * 1024 - 4, b"forbidden".iter().copied());
    let (status, headers, text) = post(&client, "https://body.test/echo", body, &[]).await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(headers["x-egress-proxy-denied"], "the body says forbidden");
    assert_eq!(s.upstream.hits(), 0, "not even the headers went upstream");
    // The same word inside a gzip body is found too: the policy sees it decoded.
    let encoded = gzip(b"{\"say\": \"forbidden\"}");
    let (status, _, text) = post(
        &client,
        "https://body.test/echo",
        encoded,
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(s.upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_are_decoded_for_the_policy_and_forwarded_encoded() {
    let s = setup(InspectConfig::default()).await;
    let client = s.proxy.client(false);
    let encoded = gzip(&payload(200 * 1024));
    let (status, _, text) = post(
        &client,
        "https://body.test/echo",
        encoded.clone(),
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let echo: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(echo["body_sha256"], sha256(&encoded), "forwarded as sent");
    // A coding the host cannot decode is refused when the policy needs the body.
    let (status, _, text) = post(
        &client,
        "https://body.test/echo",
        b"x".to_vec(),
        &[("content-encoding", "compress")],
    )
    .await;
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("unsupported_content_encoding"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_and_bodies_over_the_cap_are_refused_prefixes_are_not() {
    let s = setup(InspectConfig {
        max_body: 64 * 1024,
        ..InspectConfig::default()
    })
    .await;
    let client = s.proxy.client(false);
    let bomb = gzip(&vec![b'a'; 20 << 20]);
    assert!(bomb.len() < 64 * 1024);
    let (status, _, text) = post(
        &client,
        "https://body.test/echo",
        bomb,
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("decodes (gzip) to more than"), "{text}");
    // The guest asks for 1 GiB of a 100 KiB body; the host's 64 KiB cap wins.
    let (status, _, text) = post(&client, "https://huge.test/echo", payload(100 * 1024), &[]).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("65536 bytes"), "{text}");
    // Within the cap, the 1 GiB ask is harmless: clamped, nothing allocated for it.
    let (status, _, text) = post(&client, "https://huge.test/echo", payload(1000), &[]).await;
    assert_eq!(status, 200, "{text}");
    // A prefix is enough: the first bytes are decided on, the rest streamed after.
    let body = payload(500 * 1024);
    let (status, _, text) = post(
        &client,
        "https://body.test/echo",
        body.clone(),
        &[("x-max", "1000"), ("x-prefix", "1")],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let echo: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(echo["body_sha256"], sha256(&body));
    assert_eq!(s.upstream.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_cut_with_408() {
    let s = setup(InspectConfig {
        read_timeout: Duration::from_millis(500),
        ..InspectConfig::default()
    })
    .await;
    let mut tls = s.proxy.tunnel("body.test:443", "body.test").await;
    tls.write_all(b"POST /echo HTTP/1.1\r\nhost: body.test\r\ncontent-length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            response.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a trickled body");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(s.upstream.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_answers_503_and_others_proceed() {
    // Room for exactly two held bodies of 230,000 bytes (225 KiB each).
    let s = setup(InspectConfig {
        max_body: 256 * 1024,
        memory: 450 * 1024,
        read_timeout: Duration::from_secs(5),
    })
    .await;
    // Two uploads that hold their budget: the headers and a little body, then stall.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut tls = s.proxy.tunnel("body.test:443", "body.test").await;
        tls.write_all(
            b"POST /echo HTTP/1.1\r\nhost: body.test\r\ncontent-length: 230000\r\n\r\nabc",
        )
        .await
        .unwrap();
        stalled.push(tls);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = s.proxy.client(false);
    let (status, headers, text) = post(&client, "https://body.test/echo", payload(10), &[]).await;
    assert_eq!(status, 503, "{text}");
    assert_eq!(headers["retry-after"], "1");
    assert!(text.contains("inspection_busy"), "{text}");
    // A request the policy decides on its head alone is not slowed down.
    let response = client.get("https://plain.test/echo").send().await.unwrap();
    assert_eq!(response.status(), 200);
    drop(stalled);
    // Once the held bodies are gone, the budget is free again.
    let mut status = 0;
    for _ in 0..50 {
        (status, _, _) = post(&client, "https://body.test/echo", payload(10), &[]).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_decide_body_deny_and_the_proxy_keeps_serving() {
    let s = setup(InspectConfig::default()).await;
    let client = s.proxy.client(false);
    for (host, reason) in [
        ("loop-body.test", "timed out"),
        ("trap-body.test", "failed while deciding"),
        ("again.test", "invalid verdict"),
    ] {
        let (status, _, text) =
            post(&client, &format!("https://{host}/echo"), payload(10), &[]).await;
        assert_eq!(status, 403, "{host}: {text}");
        assert!(text.contains(reason), "{host}: {text}");
    }
    // need-body for a CONNECT is refused: the tunnel is never opened.
    let (status, head, _) = s.proxy.connect("connect.test:443").await;
    assert_eq!(status, 403, "{head}");
    assert!(head.contains("invalid verdict"), "{head}");
    assert_eq!(s.upstream.hits(), 0);
    let (status, _, text) = post(&client, "https://body.test/echo", payload(10), &[]).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_expect_100_continue_upload_passes_byte_identical() {
    let s = setup(InspectConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.bin");
    let body = payload(700 * 1024);
    std::fs::write(&file, &body).unwrap();
    let proxy_url = s.proxy.url();
    let ca = s.proxy.ca_path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .args([
                "-sS",
                "--fail-with-body",
                "--http1.1",
                "-x",
                &proxy_url,
                "--cacert",
            ])
            .arg(&ca)
            .args([
                "-H",
                "Expect: 100-continue",
                "-H",
                "content-type: application/octet-stream",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .args(["-w", "\n%{http_code}", "https://body.test/echo"])
            .output()
            .expect("curl runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (text, code) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(code, "200");
    let echo: Value = serde_json::from_str(text).unwrap();
    assert_eq!(echo["body_sha256"], sha256(&body));
    assert!(
        !echo["headers"]
            .to_string()
            .to_ascii_lowercase()
            .contains("100-continue"),
        "the expectation was met by the proxy: {echo}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_by_concurrent_requests_and_survive_a_reload() {
    let s = setup(InspectConfig::default()).await;
    let client = s.proxy.client(false);
    // Capacity 5, no refill: exactly 5 of 24 concurrent requests pass, whichever
    // pooled instances decide them.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let client = client.clone();
        tasks.spawn(async move {
            let response = client
                .get("https://rate.test/echo/shared")
                .header("x-refill", "0")
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.headers().get("retry-after").cloned(),
            )
        });
    }
    let mut passed = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (200, _) => passed += 1,
            (429, retry) => assert!(retry.is_some(), "429 carries retry-after"),
            (status, _) => panic!("unexpected status {status}"),
        }
    }
    assert_eq!(passed, 5);
    // A reload (new generation, same runtime) keeps the bucket empty.
    s.proxy.reload("{\"routes\": [], \"changed\": true}");
    let response = client
        .get("https://rate.test/echo/shared")
        .header("x-refill", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_inspects_bodies_and_logs_annotations() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions {
        extra_names: vec!["body.test".to_owned()],
        ..UpstreamOptions::default()
    })
    .await;
    let ca = upstream.ca().write_pem(dir.path());
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, "{}").unwrap();
    let connect_to = format!("body.test:443:{}", upstream.addr());
    let mut proxy = egress_proxy_tests::process::RunningProxy::start(
        &routes,
        &dir.path().join("state"),
        &[
            "--policy",
            BODY_WASM,
            "--connect-to",
            &connect_to,
            "--upstream-ca",
            ca.to_str().unwrap(),
        ],
        &[],
    );
    let client = proxy.client();
    let (status, _, text) = post(&client, "https://body.test/echo", b"hello".to_vec(), &[]).await;
    assert_eq!(status, 200, "{text}");
    let (status, _, text) = post(
        &client,
        "https://body.test/echo",
        b"forbidden".to_vec(),
        &[],
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(proxy.stop());
    let access: Vec<Value> = proxy
        .events()
        .into_iter()
        .filter(|e| e["message"] == "access" && e["method"] == "POST")
        .collect();
    assert_eq!(access.len(), 2, "{access:?}");
    let notes =
        |e: &Value| -> Value { serde_json::from_str(e["annotations"].as_str().unwrap()).unwrap() };
    assert_eq!(access[0]["decision"], "allow");
    assert_eq!(notes(&access[0])["len"], "5");
    assert_eq!(access[1]["decision"], "deny");
    assert_eq!(notes(&access[1])["len"], "9");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_bodies_are_held_and_decided_too() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions {
        tls: false,
        ..UpstreamOptions::default()
    })
    .await;
    let ca = upstream.ca().write_pem(dir.path());
    let options = ProxyOptions::new("{\"routes\": []}", &ca)
        .policy(BODY_WASM)
        .connect_to("body.test", upstream.port(), upstream.addr());
    let proxy = TestProxy::start(options).await;
    let client = proxy.client(true);
    let url = format!("http://body.test:{}/echo", upstream.port());
    let body = payload(50 * 1024);
    let (status, _, text) = post(&client, &url, body.clone(), &[]).await;
    assert_eq!(status, 200, "{text}");
    let echo: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(echo["body_sha256"], sha256(&body));
    let (status, _, text) = post(&client, &url, b"forbidden".to_vec(), &[]).await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(upstream.hits(), 1);
}
