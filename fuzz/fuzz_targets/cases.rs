//! `policy test` case files: arbitrary UTF-8 → `CaseFile::parse` (YAML/JSON via
//! serde-saphyr, then every expected header template). For an accepted file, each
//! case's request is built the way `Case::run` builds it (`request_for`: URL or
//! CONNECT authority → `Target`), its expectation is compared with a few verdicts,
//! and its header templates must survive a display → parse round trip.
//!
//! Nothing may panic.

#![no_main]

use egress_proxy::cases::{CaseFile, LOCAL_CLIENT, describe, request_for};
use egress_proxy::policy::{Denial, DenyKind, InjectedHeader, Template, Verdict};
use libfuzzer_sys::fuzz_target;

/// Cases per file that are exercised beyond parsing (bounds the work per input).
const MAX_CASES: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = CaseFile::parse(text) else {
        return;
    };
    for case in file.cases.iter().take(MAX_CASES) {
        let headers = case.headers.iter().map(|(k, v)| (k.clone(), v.clone()));
        let client = case.client.unwrap_or(LOCAL_CLIENT);
        if let Ok(request) = request_for(&case.method, &case.url, headers, client) {
            assert!(
                request.method.bytes().all(|b| !b.is_ascii_lowercase()),
                "method not upper-cased: {:?}",
                request.method
            );
            // A CONNECT has no path; any other request has at least `/`.
            assert_eq!(
                request.is_connect(),
                request.path.is_empty(),
                "path {:?} for method {:?}",
                request.path,
                request.method
            );
        }

        let mut injected = Vec::new();
        if let Some(expected) = &case.expect.headers {
            for (name, template) in expected {
                // `parse` already validated every template.
                let parsed = Template::parse(template)
                    .unwrap_or_else(|e| panic!("accepted template {template:?} fails: {e}"));
                let shown = parsed.to_string();
                let again = Template::parse(&shown)
                    .unwrap_or_else(|e| panic!("displayed template {shown:?} fails: {e}"));
                assert_eq!(
                    parsed, again,
                    "template round trip: {template:?} → {shown:?}"
                );
                if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                    injected.push(InjectedHeader {
                        name,
                        value: parsed,
                    });
                }
            }
        }

        let rule = case.expect.rule.clone();
        let verdicts = [
            Verdict::Allow {
                rule: rule.clone(),
                annotations: Vec::new(),
            },
            Verdict::Allow {
                rule: None,
                annotations: Vec::new(),
            },
            Verdict::Deny(Denial {
                status: case.expect.status.unwrap_or(403),
                reason: case.expect.reason.clone().unwrap_or_default(),
                rule: rule.clone(),
                kind: DenyKind::Policy,
                headers: Vec::new(),
                annotations: Vec::new(),
            }),
            Verdict::Deny(Denial::host(DenyKind::PolicyFault, "fault", None)),
            Verdict::Inject {
                headers: injected,
                rule,
                annotations: Vec::new(),
            },
        ];
        for verdict in &verdicts {
            let _ = case.expect.compare(verdict);
            let _ = describe(verdict);
        }
    }
});
