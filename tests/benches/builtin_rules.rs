//! The built-in policy's protocol rules, through the compiled component, in one run:
//! `decide-body` of a 2 KiB GraphQL query (JSON read, document parsed, operation
//! chosen, fields checked), of an MCP `tools/call`, and the
//! head-only `decide` of a plain route in the same routes document (which the new
//! keys must leave unchanged).
//!
//! Run: `cargo bench -p egress-proxy-tests --bench builtin_rules`

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

use std::sync::Arc;

use egress_proxy::policy::{
    Generation, Head, PolicyBody, Request, Runtime, RuntimeConfig, Scheme, Verdict,
};
use egress_proxy_tests::MapSecrets;

fn main() {
    divan::main();
}

const ROUTES: &str = r#"{"routes": [
    {"host": "api.github.com", "auth": {"scheme": "Bearer", "token_ref": "GH_PAT"},
     "graphql": {"operations": ["query", "mutation"], "mutations": ["addComment"]},
     "rate_limit": {"requests": 1000000000, "per": "1s"}},
    {"host": "mcp.example.com", "mcp": {"tools": ["search", "read_file"]}},
    {"host": "pypi.org", "methods": ["GET", "HEAD"], "path_allowlist": ["/simple/", "/pypi/"]}
]}"#;

fn generation() -> (Runtime, Generation) {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let secrets = MapSecrets::with("GH_PAT", "ghp_benchmark");
    let generation = runtime
        .load_builtin()
        .unwrap()
        .configure(ROUTES, Arc::new(secrets))
        .unwrap();
    (runtime, generation)
}

fn request(method: &str, host: &str, path: &str, content_type: &str) -> Request {
    Request {
        scheme: Scheme::Https,
        method: method.into(),
        host: host.into(),
        port: 443,
        path: path.into(),
        headers: vec![
            ("content-type".to_owned(), content_type.to_owned()),
            ("user-agent".to_owned(), "bench/1.0".to_owned()),
        ]
        .into(),
        client: "10.0.0.2:51234".parse().unwrap(),
    }
}

/// A realistic query of about 2 KiB: nested selections, arguments, a fragment.
fn graphql_2k() -> Vec<u8> {
    let mut fields = String::new();
    for i in 0..24 {
        fields.push_str(&format!(
            " issue{i}: issue(number: {i}) {{ title state author {{ login }} labels(first: 5) {{ nodes {{ name }} }} }}"
        ));
    }
    let query = format!(
        "query Dashboard($owner: String!, $name: String!) {{ repository(owner: $owner, name: $name) {{ ...Repo{fields} }} }} fragment Repo on Repository {{ name description stargazerCount }}"
    );
    let body = serde_json::json!({
        "query": query,
        "operationName": "Dashboard",
        "variables": {"owner": "acme", "name": "widgets"},
    });
    let text = body.to_string();
    assert!((1900..2600).contains(&text.len()), "{}", text.len());
    text.into_bytes()
}

fn bench_body(bencher: divan::Bencher, req: Request, body: Vec<u8>) {
    let (_runtime, generation) = generation();
    let body = PolicyBody::complete(body);
    assert!(matches!(generation.evaluate_head(&req), Head::NeedBody(_)));
    match generation.evaluate_body(&req, &body) {
        Verdict::Allow { .. } | Verdict::Inject { .. } => {}
        other => panic!("{other:?}"),
    }
    bencher.bench(|| generation.evaluate_body(divan::black_box(&req), &body));
}

/// `decide-body` of a 2 KiB GraphQL query (allowed, token injected).
#[divan::bench(sample_count = 200, sample_size = 20)]
fn graphql_query_2k(bencher: divan::Bencher) {
    let req = request("POST", "api.github.com", "/graphql", "application/json");
    bench_body(bencher, req, graphql_2k());
}

/// `decide-body` of one MCP `tools/call` (allowed).
#[divan::bench(sample_count = 200, sample_size = 50)]
fn mcp_tools_call(bencher: divan::Bencher) {
    let req = request("POST", "mcp.example.com", "/mcp", "application/json");
    let body = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"search","arguments":{"query":"egress proxy","limit":10}}}"#;
    bench_body(bencher, req, body.to_vec());
}

/// Head-only `decide` of a route without the new keys, in the same document.
#[divan::bench(sample_count = 500, sample_size = 100)]
fn head_only_plain_route(bencher: divan::Bencher) {
    let (_runtime, generation) = generation();
    let req = request("GET", "pypi.org", "/simple/requests/", "text/html");
    assert!(matches!(
        generation.evaluate_head(&req),
        Head::Decided(Verdict::Allow { .. })
    ));
    bencher.bench(|| generation.evaluate_head(divan::black_box(&req)));
}
