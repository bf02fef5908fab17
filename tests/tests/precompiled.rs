//! The policy's machine code in a real `egress-proxy run`: the built-in policy loads
//! precompiled (nothing compiled in the proxy process); a module file is compiled by a
//! child process at start-up and on reload, and a reload whose child fails keeps the
//! old generation serving; a `policy compile` artifact given to `--policy` loads as is.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use egress_proxy::policy::{BUILTIN_POLICY, sha256_hex};
use egress_proxy_tests::process::RunningProxy;

const ROUTES: &str = "routes:\n  - host: a.example\n";

fn http(address: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn metrics(proxy: &RunningProxy) -> String {
    http(
        &proxy.admin,
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
}

fn assert_metric(proxy: &RunningProxy, line: &str) {
    let metrics = metrics(proxy);
    assert!(metrics.contains(line), "{line} in\n{metrics}");
}

/// A plain-HTTP request for an unrouted host: the policy's deny. Returns the policy
/// hash the deny body names (which module decided).
fn denied_by(proxy: &RunningProxy) -> String {
    denied_at(&proxy.listen)
}

fn denied_at(listen: &str) -> String {
    let response = http(
        listen,
        "GET http://b.example/ HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    let body = response.split_once("\r\n\r\n").unwrap().1;
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    body["policy"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned()
}

fn listening(proxy: &mut RunningProxy) -> serde_json::Value {
    proxy
        .events()
        .into_iter()
        .find(|e| e["message"] == "egress-proxy listening")
        .unwrap()
}

/// The built-in component with a custom section appended: the same policy, another
/// module (another hash).
fn builtin_variant(tag: &str) -> Vec<u8> {
    let name = b"egress-proxy-test";
    let payload = tag.as_bytes();
    let size = 1 + name.len() + payload.len();
    assert!(size < 128, "one-byte LEB128 sizes");
    let mut module = BUILTIN_POLICY.to_vec();
    module.extend_from_slice(&[
        0,
        u8::try_from(size).unwrap(),
        u8::try_from(name.len()).unwrap(),
    ]);
    module.extend_from_slice(name);
    module.extend_from_slice(payload);
    module
}

/// Replace a file by rename, as a deployment does.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn the_builtin_policy_starts_without_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, ROUTES).unwrap();
    let mut proxy = RunningProxy::start(&routes, &dir.path().join("state"), &[], &[]);
    assert_eq!(listening(&mut proxy)["policy_compiled"], "build");
    assert_eq!(denied_by(&proxy), sha256_hex(BUILTIN_POLICY));
    assert_metric(&proxy, "egress_proxy_policy_compiled_in_process_total 0");
    assert_metric(&proxy, "egress_proxy_policy_artifacts_loaded_total 1");
}

#[test]
fn a_module_file_is_compiled_in_a_child_and_reloads_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, ROUTES).unwrap();
    let module = dir.path().join("policy.wasm");
    let first = builtin_variant("one");
    std::fs::write(&module, &first).unwrap();
    let mut proxy = RunningProxy::start(
        &routes,
        &dir.path().join("state"),
        &["--policy", module.to_str().unwrap()],
        &[],
    );
    assert_eq!(listening(&mut proxy)["policy_compiled"], "child");
    assert_eq!(denied_by(&proxy), sha256_hex(&first));
    assert_metric(&proxy, "egress_proxy_policy_compiled_in_process_total 0");
    assert_metric(&proxy, "egress_proxy_policy_compiled_in_child_total 1");

    // Requests keep being decided while reloads compile in the child.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, served, listen) = (stop.clone(), served.clone(), proxy.listen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                denied_at(&listen);
                served.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // Not a component: the child fails, the reload fails, the old module serves.
    replace(&module, b"not wasm at all");
    let failed = proxy.wait_for("policy reload failed; the previous generation keeps serving");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("policy.wasm could not be compiled"),
        "{error}"
    );
    assert!(
        error.contains("not a valid WebAssembly component"),
        "{error}"
    );
    assert_eq!(denied_by(&proxy), sha256_hex(&first));

    // A new module: compiled by a child, published.
    let second = builtin_variant("two");
    replace(&module, &second);
    let reloaded = proxy.wait_for("policy reloaded");
    assert_eq!(reloaded["policy_compiled"], "child");
    assert_eq!(denied_by(&proxy), sha256_hex(&second));
    stop.store(true, Ordering::Relaxed);
    load.join()
        .expect("every request during the reloads was denied by a policy");
    assert!(served.load(Ordering::Relaxed) > 0);
    assert_metric(&proxy, "egress_proxy_policy_compiled_in_process_total 0");
    assert_metric(&proxy, "egress_proxy_policy_compiled_in_child_total 2");
    assert_metric(&proxy, "egress_proxy_reloads_failed_total 1");
}

#[test]
fn run_loads_a_policy_compile_artifact_and_refuses_a_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, ROUTES).unwrap();
    let wasm = dir.path().join("policy.wasm");
    std::fs::write(&wasm, BUILTIN_POLICY).unwrap();
    let cwasm = dir.path().join("policy.cwasm");
    let compiled = Command::new(egress_proxy_tests::proxy_bin())
        .args(["policy", "compile"])
        .arg(&wasm)
        .arg("-o")
        .arg(&cwasm)
        .output()
        .unwrap();
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let artifact = std::fs::read(&cwasm).unwrap();
    let mut proxy = RunningProxy::start(
        &routes,
        &dir.path().join("state"),
        &["--policy", cwasm.to_str().unwrap()],
        &[],
    );
    assert_eq!(listening(&mut proxy)["policy_compiled"], "artifact");
    // A given artifact is identified by its own hash.
    assert_eq!(denied_by(&proxy), sha256_hex(&artifact));
    assert_metric(&proxy, "egress_proxy_policy_compiled_in_process_total 0");
    assert_metric(&proxy, "egress_proxy_policy_compiled_in_child_total 0");
    drop(proxy);

    // Truncated: wasmtime refuses it before using any of it; start-up fails clearly.
    std::fs::write(&cwasm, &artifact[..artifact.len() / 3]).unwrap();
    let output = Command::new(egress_proxy_tests::proxy_bin())
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--routes")
        .arg(&routes)
        .arg("--policy")
        .arg(&cwasm)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("policy.cwasm is a precompiled artifact this proxy cannot load"),
        "{stderr}"
    );
}
