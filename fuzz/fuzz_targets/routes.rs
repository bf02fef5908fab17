//! Routes files, end to end: arbitrary bytes → the host's loader
//! (`RoutesDocument::from_bytes`, YAML/JSON → compact JSON) → the default policy's
//! parser (`policy_guest::Routes::parse`) → `summary` and `decide`.
//!
//! The policy parser is fed both the raw input (when it is UTF-8: a custom host or a
//! test may hand it any text) and the JSON the host produced (what it really gets).
//! When a document is accepted, `decide` runs on a few fixed requests plus requests
//! aimed at the document's own hosts, ports and allowlisted paths, so the deeper
//! decision steps (port, path normalisation, credentials) are reached too.
//!
//! Nothing may panic; the verdict invariants checked below hold for every request.

#![no_main]

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use egress_proxy::routes::RoutesDocument;
use libfuzzer_sys::fuzz_target;
use policy_guest::{Part, Request, Routes, Scheme, Verdict};
use serde_json::Value;

/// Routes whose hosts get derived requests (bounds the work per input).
const MAX_ROUTES_PROBED: usize = 8;
/// Allowlist entries per route that get derived requests.
const MAX_PATHS_PROBED: usize = 4;

fuzz_target!(|data: &[u8]| {
    let doc = RoutesDocument::from_bytes(data, Path::new("routes.yaml"));
    if let Ok(text) = std::str::from_utf8(data) {
        exercise(text, None);
    }
    if let Ok(doc) = doc {
        assert_eq!(doc.sha256.len(), 64, "sha256 must be 64 hex digits");
        let value: Value = serde_json::from_str(&doc.json)
            .unwrap_or_else(|e| panic!("the host produced invalid JSON ({e}): {}", doc.json));
        exercise(&doc.json, Some(&value));
    }
});

/// Parse `json` as the policy does; if accepted, summarise and decide. `value` is the
/// document already parsed as JSON, if the caller has it (used to aim requests).
fn exercise(json: &str, value: Option<&Value>) {
    let Ok(routes) = Routes::parse(json) else {
        return;
    };
    let summary = routes.summary();
    assert!(
        summary.secrets.windows(2).all(|w| w[0] < w[1]),
        "summary secrets must be sorted and unique: {:?}",
        summary.secrets
    );

    for request in fixed_requests() {
        check(&routes, &request);
    }

    let parsed;
    let value = match value {
        Some(value) => value,
        None => match serde_json::from_str::<Value>(json) {
            Ok(v) => {
                parsed = v;
                &parsed
            }
            Err(_) => return,
        },
    };
    for request in derived_requests(value) {
        check(&routes, &request);
    }
}

/// Decide `request` and check what every verdict must satisfy.
fn check(routes: &Routes, request: &Request) {
    let verdict = routes.decide(request);
    // `decide` is documented as pure.
    assert_eq!(
        verdict,
        routes.decide(request),
        "decide is not pure for {request:?}"
    );
    match &verdict {
        Verdict::Allow { rule } => {
            assert!(rule.is_some(), "allow without a rule: {request:?}");
        }
        Verdict::Deny { status, reason, .. } => {
            assert!(
                (400..600).contains(status),
                "deny status {status}: {request:?}"
            );
            assert!(!reason.is_empty(), "deny without a reason: {request:?}");
        }
        Verdict::Report {
            status,
            reason,
            rule,
        } => {
            // Only a `report: true` route reports, naming itself.
            assert!(rule.is_some(), "report without a rule: {request:?}");
            assert!(
                (400..600).contains(status),
                "report status {status}: {request:?}"
            );
            assert!(!reason.is_empty(), "report without a reason: {request:?}");
        }
        Verdict::NeedBody { max_bytes, .. } => {
            // Only a `max_body_bytes` route asks, for one byte more than its limit.
            assert!(*max_bytes > 0, "need-body for nothing: {request:?}");
            assert!(
                request.method != "CONNECT",
                "need-body for a CONNECT: {request:?}"
            );
        }
        Verdict::Inject { headers, rule } => {
            assert!(rule.is_some(), "inject without a rule: {request:?}");
            assert!(!headers.is_empty(), "inject without headers: {request:?}");
            // A CONNECT is decided before credentials (step 3 of `decide`).
            assert!(
                request.method != "CONNECT",
                "credentials injected into a CONNECT: {request:?}"
            );
            for header in headers {
                assert!(
                    header.value.iter().any(|p| matches!(p, Part::Secret(_))),
                    "injected header without a secret: {header:?}"
                );
            }
        }
    }
}

