//! The compiled fixture guests through the host runtime: every misbehaviour denies
//! that request (fail closed), is counted, and the generation keeps serving.

use std::path::Path;
use std::sync::atomic::Ordering;

use egress_proxy::policy::{Decision, DenyKind, Head, PolicyError, PolicyStats, Verdict};
use egress_proxy_tests::{MapSecrets, WRONG_VERSION_WASM, get, misbehave, test_runtime};

const ROUTES: &str = r#"{"mode":"ok"}"#;

fn assert_fault(verdict: &Verdict) {
    match verdict {
        Verdict::Deny(d) => {
            assert_eq!(d.kind, DenyKind::PolicyFault, "{d:?}");
            assert_eq!(d.status, 403);
            assert!(d.reason.contains("fail closed"), "{}", d.reason);
        }
        other => panic!("expected a fault deny, got {other:?}"),
    }
}

fn assert_still_serving(generation: &egress_proxy::policy::Generation) {
    assert_eq!(
        generation.evaluate(&get("fine.test")),
        Verdict::Allow {
            rule: Some("fixture".into()),
            annotations: Vec::new(),
        }
    );
}

#[test]
fn infinite_loop_times_out_and_denies() {
    let runtime = test_runtime();
    let generation = misbehave(&runtime, ROUTES, MapSecrets::default());
    let started = std::time::Instant::now();
    assert_fault(&generation.evaluate(&get("loop.test")));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(PolicyStats::get(&runtime.stats().timeouts), 1);
    assert_eq!(PolicyStats::get(&runtime.stats().instances_discarded), 1);
    assert_still_serving(&generation);
}

#[test]
fn panic_traps_and_denies() {
    let runtime = test_runtime();
    let generation = misbehave(&runtime, ROUTES, MapSecrets::default());
    assert_fault(&generation.evaluate(&get("panic.test")));
    assert_eq!(PolicyStats::get(&runtime.stats().traps), 1);
    assert_still_serving(&generation);
}

#[test]
fn unbounded_allocation_hits_the_memory_limit_and_denies() {
    let runtime = test_runtime();
    let generation = misbehave(&runtime, ROUTES, MapSecrets::default());
    assert_fault(&generation.evaluate(&get("alloc.test")));
    assert_eq!(PolicyStats::get(&runtime.stats().traps), 1);
    assert_still_serving(&generation);
}

#[test]
fn unbounded_recursion_denies() {
    let runtime = test_runtime();
    let generation = misbehave(&runtime, ROUTES, MapSecrets::default());
    assert_fault(&generation.evaluate(&get("recurse.test")));
    assert_still_serving(&generation);
}

#[test]
fn a_faulted_instance_is_discarded_not_reused() {
    let runtime = test_runtime();
    let generation = misbehave(&runtime, ROUTES, MapSecrets::default());
    // The counter fixture reports how many calls its instance has served.
    assert_eq!(generation.evaluate(&get("state.test")).rule(), Some("1"));
    assert_eq!(generation.evaluate(&get("state.test")).rule(), Some("2"));
    assert_fault(&generation.evaluate(&get("panic.test")));
    assert_eq!(generation.evaluate(&get("state.test")).rule(), Some("1"));
}

#[test]
fn configure_runs_once_per_instance_not_per_request() {
    let runtime = test_runtime();
    let generation = misbehave(&runtime, ROUTES, MapSecrets::default());
    for _ in 0..50 {
        generation.evaluate(&get("fine.test"));
    }
    assert_eq!(PolicyStats::get(&runtime.stats().instances_created), 1);
}

