//! The `policy` subcommands, run as a real process against the built-in policy and
//! the shipped examples.

#![allow(
    clippy::expect_used,
    reason = "test helpers: a failed set-up should fail the test"
)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn proxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_egress-proxy"))
        .args(args)
        .current_dir(root())
        .env_remove("GH_PAT")
        .env_remove("EGRESS_PROXY_ROUTES")
        .env_remove("EGRESS_PROXY_POLICY")
        .output()
        .expect("run egress-proxy")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn eval_json(args: &[&str]) -> serde_json::Value {
    let out = proxy(args);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("eval prints one JSON object")
}

#[test]
fn check_prints_a_summary() {
    let out = proxy(&["policy", "check", "--routes", "examples/routes.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("rules:   7"), "{text}");
    assert!(
        text.contains("rule ids: api.github.com, pypi.org, *.pythonhosted.org"),
        "{text}"
    );
    assert!(text.contains("egress:policy@0.2.0"), "{text}");
    assert!(text.contains("secrets: GH_PAT, REGISTRY_TOKEN"), "{text}");
    assert!(text.contains("the built-in policy (sha256 "), "{text}");
}

#[test]
fn check_reads_flags_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_egress-proxy"))
        .args(["policy", "check"])
        .current_dir(root())
        .env("EGRESS_PROXY_ROUTES", "examples/routes.yaml")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn check_rejects_bad_routes_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, "routes:\n  - host: x.example\n    auth: {}\n").unwrap();
    let out = proxy(&["policy", "check", "--routes", routes.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("routes[0]"), "{err}");
    assert!(err.contains("auth"), "{err}");
}

#[test]
fn check_rejects_unparseable_yaml_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, "routes: [\n").unwrap();
    let out = proxy(&["policy", "check", "--routes", routes.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not valid YAML"), "{}", stderr(&out));

    let out = proxy(&["policy", "check", "--routes", "/nonexistent/routes.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read routes file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn eval_inject_shows_templates_never_values() {
    let out = Command::new(env!("CARGO_BIN_EXE_egress-proxy"))
        .args([
            "policy",
            "eval",
            "--routes",
            "examples/routes.yaml",
            "-H",
            "Authorization: Bearer agent-token",
            "GET",
            "https://api.github.com/repos/acme/widget",
        ])
        .current_dir(root())
        .env("GH_PAT", "ghp_supersecretvalue")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("ghp_supersecretvalue"), "{text}");
    assert!(!text.contains("agent-token"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["verdict"], "inject");
    assert_eq!(v["rule"], "api.github.com");
    assert_eq!(v["headers"][0]["name"], "authorization");
    assert_eq!(v["headers"][0]["value"], "Bearer ${GH_PAT}");
    assert_eq!(v["headers"][0]["secrets"][0], "GH_PAT");
    assert_eq!(v["missing_secrets"], serde_json::json!([]));
}

#[test]
fn eval_reports_a_missing_secret() {
    let v = eval_json(&[
        "policy",
        "eval",
        "--routes",
        "examples/routes.yaml",
        "GET",
        "https://api.github.com/repos/acme/widget",
    ]);
    assert_eq!(v["missing_secrets"], serde_json::json!(["GH_PAT"]));
}

#[test]
fn eval_deny_has_status_and_reason() {
    let v = eval_json(&[
        "policy",
        "eval",
        "--routes",
        "examples/routes.yaml",
        "GET",
        "https://evil.example/",
    ]);
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["status"], 403);
    assert!(
        v["reason"].as_str().unwrap().contains("evil.example"),
        "{v}"
    );
}

#[test]
fn eval_connect_decides_the_tunnel() {
    let routes = ["policy", "eval", "--routes", "examples/routes.yaml"];
    let allowed = eval_json(&[&routes[..], &["CONNECT", "api.github.com:443"]].concat());
    assert_eq!(allowed["verdict"], "allow");
    let denied = eval_json(&[&routes[..], &["CONNECT", "evil.example:443"]].concat());
    assert_eq!(denied["verdict"], "deny");
}

#[test]
fn eval_rejects_a_bad_url() {
    let out = proxy(&[
        "policy",
        "eval",
        "--routes",
        "examples/routes.yaml",
        "GET",
        "ftp://x.example/",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("only http:// and https://"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn test_passes_the_shipped_examples() {
    let out = proxy(&[
        "policy",
        "test",
        "--routes",
        "examples/routes.yaml",
        "examples/cases.yaml",
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.lines().last().unwrap().ends_with(" passed, 0 failed"),
        "{text}"
    );
    assert!(!text.contains("FAIL"), "{text}");
}

#[test]
fn test_reports_failures_with_the_difference_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        r#"
cases:
  - name: right
    url: https://pypi.org/simple/
    expect: { verdict: allow }
  - name: wrong kind
    url: https://evil.example/
    expect: { verdict: allow }
  - name: wrong template
    url: https://api.github.com/repos/acme/x
    expect:
      verdict: inject
      headers: { authorization: "token ${GH_PAT}" }
"#,
    )
    .unwrap();
    let out = proxy(&[
        "policy",
        "test",
        "--routes",
        "examples/routes.yaml",
        cases.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("PASS") && text.contains(": right"), "{text}");
    assert!(
        text.contains("wrong kind: expected allow, got deny 403"),
        "{text}"
    );
    assert!(text.contains("Bearer ${GH_PAT}"), "{text}");
    assert_eq!(text.lines().last(), Some("1 passed, 2 failed"));
}

#[test]
fn test_refuses_an_invalid_case_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "cases:\n  - name: x\n    url: http://x/\n    expct: {}\n",
    )
    .unwrap();
    let out = proxy(&[
        "policy",
        "test",
        "--routes",
        "examples/routes.yaml",
        cases.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is invalid"), "{}", stderr(&out));
}

#[test]
fn a_closed_stdout_ends_quietly_not_with_a_panic() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_egress-proxy"))
        .args([
            "policy",
            "test",
            "--routes",
            "examples/routes.yaml",
            "examples/cases.yaml",
        ])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run egress-proxy");
    // Like `| head -0`: the reader is gone before the first line is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn a_module_over_the_memory_limit_says_which_limit_to_raise() {
    let out = proxy(&[
        "policy",
        "check",
        "--routes",
        "examples/routes.yaml",
        "--policy-memory-mib",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("raise --policy-memory-mib"), "{err}");
    assert!(!err.contains("not a valid WebAssembly component"), "{err}");
}

#[test]
fn check_says_the_builtin_policy_is_precompiled() {
    let out = proxy(&["policy", "check", "--routes", "examples/routes.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("compiled: at build time (the built-in policy's precompiled artifact)"),
        "{text}"
    );
}

/// `policy compile` writes an artifact the other commands load without compiling;
/// one from another wasmtime is refused with what to do, and a non-policy is refused.
#[test]
fn policy_compile_round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let wasm = dir.path().join("policy.wasm");
    std::fs::write(&wasm, egress_proxy::policy::BUILTIN_POLICY).expect("write module");
    let out = proxy(&["policy", "compile", wasm.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cwasm = dir.path().join("policy.cwasm");
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "compiled {} (sha256 {}, egress:policy@0.2.0) to {}",
            wasm.display(),
            egress_proxy::policy::sha256_hex(egress_proxy::policy::BUILTIN_POLICY),
            cwasm.display()
        )),
        "{text}"
    );
    let artifact = std::fs::read(&cwasm).expect("artifact written");
    assert!(artifact.starts_with(b"\x7fELF"));
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("list").count(),
        2,
        "no partial file left behind"
    );

    let cwasm_arg = cwasm.to_str().expect("utf-8");
    let out = proxy(&[
        "policy",
        "check",
        "--routes",
        "examples/routes.yaml",
        "--policy",
        cwasm_arg,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("compiled: ahead of time (a policy compile artifact)"),
        "{text}"
    );
    assert!(text.contains("rules:   7"), "{text}");
    let out = proxy(&[
        "policy",
        "test",
        "--routes",
        "examples/routes.yaml",
        "--policy",
        cwasm_arg,
        "examples/cases.yaml",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("36 passed, 0 failed"),
        "{}",
        stdout(&out)
    );

    // The same artifact as another wasmtime major version would have written it.
    let needle = [&[0u8, 2][..], b"48"].concat();
    let at = artifact
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the artifact names its wasmtime version");
    let mut stale = artifact.clone();
    stale[at + 2..at + 4].copy_from_slice(b"47");
    let stale_path = dir.path().join("stale.cwasm");
    std::fs::write(&stale_path, &stale).expect("write");
    let out = proxy(&[
        "policy",
        "check",
        "--routes",
        "examples/routes.yaml",
        "--policy",
        stale_path.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("stale.cwasm is a precompiled artifact this proxy cannot load"),
        "{err}"
    );
    assert!(err.contains("egress-proxy policy compile"), "{err}");

    // Compiling an artifact, or something that is not a component, is refused.
    let out = proxy(&["policy", "compile", cwasm_arg, "-o", "/dev/null"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already a precompiled artifact"),
        "{}",
        stderr(&out)
    );
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").expect("write");
    let out = proxy(&["policy", "compile", junk.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("junk.wasm is not a valid WebAssembly component"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("junk.cwasm").exists());
}