fn client() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50000)
}

fn request(scheme: Scheme, method: &'static str, host: &str, port: u16, path: &str) -> Request {
    Request {
        scheme,
        method: Cow::Borrowed(method),
        host: host.to_owned(),
        port,
        path: path.to_owned(),
        client: client(),
    }
}

/// Requests independent of the document (the doc example and its neighbours).
fn fixed_requests() -> Vec<Request> {
    vec![
        request(Scheme::Https, "GET", "api.github.com", 443, "/user"),
        request(
            Scheme::Https,
            "GET",
            "api.github.com",
            443,
            "/repos/acme/widget?x=1",
        ),
        request(
            Scheme::Https,
            "GET",
            "api.github.com",
            443,
            "/repos/acme/../other",
        ),
        request(
            Scheme::Https,
            "GET",
            "api.github.com",
            443,
            "/repos/acme/%2e%2e/other",
        ),
        request(Scheme::Http, "POST", "api.github.com", 80, "/repos/acme/x"),
        request(Scheme::Https, "CONNECT", "api.github.com", 443, ""),
        request(
            Scheme::Https,
            "GET",
            "files.pythonhosted.org",
            443,
            "/packages/a",
        ),
        request(Scheme::Https, "GET", "API.GitHub.COM.", 443, "/"),
        request(Scheme::Https, "GET", "::1", 443, "/"),
        request(Scheme::Https, "GET", "[::1]", 443, "/"),
        request(Scheme::Http, "GET", "127.0.0.1", 8080, "relative"),
        request(Scheme::Https, "GET", "", 0, ""),
    ]
}

/// Requests aimed at the document's own routes: each route's host (a wildcard's
/// `*` replaced by a label), its ports or the defaults, and its allowlisted paths
/// with a few tricks appended.
fn derived_requests(value: &Value) -> Vec<Request> {
    let Some(routes) = value.get("routes").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for route in routes.iter().take(MAX_ROUTES_PROBED) {
        let Some(pattern) = route.get("host").and_then(Value::as_str) else {
            continue;
        };
        let host = match pattern.strip_prefix("*.") {
            Some(suffix) => format!("a.{suffix}"),
            None => pattern.to_owned(),
        };
        let mut ports: Vec<u16> = route
            .get("ports")
            .and_then(Value::as_array)
            .map(|ports| {
                ports
                    .iter()
                    .filter_map(Value::as_u64)
                    .filter_map(|p| u16::try_from(p).ok())
                    .take(2)
                    .collect()
            })
            .unwrap_or_default();
        ports.extend([443, 80]);
        let mut paths: Vec<String> = vec!["/".to_owned()];
        if let Some(list) = route.get("path_allowlist").and_then(Value::as_array) {
            for entry in list.iter().filter_map(Value::as_str).take(MAX_PATHS_PROBED) {
                paths.push(entry.to_owned());
                paths.push(format!("{entry}x?q=1"));
                paths.push(format!("{entry}../y"));
                paths.push(format!("{entry}%2F..%2Fy"));
            }
        }
        out.push(request(Scheme::Https, "CONNECT", &host, ports[0], ""));
        for &port in &ports {
            out.push(request(Scheme::Https, "GET", &host, port, "/"));
            out.push(request(Scheme::Http, "GET", &host, port, "/"));
        }
        for path in &paths {
            out.push(request(Scheme::Https, "GET", &host, ports[0], path));
        }
    }
    out
}