#[test]
fn wrong_wit_version_is_refused_naming_every_version_spoken() {
    let runtime = test_runtime();
    let serving = misbehave(&runtime, ROUTES, MapSecrets::default());
    let err = runtime
        .load_file(Path::new(WRONG_VERSION_WASM))
        .expect_err("a 0.3.0 guest must be refused");
    assert!(matches!(err, PolicyError::WrongVersion { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("built against egress:policy@0.3.0"), "{msg}");
    assert!(
        msg.contains("speaks egress:policy@0.2.0 or @0.1.0"),
        "{msg}"
    );
    // A failed load leaves what was already serving untouched.
    assert_still_serving(&serving);
}

#[test]
fn configure_rejection_is_reported() {
    let runtime = test_runtime();
    let module = runtime
        .load_file(Path::new(egress_proxy_tests::MISBEHAVE_WASM))
        .unwrap();
    let err = module
        .configure(
            r#"{"mode":"reject"}"#,
            std::sync::Arc::new(MapSecrets::default()),
        )
        .expect_err("the fixture rejects mode=reject");
    assert!(matches!(err, PolicyError::Rejected(_)), "{err:?}");
    assert!(
        err.to_string().contains("fixture rejects these routes"),
        "{err}"
    );
}

#[test]
fn not_a_component_is_refused() {
    let runtime = test_runtime();
    let err = runtime
        .load_bytes(b"\0asm\x01\0\0\0", "core-module.wasm".into())
        .expect_err("a core module is not a policy component");
    assert!(err.to_string().contains("core-module.wasm"), "{err}");
    let err = runtime
        .load_bytes(b"hello", "text.wasm".into())
        .expect_err("garbage");
    assert!(matches!(err, PolicyError::Compile { .. }), "{err:?}");
}

fn invalid_verdict(host: &str, needle: &str) {
    let runtime = test_runtime();
    let generation = misbehave(
        &runtime,
        ROUTES,
        MapSecrets::with("FIXTURE_SECRET", "s3cret"),
    );
    match generation.evaluate(&get(host)) {
        Verdict::Deny(d) => {
            assert_eq!(d.kind, DenyKind::InvalidVerdict, "{d:?}");
            assert!(d.reason.contains(needle), "{}", d.reason);
            assert!(!d.reason.contains('\n') && !d.reason.contains('\r'));
        }
        other => panic!("{host}: expected an invalid-verdict deny, got {other:?}"),
    }
    assert_eq!(PolicyStats::get(&runtime.stats().invalid_verdicts), 1);
    assert_still_serving(&generation);
}

#[test]
fn header_value_with_crlf_is_refused() {
    invalid_verdict("badheader.test", "not a valid header value");
}

#[test]
fn hop_by_hop_header_is_refused() {
    invalid_verdict("hopbyhop.test", "`connection`");
}

#[test]
fn host_header_is_refused() {
    invalid_verdict("hostheader.test", "`host`");
}

#[test]
fn undeclared_secret_is_refused() {
    invalid_verdict("undeclared.test", "did not declare");
}

#[test]
fn deny_status_outside_4xx_5xx_becomes_403() {
    let runtime = test_runtime();
    let generation = misbehave(&runtime, ROUTES, MapSecrets::default());
    match generation.evaluate(&get("status.test")) {
        Verdict::Deny(d) => assert_eq!(d.status, 403),
        other => panic!("{other:?}"),
    }
}

#[test]
fn declared_secret_is_resolved_by_the_host() {
    let runtime = test_runtime();
    let generation = misbehave(
        &runtime,
        ROUTES,
        MapSecrets::with("FIXTURE_SECRET", "s3cret"),
    );
    match generation.decide(&get("secret.test")) {
        Head::NeedBody(need) => panic!("misbehave never asks for a body: {need:?}"),
        Head::Decided(Decision::Inject { headers, .. }) => {
            assert_eq!(headers.len(), 1);
            assert_eq!(headers[0].0, "authorization");
            assert_eq!(headers[0].1, "Bearer s3cret");
            assert!(headers[0].1.is_sensitive());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_or_empty_secret_is_credential_unavailable() {
    for secrets in [
        MapSecrets::default(),
        MapSecrets::with("FIXTURE_SECRET", ""),
    ] {
        let runtime = test_runtime();
        let generation = misbehave(&runtime, ROUTES, secrets);
        match generation.decide(&get("secret.test")) {
            Head::NeedBody(need) => panic!("misbehave never asks for a body: {need:?}"),
            Head::Decided(Decision::Deny(d)) => {
                assert_eq!(d.kind, DenyKind::CredentialUnavailable);
                assert_eq!(d.status, 403);
                assert!(d.reason.contains("credential unavailable"), "{}", d.reason);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn secret_that_is_not_a_header_value_is_credential_unavailable() {
    let runtime = test_runtime();
    let generation = misbehave(
        &runtime,
        ROUTES,
        MapSecrets::with("FIXTURE_SECRET", "a\r\nx-evil: 1"),
    );
    match generation.decide(&get("secret.test")) {
        Head::NeedBody(need) => panic!("misbehave never asks for a body: {need:?}"),
        Head::Decided(Decision::Deny(d)) => assert_eq!(d.kind, DenyKind::CredentialUnavailable),
        other => panic!("{other:?}"),
    }
}

#[test]
fn concurrent_decides_share_the_pool() {
    let runtime = test_runtime();
    let generation = misbehave(&runtime, ROUTES, MapSecrets::default());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..200 {
                    assert_still_serving(&generation);
                }
            });
        }
    });
    let created = runtime.stats().instances_created.load(Ordering::Relaxed);
    assert!(
        (1..=8).contains(&created),
        "{created} instances for 8 threads"
    );
    assert_eq!(PolicyStats::get(&runtime.stats().decisions), 1600);
}

#[test]
fn retired_generation_releases_its_instances() {
    let runtime = test_runtime();
    let generation = misbehave(&runtime, ROUTES, MapSecrets::default());
    generation.prewarm(4).unwrap();
    assert_eq!(generation.idle_instances(), 4);
    generation.retire();
    assert_eq!(generation.idle_instances(), 0);
    // Still answers (in-flight requests finish), but keeps nothing.
    assert_still_serving(&generation);
    assert_eq!(generation.idle_instances(), 0);
}

fn with_headers(host: &str, headers: &[(&str, &str)]) -> egress_proxy::policy::Request {
    let mut req = get(host);
    req.headers = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    req
}

#[test]
fn the_guest_reads_headers_on_demand() {
    let runtime = test_runtime();
    let generation = misbehave(&runtime, ROUTES, MapSecrets::default());
    let req = with_headers(
        "echo.test",
        &[("x-echo", "one"), ("accept", "*/*"), ("x-echo", "two")],
    );
    assert_eq!(generation.evaluate(&req).rule(), Some("one,two"));
    let req = with_headers("entries.test", &[("a", "1"), ("b", "2")]);
    assert_eq!(generation.evaluate(&req).rule(), Some("a=1;b=2"));
    // No header: an empty list, not an error.
    assert_eq!(generation.evaluate(&get("echo.test")).rule(), Some(""));
}

#[test]
fn headers_never_carry_over_to_the_next_request() {
    let runtime = test_runtime();
    let generation = misbehave(&runtime, ROUTES, MapSecrets::default());
    for i in 0..20 {
        let value = format!("v{i}");
        let req = with_headers("echo.test", &[("x-echo", &value)]);
        assert_eq!(generation.evaluate(&req).rule(), Some(value.as_str()));
    }
    assert_eq!(PolicyStats::get(&runtime.stats().instances_created), 1);
}

#[test]
fn credentials_are_hidden_from_the_policy() {
    let runtime = test_runtime();
    let generation = misbehave(&runtime, ROUTES, MapSecrets::default());
    let target = egress_proxy::target::Target::from_url("https://entries.test/").unwrap();
    let req = egress_proxy::policy::Request::new(
        "GET",
        target,
        [
            ("Authorization".to_owned(), "Bearer agent".to_owned()),
            ("Proxy-Authorization".to_owned(), "Basic x".to_owned()),
            ("Connection".to_owned(), "keep-alive".to_owned()),
            ("X-Kept".to_owned(), "yes".to_owned()),
        ],
        "127.0.0.1:1".parse().unwrap(),
    );
    assert_eq!(generation.evaluate(&req).rule(), Some("x-kept=yes"));
}
