//! `decide()` through the policy runtime, for the built-in policy with 20 routes and
//! a request carrying 8 headers; the same decision made natively by the policy's Rust
//! logic (the floor the runtime's overhead is measured against, in the same run); and
//! the cost of creating one configured instance.
//!
//! Run: `cargo bench -p egress-proxy --bench decide`

#![expect(
    clippy::expect_used,
    reason = "a benchmark that cannot set up should stop loudly"
)]

use std::sync::Arc;

use egress_proxy::policy::{Generation, Head, Request, Runtime, RuntimeConfig, Scheme};
use egress_proxy::secrets::EnvSecrets;

fn main() {
    divan::main();
}

/// 20 routes: a mix of exact hosts with path allowlists and credentials, and wildcards.
fn routes_json() -> String {
    let mut routes = Vec::new();
    for i in 0..16 {
        routes.push(serde_json::json!({
            "host": format!("api{i}.example.com"),
            "path_allowlist": [format!("/v1/org{i}/"), "/v1/shared/"],
            "auth": { "scheme": "Bearer", "token_ref": format!("TOKEN_{i}") },
        }));
    }
    for suffix in [
        "pythonhosted.org",
        "pypi.org",
        "crates.io",
        "githubusercontent.com",
    ] {
        routes.push(serde_json::json!({ "host": format!("*.{suffix}") }));
    }
    serde_json::json!({ "routes": routes }).to_string()
}

fn request() -> Request {
    let headers = [
        ("accept", "application/vnd.github+json"),
        ("user-agent", "agent/1.0 (sandbox)"),
        ("accept-encoding", "gzip, br"),
        ("content-type", "application/json"),
        ("x-request-id", "6f1c0f7e-7d4c-4b7a-9a53-1f0e4a8c2b11"),
        ("x-github-api-version", "2022-11-28"),
        ("if-none-match", "\"abc123\""),
        ("cache-control", "no-cache"),
    ];
    Request {
        scheme: Scheme::Https,
        method: "GET".into(),
        host: "api15.example.com".into(),
        port: 443,
        path: "/v1/org15/repos/widget/issues?state=open&per_page=100".into(),
        headers: headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        client: "10.0.0.2:51234".parse().expect("address"),
    }
}

fn generation(runtime: &Runtime) -> Generation {
    let module = runtime.load_builtin().expect("built-in policy loads");
    module
        .configure(&routes_json(), Arc::new(EnvSecrets))
        .expect("routes accepted")
}

/// One head-only `evaluate_head` (checkout, call, validate, return) on a warm pool:
/// the built-in policy speaks `egress:policy@0.2.0` and never asks for a body.
#[divan::bench(sample_count = 200, sample_size = 500)]
fn decide(bencher: divan::Bencher) {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let generation = generation(&runtime);
    let req = request();
    match generation.evaluate_head(&req) {
        Head::Decided(verdict) => assert_eq!(verdict.kind(), "inject"),
        Head::NeedBody(need) => panic!("the built-in policy asked for a body: {need:?}"),
    }
    bencher.bench(|| generation.evaluate_head(divan::black_box(&req)));
}

/// The same request decided by `policy-guest`'s Rust logic compiled natively: no
/// wasm, no canonical ABI, no pool.
#[divan::bench(sample_count = 200, sample_size = 500)]
fn decide_native(bencher: divan::Bencher) {
    let routes = policy_guest::Routes::parse(&routes_json()).expect("routes accepted");
    let req = request();
    let req = policy_guest::Request {
        scheme: policy_guest::Scheme::Https,
        method: req.method.into(),
        host: req.host,
        port: req.port,
        path: req.path,
        client: req.client,
    };
    bencher.bench(|| routes.decide(divan::black_box(&req)));
}

/// Instantiate the component and run `configure` with the 20 routes.
#[divan::bench(sample_count = 100, sample_size = 5)]
fn new_configured_instance(bencher: divan::Bencher) {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let module = runtime.load_builtin().expect("built-in policy loads");
    let routes = routes_json();
    bencher.bench(|| {
        module
            .configure(divan::black_box(&routes), Arc::new(EnvSecrets))
            .expect("routes accepted")
    });
}
