//! The body phase's policy cost, through the compiled `body` fixture (a 0.2.0
//! component), in one run: `decide-body` on a 64 KiB body that the guest reads in
//! 16 KiB slices without looking at the bytes (the boundary's own cost: four `read`
//! calls, each copying a slice into the guest), the same body read and scanned byte by
//! byte (a sum and a word search: what a simple policy adds), and the head-only
//! `decide` of the same request (which answers `need-body`); and the built-in
//! policy's `git` rule on a 64 KiB `git-receive-pack` body updating 3 refs.
//!
//! Run: `cargo bench -p egress-proxy-tests --bench decide_body`

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

use std::sync::Arc;

use egress_proxy::policy::{
    Generation, Head, PolicyBody, Request, Runtime, RuntimeConfig, Scheme, Verdict,
};
use egress_proxy_tests::{BODY_WASM, MapSecrets};

fn main() {
    divan::main();
}

fn generation() -> (Runtime, Generation) {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let generation = runtime
        .load_file(std::path::Path::new(BODY_WASM))
        .unwrap()
        .configure("{}", Arc::new(MapSecrets::default()))
        .unwrap();
    (runtime, generation)
}

fn request(host: &str) -> Request {
    Request {
        scheme: Scheme::Https,
        method: "POST".into(),
        host: host.into(),
        port: 443,
        path: "/v1/upload".into(),
        headers: vec![
            (
                "content-type".to_owned(),
                "application/octet-stream".to_owned(),
            ),
            ("content-length".to_owned(), "65536".to_owned()),
        ]
        .into(),
        client: "10.0.0.2:51234".parse().unwrap(),
    }
}

fn body_64k() -> PolicyBody {
    PolicyBody::complete(
        (0..65536u32)
            .map(|i| 128 + (i % 128) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn bench_body(bencher: divan::Bencher, host: &str) {
    let (_runtime, generation) = generation();
    let req = request(host);
    let body = body_64k();
    match generation.evaluate_body(&req, &body) {
        Verdict::Allow { annotations, .. } => assert_eq!(annotations[0].value, "65536"),
        other => panic!("{other:?}"),
    }
    bencher.bench(|| generation.evaluate_body(divan::black_box(&req), &body));
}

/// `decide-body` on 64 KiB read in four 16 KiB `read` calls, no byte looked at.
#[divan::bench(sample_count = 200, sample_size = 50)]
fn decide_body_64k_read(bencher: divan::Bencher) {
    bench_body(bencher, "slices.test");
}

/// The same, with every byte summed and searched for a word.
#[divan::bench(sample_count = 200, sample_size = 20)]
fn decide_body_64k_read_and_scan(bencher: divan::Bencher) {
    bench_body(bencher, "body.test");
}

/// The head phase of the same request: `decide` answering `need-body`.
#[divan::bench(sample_count = 200, sample_size = 500)]
fn decide_head_need_body(bencher: divan::Bencher) {
    let (_runtime, generation) = generation();
    let req = request("body.test");
    assert!(matches!(generation.evaluate_head(&req), Head::NeedBody(_)));
    bencher.bench(|| generation.evaluate_head(divan::black_box(&req)));
}

/// The built-in policy's `git` rule: `decide-body` on a 64 KiB push (3 ref updates,
/// then the pack), every ref checked against the push patterns.
#[divan::bench(sample_count = 200, sample_size = 50)]
fn decide_body_git_push_64k_3_refs(bencher: divan::Bencher) {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let generation = runtime
        .load_builtin()
        .unwrap()
        .configure(
            r#"{"routes": [{"host": "github.com", "git": {"push": ["refs/heads/agent/*"]}}]}"#,
            Arc::new(MapSecrets::default()),
        )
        .unwrap();
    let mut req = request("github.com");
    req.path = "/acme/widget.git/git-receive-pack".into();
    let mut body = Vec::new();
    for (index, name) in ["a", "b", "c"].iter().enumerate() {
        let caps = if index == 0 {
            "\0report-status side-band-64k agent=git/2.47"
        } else {
            ""
        };
        let line = format!(
            "{} {} refs/heads/agent/{name}{caps}\n",
            "1".repeat(40),
            "2".repeat(40)
        );
        body.extend_from_slice(format!("{:04x}{line}", line.len() + 4).as_bytes());
    }
    body.extend_from_slice(b"0000PACK");
    body.resize(65536, 0x5a);
    let body = PolicyBody::complete(body);
    assert!(matches!(
        generation.evaluate_body(&req, &body),
        Verdict::Allow { .. }
    ));
    bencher.bench(|| generation.evaluate_body(divan::black_box(&req), &body));
}
