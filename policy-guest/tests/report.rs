//! `report: true` on a route: what it would deny is reported, not denied; other
//! routes enforce.

#![allow(clippy::unwrap_used, reason = "tests")]

use policy_guest::{Request, Routes, Scheme, Verdict};

fn get(host: &str, path: &str) -> Request {
    Request {
        scheme: Scheme::Https,
        method: "GET".into(),
        host: host.to_owned(),
        port: 443,
        path: path.to_owned(),
        client: "127.0.0.1:5000".parse().unwrap(),
    }
}

const ROUTES: &str = r#"{"routes": [
    {"host": "trial.example", "path_allowlist": ["/v1/"], "methods": ["GET"], "report": true,
     "auth": {"scheme": "Bearer", "token_ref": "T"}},
    {"host": "strict.example", "path_allowlist": ["/v1/"]}
]}"#;

#[test]
fn a_report_route_reports_its_denials() {
    let routes = Routes::parse(ROUTES).unwrap();
    match routes.decide(&get("trial.example", "/v2/x")) {
        Verdict::Report {
            status,
            reason,
            rule,
        } => {
            assert_eq!(status, 403);
            assert!(reason.contains("not in the allowlist"), "{reason}");
            assert_eq!(rule.as_deref(), Some("trial.example"));
        }
        other => panic!("{other:?}"),
    }
    let mut post = get("trial.example", "/v1/x");
    post.method = "POST".into();
    assert!(matches!(
        routes.decide(&post),
        Verdict::Report { status: 405, .. }
    ));
    // What it allows is still injected.
    assert!(matches!(
        routes.decide(&get("trial.example", "/v1/x")),
        Verdict::Inject { .. }
    ));
    // Other routes enforce; no route still denies.
    assert!(matches!(
        routes.decide(&get("strict.example", "/v2/x")),
        Verdict::Deny { status: 403, .. }
    ));
    assert!(matches!(
        routes.decide(&get("other.example", "/")),
        Verdict::Deny { status: 403, .. }
    ));
}

#[test]
fn report_must_be_a_boolean() {
    let err = Routes::parse(r#"{"routes": [{"host": "a.example", "report": "yes"}]}"#).unwrap_err();
    assert!(err.to_string().contains("routes[0].report"), "{err}");
}
