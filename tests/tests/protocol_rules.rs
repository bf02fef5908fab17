//! The built-in policy's protocol rules through the real data plane: `rate_limit`
//! under concurrent load, `graphql` operations over POST and GET (the test upstream's
//! `/echo` standing in for the GraphQL endpoint), and `mcp` with the
//! official MCP Python SDK as both client and server (the client reaches the server
//! only through the proxy; a forbidden tool call fails in the client with the
//! policy's reason, and never reaches the server).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use egress_proxy_tests::proxy::{ProxyOptions, TestProxy};
use egress_proxy_tests::repo_root;
use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};
use serde_json::{Value, json};

async fn proxy_for(routes: &str, hosts: &[&str]) -> (Upstream, TestProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(UpstreamOptions {
        extra_names: hosts.iter().map(|h| (*h).to_owned()).collect(),
        ..UpstreamOptions::default()
    })
    .await;
    let ca = upstream.ca().write_pem(dir.path());
    let mut options = ProxyOptions::new(routes, &ca);
    for host in hosts {
        options = options.connect_to(host, 443, upstream.addr());
    }
    let proxy = TestProxy::start(options).await;
    (upstream, proxy, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_under_concurrent_load_passes_exactly_the_budget() {
    let routes =
        r#"{"routes": [{"host": "rate.test", "rate_limit": {"requests": 7, "per": "1h"}}]}"#;
    let (upstream, proxy, _dir) = proxy_for(routes, &["rate.test"]).await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        // Half over HTTP/2 (multiplexed), half over HTTP/1.1 connections.
        let client = proxy.client(i % 2 == 0);
        tasks.push(tokio::spawn(async move {
            let response = client.get("https://rate.test/echo").send().await.unwrap();
            let status = response.status().as_u16();
            let retry = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, retry)
        }));
    }
    let mut passed = 0;
    let mut limited = 0;
    for task in tasks {
        match task.await.unwrap() {
            (200, _) => passed += 1,
            (429, Some(retry)) => {
                // 7 per hour: one token every 514 s.
                let seconds: u64 = retry.parse().unwrap();
                assert!((1..=515).contains(&seconds), "retry-after {seconds}");
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((passed, limited), (7, 53));
    assert_eq!(
        upstream.hits(),
        7,
        "refused requests never reach the upstream"
    );
}

const GRAPHQL_ROUTES: &str = r#"{"routes": [{"host": "gql.test",
    "graphql": {"path": "/echo", "operations": ["query", "mutation"], "mutations": ["addComment"]}}]}"#;

async fn graphql(client: &reqwest::Client, body: Value) -> (u16, String) {
    let response = client
        .post("https://gql.test/echo")
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_queries_pass_and_mutations_and_undecidable_shapes_are_refused() {
    let (upstream, proxy, _dir) = proxy_for(GRAPHQL_ROUTES, &["gql.test"]).await;
    let client = proxy.client(false);
    let (status, text) = graphql(
        &client,
        json!({"query": "query Viewer { viewer { login } }"}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = graphql(
        &client,
        json!({"query": "mutation { addComment(input: {subjectId: \"1\", body: \"hi\"}) { clientMutationId } }"}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(upstream.hits(), 2);

    let (status, text) = graphql(
        &client,
        json!({"query": "query A { viewer { login } } mutation B { mergePullRequest(input: {}) { clientMutationId } }",
               "operationName": "B"}),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    let deny: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(deny["error"], "denied_by_egress_policy");
    assert_eq!(deny["rule"], "gql.test");
    assert!(
        deny["reason"]
            .as_str()
            .unwrap()
            .contains("mutation field `mergePullRequest` in `B` is not allowed"),
        "{text}"
    );
    for (body, needle) in [
        (json!([{"query": "{ viewer { login } }"}]), "batched"),
        (
            json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "abc"}}}),
            "persisted query",
        ),
        (
            json!({"query": "query A { a } query B { b }"}),
            "several operations",
        ),
        (json!({"query": "query { viewer { "}), "does not parse"),
    ] {
        let (status, text) = graphql(&client, body.clone()).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
    }
    // GET queries are decided from the query string.
    let get = |query: &str| {
        client
            .get("https://gql.test/echo")
            .query(&[("query", query)])
            .send()
    };
    assert_eq!(get("{ viewer { login } }").await.unwrap().status(), 200);
    assert_eq!(
        get("mutation { deleteRepository(input: {}) { clientMutationId } }")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        upstream.hits(),
        3,
        "no refused request reached the upstream"
    );
}

/// The venv with the official MCP Python SDK (`tests/mcp/requirements.txt`):
/// `.ci/run` makes it first; a plain `cargo test` makes it here if it is missing
/// (python3 with venv and pip, and PyPI, needed), so the README's test command works
/// on a fresh machine.
fn mcp_python() -> PathBuf {
    let venv = repo_root().join("target/ci-venv-mcp");
    let python = venv.join("bin/python");
    let hint = "the MCP test needs the official MCP Python SDK: `python3 -m venv \
                target/ci-venv-mcp && target/ci-venv-mcp/bin/pip install -r \
                tests/mcp/requirements.txt` (.ci/run does this)";
    if !python.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|status| status.success());
        assert!(made, "`python3 -m venv` failed; {hint}");
    }
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(repo_root().join("tests/mcp/requirements.txt"))
        .status()
        .is_ok_and(|status| status.success());
    assert!(installed, "installing the MCP SDK failed; {hint}");
    python
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_sdk_client_lists_and_calls_allowed_tools_and_sees_why_a_forbidden_one_failed() {
    let python = mcp_python();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let calls = dir.path().join("calls.txt");
    let server = KillOnDrop(
        Command::new(&python)
            .arg(repo_root().join("tests/mcp/server.py"))
            .arg(port.to_string())
            .arg(&calls)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let server_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(server_addr).is_err() {
        assert!(Instant::now() < deadline, "the MCP server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    let routes = format!(
        r#"{{"routes": [{{"host": "mcp.test", "ports": [{port}], "mcp": {{
            "methods": ["initialize", "notifications/initialized", "ping", "tools/list", "tools/call"],
            "tools": ["search", "read_file"]}}}}]}}"#
    );
    // The proxy needs some upstream CA; MCP runs over plain HTTP here.
    let upstream = Upstream::start(UpstreamOptions::default()).await;
    let ca = upstream.ca().write_pem(dir.path());
    let options = ProxyOptions::new(&routes, &ca).connect_to("mcp.test", port, server_addr);
    let proxy = TestProxy::start(options).await;

    let proxy_url = proxy.url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(repo_root().join("tests/mcp/client.py"))
            .arg(format!("http://mcp.test:{port}/mcp"))
            .env("HTTP_PROXY", &proxy_url)
            .env("http_proxy", &proxy_url)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "client failed: {stdout}\n{stderr}");
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["tools"], json!(["delete_repo", "read_file", "search"]));
    assert_eq!(seen["search"], json!(["results for egress"]));
    let error = seen["delete_repo"].as_str().unwrap();
    assert!(
        error.contains("MCP tool `delete_repo` is not allowed (allowed: search, read_file)"),
        "the client shows the policy's reason: {seen}"
    );
    assert_ne!(seen["delete_repo_error"], "no error");
    drop(server);
    let calls = std::fs::read_to_string(&calls).unwrap_or_default();
    assert_eq!(
        calls, "search\n",
        "the forbidden call never reached the server"
    );
}
