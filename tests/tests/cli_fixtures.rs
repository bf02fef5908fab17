//! The `policy` CLI, as a real process, with fixture guests and the golden cases.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up should fail the test"
)]

use std::process::{Command, Output};

use egress_proxy_tests::{MISBEHAVE_WASM, WRONG_VERSION_WASM, proxy_bin, repo_root};

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
    assert!(stderr.contains("egress:policy@0.2.0"), "{stderr}");
    assert!(stderr.contains("egress:policy@0.1.0"), "{stderr}");
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
