//! The `policy` CLI, as a real process, with fixture guests and the golden cases.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up should fail the test"
)]

use std::process::{Command, Output};

use egress_proxy_tests::{BODY_WASM, MISBEHAVE_WASM, WRONG_VERSION_WASM, proxy_bin, repo_root};

fn proxy(args: &[&str]) -> Output {
    Command::new(proxy_bin())
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn golden_cases_pass_through_the_compiled_default_policy() {
    let out = proxy(&[
        "policy",
        "test",
        "--routes",
        "tests/golden/routes.yaml",
        "tests/golden/cases.yaml",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let last = stdout.lines().last().unwrap();
    assert!(last.ends_with(" passed, 0 failed"), "{stdout}");
    let passed: usize = last.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 30, "{stdout}");
}

#[test]
fn check_refuses_a_guest_built_for_another_wit_version() {
    let out = proxy(&[
        "policy",
        "check",
        "--routes",
        "examples/routes.yaml",
        "--policy",
        WRONG_VERSION_WASM,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("built against egress:policy@0.3.0"),
        "{stderr}"
    );
    assert!(stderr.contains("egress:policy@0.2.0 or @0.1.0"), "{stderr}");
}

#[test]
fn the_0_1_0_build_of_the_rust_example_still_passes_its_cases() {
    let out = proxy(&[
        "policy",
        "test",
        "--policy",
        "tests/fixtures/v0.1.0/example-policy-rust.wasm",
        "--routes",
        "tests/fixtures/v0.1.0/example-policy-rust.routes.yaml",
        "tests/fixtures/v0.1.0/example-policy-rust.cases.yaml",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    let check = proxy(&[
        "policy",
        "check",
        "--policy",
        "tests/fixtures/v0.1.0/example-policy-rust.wasm",
        "--routes",
        "tests/fixtures/v0.1.0/example-policy-rust.routes.yaml",
    ]);
    assert!(
        text(&check.stdout).contains("egress:policy@0.1.0"),
        "{}",
        text(&check.stdout)
    );
}

#[test]
fn eval_passes_data_to_decide_body_and_prints_annotations() {
    let args = |data: &str| {
        proxy(&[
            "policy",
            "eval",
            "--routes",
            "examples/routes.yaml",
            "--policy",
            BODY_WASM,
            "--data",
            data,
            "POST",
            "https://body.test/x",
        ])
    };
    let out = args("hello");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["verdict"], "allow", "{verdict}");
    assert_eq!(verdict["annotations"]["len"], "5", "{verdict}");
    assert_eq!(verdict["annotations"]["complete"], "true", "{verdict}");
    let out = args("this is forbidden");
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["verdict"], "deny", "{verdict}");
    assert_eq!(verdict["status"], 403, "{verdict}");
    // Over the cap the policy asked for all of: the proxy's 413.
    let out = proxy(&[
        "policy",
        "eval",
        "--routes",
        "examples/routes.yaml",
        "--policy",
        BODY_WASM,
        "--max-inspect-body",
        "4",
        "--data",
        "hello",
        "POST",
        "https://body.test/x",
    ]);
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["status"], 413, "{verdict}");
}

#[test]
fn case_files_run_bodies_and_a_frozen_clock_in_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("payload.bin"), b"no bad words here").unwrap();
    let mut cases = String::from("cases:\n");
    for i in 1..=5 {
        cases.push_str(&format!(
            "  - {{ name: take {i}, url: 'https://rate.test/r', expect: {{ verdict: allow }} }}\n"
        ));
    }
    cases.push_str(
        "  - { name: the sixth is limited, url: 'https://rate.test/r',
      expect: { verdict: deny, status: 429, response_headers: { retry-after: '1' } } }
  - { name: still limited 999ms later, after: 999ms, url: 'https://rate.test/r',
      expect: { verdict: deny, status: 429 } }
  - { name: a token is back after a second, after: 1ms, url: 'https://rate.test/r',
      expect: { verdict: allow } }
  - { name: a text body, method: POST, url: 'https://body.test/', body: 'forbidden!',
      expect: { verdict: deny, status: 403, annotations: { len: '10', complete: 'true' } } }
  - { name: a file body, method: POST, url: 'https://body.test/', body_file: payload.bin,
      expect: { verdict: allow, annotations: { len: '17' } } }
  - { name: a gzip body is decoded, method: POST, url: 'https://body.test/',
      body_base64: 'Zm9yYmlkZGVu', content_encoding: gzip,
      expect: { verdict: deny, status: 403, annotations: { len: '9' } } }
  - { name: a prefix, method: POST, url: 'https://body.test/', body: 'abcdefgh',
      headers: { x-max: '3', x-prefix: '1' },
      expect: { verdict: allow, annotations: { len: '3', complete: 'false' } } }
  - { name: a wrong expectation fails, method: POST, url: 'https://body.test/', body: 'x',
      expect: { verdict: allow, annotations: { len: '2' } } }
",
    );
    let file = dir.path().join("cases.yaml");
    std::fs::write(&file, cases).unwrap();
    let out = proxy(&[
        "policy",
        "test",
        "--routes",
        "examples/routes.yaml",
        "--policy",
        BODY_WASM,
        file.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("12 passed, 1 failed"), "{stdout}");
    assert!(
        stdout.contains("a wrong expectation fails: expected annotation len=2, got len=1"),
        "{stdout}"
    );
}

#[test]
fn check_reports_a_configure_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, "mode: reject\n").unwrap();
    let out = proxy(&[
        "policy",
        "check",
        "--routes",
        routes.to_str().unwrap(),
        "--policy",
        MISBEHAVE_WASM,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("fixture rejects these routes"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn eval_of_a_looping_guest_denies_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, "mode: ok\n").unwrap();
    let started = std::time::Instant::now();
    let out = proxy(&[
        "policy",
        "eval",
        "--routes",
        routes.to_str().unwrap(),
        "--policy",
        MISBEHAVE_WASM,
        "--policy-timeout",
        "50ms",
        "GET",
        "https://loop.test/",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["source"], "policy_fault");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn a_policy_file_that_does_not_exist_is_a_clear_error() {
    let out = proxy(&[
        "policy",
        "check",
        "--routes",
        "examples/routes.yaml",
        "--policy",
        "/nonexistent/policy.wasm",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot read policy module"),
        "{}",
        text(&out.stderr)
    );
}
