//! The `state` import through compiled components: one store per runtime, shared by
//! every instance of every generation (so a reload keeps a limit), atomic under
//! concurrent calls, and fail-closed on keys it cannot track.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use egress_proxy::policy::{Generation, Request, Runtime, Scheme, Verdict};
use egress_proxy_tests::{BODY_WASM, MapSecrets, test_runtime};

fn body_fixture(runtime: &Runtime) -> Generation {
    runtime
        .load_file(Path::new(BODY_WASM))
        .unwrap()
        .configure("{}", Arc::new(MapSecrets::default()))
        .unwrap()
}

fn rate(path: &str) -> Request {
    Request {
        scheme: Scheme::Https,
        method: "GET".into(),
        host: "rate.test".into(),
        port: 443,
        path: path.into(),
        headers: vec![("x-refill".to_owned(), "0".to_owned())].into(),
        client: "127.0.0.1:1".parse().unwrap(),
    }
}

fn passes(generation: &Generation, path: &str) -> bool {
    match generation.evaluate(&rate(path)) {
        Verdict::Allow { .. } => true,
        Verdict::Deny(denial) => {
            assert_eq!(denial.status, 429, "{denial:?}");
            let retry = denial.headers.iter().find(|(n, _)| n == "retry-after");
            assert!(retry.is_some(), "{denial:?}");
            false
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_generations_share_one_bucket() {
    let runtime = test_runtime();
    let old = body_fixture(&runtime);
    let new = body_fixture(&runtime).numbered(2);
    for _ in 0..3 {
        assert!(passes(&old, "/shared"));
    }
    // The reload's generation (other instances, same runtime) sees what is left.
    assert!(passes(&new, "/shared"));
    assert!(passes(&new, "/shared"));
    assert!(!passes(&new, "/shared"));
    assert!(!passes(&old, "/shared"));
    // Another key has its own bucket.
    assert!(passes(&new, "/other"));
    // Another runtime (another process) starts afresh.
    assert!(passes(&body_fixture(&test_runtime()), "/shared"));
}

#[test]
fn concurrent_calls_on_many_instances_pass_exactly_the_capacity() {
    let runtime = test_runtime();
    let generation = body_fixture(&runtime);
    generation.prewarm(4).unwrap();
    let passed = AtomicUsize::new(0);
    let barrier = std::sync::Barrier::new(8);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                barrier.wait();
                for _ in 0..25 {
                    if passes(&generation, "/concurrent") {
                        passed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(passed.load(Ordering::Relaxed), 5);
    assert!(
        generation.idle_instances() >= 2,
        "several instances decided"
    );
}

#[test]
fn a_windowed_counter_counts_across_calls_and_annotates() {
    let runtime = test_runtime();
    let generation = body_fixture(&runtime);
    let count = |n: u64| {
        let mut req = rate("/w");
        req.host = "count.test".into();
        match generation.evaluate(&req) {
            Verdict::Allow { annotations, .. } => {
                assert_eq!(annotations[0].key, "total");
                assert_eq!(annotations[0].value, n.to_string());
                true
            }
            Verdict::Deny(d) => {
                assert_eq!(d.status, 429);
                false
            }
            other => panic!("{other:?}"),
        }
    };
    assert!(count(1));
    assert!(count(2));
    assert!(count(3));
    assert!(!count(4));
    assert_eq!(runtime.state().len(), 1);
}

#[test]
fn invalid_annotations_and_deny_headers_are_refused() {
    let runtime = test_runtime();
    let generation = body_fixture(&runtime);
    for host in ["notes.test", "badresp.test"] {
        let mut req = rate("/");
        req.host = host.into();
        match generation.evaluate(&req) {
            Verdict::Deny(d) => {
                assert_eq!(d.kind.as_str(), "invalid_verdict", "{host}: {d:?}");
            }
            other => panic!("{host}: {other:?}"),
        }
    }
}
