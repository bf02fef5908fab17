//! `policy test --coverage`, `--min-coverage` and `--format json`, run as a real
//! process against the built-in policy.

#![allow(
    clippy::expect_used,
    reason = "test helpers: a failed set-up should fail the test"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn proxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_egress-proxy"))
        .args(args)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env_remove("EGRESS_PROXY_ROUTES")
        .env_remove("EGRESS_PROXY_POLICY")
        .output()
        .expect("run egress-proxy")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const ROUTES: &str = r#"
routes:
  - host: api.github.com
    path_allowlist: [/repos/acme/, /user]
    ports: [443, 8443]
    git: { push: [refs/heads/agent/*] }
  - host: pypi.org
  - host: untested.example
    mcp: { path: /mcp }
"#;

/// Reaches api.github.com (one path entry, port 443, git fetch) and pypi.org; never
/// untested.example, /user, port 8443 or git push.
const CASES: &str = r#"
cases:
  - name: acme repo
    url: https://api.github.com/repos/acme/widget
    expect: { verdict: allow, rule: api.github.com }
  - name: clone
    url: https://api.github.com/repos/acme/widget.git/info/refs?service=git-upload-pack
    expect: { verdict: allow }
  - name: pypi
    url: https://pypi.org/simple/
    expect: { verdict: allow, rule: pypi.org }
  - name: unrouted
    url: https://evil.example/
    expect: { verdict: deny, status: 403 }
"#;

fn files(dir: &Path) -> (String, String) {
    let routes = dir.join("routes.yaml");
    let cases = dir.join("cases.yaml");
    std::fs::write(&routes, ROUTES).expect("write routes");
    std::fs::write(&cases, CASES).expect("write cases");
    (
        routes.to_str().expect("utf-8").to_owned(),
        cases.to_str().expect("utf-8").to_owned(),
    )
}

#[test]
fn coverage_names_the_unexercised_route_and_route_items() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (routes, cases) = files(dir.path());
    let out = proxy(&["policy", "test", "--routes", &routes, &cases, "--coverage"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let from = lines
        .iter()
        .position(|l| *l == "4 passed, 0 failed")
        .expect("summary line");
    // 2 of 3 rules; items: ports 443, 8443, paths /repos/acme/, /user, git fetch,
    // git push, mcp /mcp = 7, of which 3 reached: 5 of 10 = 50%.
    assert_eq!(
        &lines[from + 1..],
        [
            "coverage: 50.0% (2 of 3 rules, 3 of 7 route items)",
            "not exercised: rule untested.example",
            "not exercised: api.github.com port 8443",
            "not exercised: api.github.com path /user",
            "not exercised: api.github.com git push",
            "not exercised: untested.example mcp /mcp",
        ],
        "{text}"
    );
}

#[test]
fn without_coverage_flag_nothing_is_added() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (routes, cases) = files(dir.path());
    let out = proxy(&["policy", "test", "--routes", &routes, &cases]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().last(), Some("4 passed, 0 failed"));
}

#[test]
fn min_coverage_fails_below_and_passes_at_or_above() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (routes, cases) = files(dir.path());
    let below = proxy(&[
        "policy",
        "test",
        "--routes",
        &routes,
        &cases,
        "--min-coverage",
        "51",
    ]);
    assert_eq!(below.status.code(), Some(1), "{}", stdout(&below));
    assert!(
        stdout(&below).contains("coverage 50.0% is below --min-coverage 51"),
        "{}",
        stdout(&below)
    );
    let met = proxy(&[
        "policy",
        "test",
        "--routes",
        &routes,
        &cases,
        "--min-coverage",
        "50",
    ]);
    assert!(met.status.success(), "{}", stdout(&met));
    let bad = proxy(&[
        "policy",
        "test",
        "--routes",
        &routes,
        &cases,
        "--min-coverage",
        "150",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not between 0 and 100"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn json_output_is_one_document_with_cases_and_coverage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (routes, cases) = files(dir.path());
    let out = proxy(&[
        "policy",
        "test",
        "--routes",
        &routes,
        &cases,
        "--coverage",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["passed"], 4);
    assert_eq!(doc["failed"], 0);
    assert_eq!(doc["cases"][0]["name"], "acme repo");
    assert_eq!(doc["cases"][0]["verdict"]["verdict"], "allow");
    assert_eq!(doc["cases"][3]["verdict"]["status"], 403);
    let coverage = &doc["coverage"];
    assert_eq!(coverage["percent"], 50.0);
    assert_eq!(coverage["rules"]["not_exercised"][0], "untested.example");
    assert_eq!(coverage["route_items"]["total"], 7);
    assert_eq!(
        coverage["route_items"]["not_exercised"][0],
        serde_json::json!({"rule": "api.github.com", "kind": "port", "value": "8443"})
    );
    assert_eq!(coverage["met"], true);
}

#[test]
fn a_failing_case_still_fails_the_json_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (routes, _) = files(dir.path());
    let cases = dir.path().join("wrong.yaml");
    std::fs::write(
        &cases,
        "cases:\n  - name: wrong\n    url: https://evil.example/\n    expect: { verdict: allow }\n",
    )
    .expect("write cases");
    let out = proxy(&[
        "policy",
        "test",
        "--routes",
        &routes,
        cases.to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["cases"][0]["passed"], false);
    assert!(
        doc["cases"][0]["difference"]
            .as_str()
            .is_some_and(|d| d.contains("expected allow, got deny 403")),
        "{doc}"
    );
    assert!(doc.get("coverage").is_none());
}
