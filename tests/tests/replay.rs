//! `policy replay` on a log recorded by the real binary: against the policy that
//! produced it nothing differs; against a changed one exactly the changed decisions
//! do; `--write-cases` output passes `policy test` against the original policy.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use egress_proxy_tests::process::RunningProxy;
use egress_proxy_tests::proxy_bin;
use egress_proxy_tests::upstream::{Upstream, UpstreamOptions};

const ROUTES: &str = r#"
routes:
  - host: api.test
    path_allowlist: [/echo/ok]
  - host: pypi.test
"#;

/// api.test also allows /echo/no; pypi.test is gone.
const CHANGED: &str = r#"
routes:
  - host: api.test
    path_allowlist: [/echo/ok, /echo/no]
"#;

fn cli(args: &[&str]) -> Output {
    Command::new(proxy_bin())
        .args(args)
        .env_remove("EGRESS_PROXY_ROUTES")
        .env_remove("EGRESS_PROXY_POLICY")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Record traffic through the real binary; returns the log file.
async fn record(dir: &Path, routes: &Path) -> std::path::PathBuf {
    let upstream = Upstream::start(UpstreamOptions {
        extra_names: vec!["api.test".to_owned(), "pypi.test".to_owned()],
        ..UpstreamOptions::default()
    })
    .await;
    let ca = upstream.ca().write_pem(dir);
    let api = format!("api.test:443:{}", upstream.addr());
    let pypi = format!("pypi.test:443:{}", upstream.addr());
    let mut proxy = RunningProxy::start(
        routes,
        &dir.join("state"),
        &[
            "--connect-to",
            &api,
            "--connect-to",
            &pypi,
            "--upstream-ca",
            ca.to_str().unwrap(),
        ],
        &[],
    );
    let client = proxy.client();
    for (url, status) in [
        ("https://api.test/echo/ok?page=2&q=a%20b", 200),
        ("https://api.test/echo/ok?page=2&q=a%20b", 200),
        ("https://api.test/echo/no", 403),
        ("https://pypi.test/echo/simple", 200),
    ] {
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), status, "{url}");
    }
    assert!(client.get("https://evil.test/").send().await.is_err());
    assert!(proxy.stop());
    let log = dir.join("access.log");
    std::fs::write(&log, proxy.log_text()).unwrap();
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_finds_no_difference_then_exactly_the_changed_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, ROUTES).unwrap();
    let log = record(dir.path(), &routes).await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(r#""path":"/echo/ok?page=2&q=a%20b""#),
        "the access log keeps the query: {logged}"
    );

    let routes_arg = routes.to_str().unwrap();
    let log_arg = log.to_str().unwrap();
    let same = cli(&["policy", "replay", "--routes", routes_arg, log_arg]);
    let out = text(&same);
    assert!(same.status.success(), "{out}");
    // CONNECT api.test (once: one pooled tunnel), 2 + 1 inside it, CONNECT pypi.test
    // and 1 inside, CONNECT evil.test (denied).
    assert!(out.contains("7 same, 0 different, 0 not exact"), "{out}");
    assert!(!out.contains("DIFFERENT"), "{out}");

    let changed = dir.path().join("changed.yaml");
    std::fs::write(&changed, CHANGED).unwrap();
    let differ = cli(&[
        "policy",
        "replay",
        "--routes",
        changed.to_str().unwrap(),
        log_arg,
    ]);
    let out = text(&differ);
    assert_eq!(differ.status.code(), Some(1), "{out}");
    let different: BTreeSet<&str> = out
        .lines()
        .filter(|l| l.starts_with("DIFFERENT "))
        .filter_map(|l| l.split(": ").nth(1))
        .collect();
    assert_eq!(
        different,
        BTreeSet::from([
            "GET https://api.test/echo/no",
            "CONNECT pypi.test:443",
            "GET https://pypi.test/echo/simple",
        ]),
        "{out}"
    );
    assert!(out.contains("4 same, 3 different"), "{out}");
    assert!(
        out.contains(
            "GET https://api.test/echo/no: recorded deny 403 (rule api.test), now allow (rule api.test)"
        ),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_cases_pass_against_the_policy_that_produced_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, ROUTES).unwrap();
    let log = record(dir.path(), &routes).await;
    let cases = dir.path().join("cases.json");
    let routes_arg = routes.to_str().unwrap();
    let out = cli(&[
        "policy",
        "replay",
        "--routes",
        routes_arg,
        "--write-cases",
        cases.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // The repeated GET is written once.
    assert!(text(&out).contains("wrote 6 cases"), "{}", text(&out));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cases).unwrap()).unwrap();
    let names: Vec<&str> = written["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"GET https://api.test/echo/ok?page=2&q=a%20b"),
        "{names:?}"
    );
    assert!(names.contains(&"CONNECT evil.test:443"), "{names:?}");

    let test = cli(&[
        "policy",
        "test",
        "--routes",
        routes_arg,
        cases.to_str().unwrap(),
    ]);
    assert!(test.status.success(), "{}", text(&test));
    assert!(
        text(&test).contains("6 passed, 0 failed"),
        "{}",
        text(&test)
    );
    // And the changed policy fails exactly the changed ones.
    let changed = dir.path().join("changed.yaml");
    std::fs::write(&changed, CHANGED).unwrap();
    let test = cli(&[
        "policy",
        "test",
        "--routes",
        changed.to_str().unwrap(),
        cases.to_str().unwrap(),
    ]);
    assert_eq!(test.status.code(), Some(1));
    assert!(
        text(&test).contains("3 passed, 3 failed"),
        "{}",
        text(&test)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_whose_body_the_policy_read_is_not_exact_and_carries_its_digest() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start(UpstreamOptions {
        tls: false,
        ..UpstreamOptions::default()
    })
    .await;
    let port = upstream.port();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    // Without content-length, the route's size limit needs the body itself.
    std::fs::write(
        &routes,
        format!("routes:\n  - host: localhost\n    ports: [{port}]\n    max_body_bytes: 100\n"),
    )
    .unwrap();
    let mut proxy = RunningProxy::start(&routes, &dir.path().join("state"), &[], &[]);
    let mut stream = tokio::net::TcpStream::connect(&proxy.listen).await.unwrap();
    stream
        .write_all(
            format!(
                "POST http://localhost:{port}/echo/up HTTP/1.1\r\nHost: localhost:{port}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(proxy.stop());
    let log = dir.path().join("access.log");
    std::fs::write(&log, proxy.log_text()).unwrap();
    // sha256("hello")
    let digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!(r#""body_sha256":"{digest}""#)),
        "{logged}"
    );

    let cases = dir.path().join("cases.json");
    let out = cli(&[
        "policy",
        "replay",
        "--routes",
        routes.to_str().unwrap(),
        "--write-cases",
        cases.to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    let out = text(&out);
    assert!(
        out.contains(&format!(
            "POST http://localhost:{port}/echo/up: the policy reads the body, which the log does not hold (sha256 {digest}); recorded allow (rule localhost)"
        )),
        "{out}"
    );
    assert!(out.contains("0 same, 0 different, 1 not exact"), "{out}");
    assert!(out.contains("wrote 0 cases"), "{out}");
}
