//! Helpers shared by the test files: documents, requests and verdict assertions.
#![allow(dead_code, reason = "each test file uses a different subset")]

use policy_guest::{Part, Request, Routes, Scheme, Verdict};

/// Parses a document that must be valid.
pub fn routes(json: &str) -> Routes {
    Routes::parse(json).unwrap_or_else(|error| panic!("rejected: {error}\n{json}"))
}

/// Parses a document that must be rejected; returns the message.
pub fn rejected(json: &str) -> String {
    match Routes::parse(json) {
        Ok(routes) => panic!("accepted: {routes:?}\n{json}"),
        Err(error) => error.to_string(),
    }
}

/// Parses a one-route document.
pub fn one_route(route: &str) -> Routes {
    routes(&format!(r#"{{"routes": [{route}]}}"#))
}

/// Rejects a one-route document; returns the message.
pub fn one_route_rejected(route: &str) -> String {
    rejected(&format!(r#"{{"routes": [{route}]}}"#))
}

pub fn request(scheme: Scheme, method: &str, host: &str, port: u16, path: &str) -> Request {
    Request {
        scheme,
        method: method.to_owned().into(),
        host: host.to_owned(),
        port,
        path: path.to_owned(),
        client: std::net::SocketAddr::from(([10, 0, 0, 2], 40000)),
    }
}

/// `GET https://{host}{path}`.
pub fn get(host: &str, path: &str) -> Request {
    request(Scheme::Https, "GET", host, 443, path)
}

/// `GET http://{host}{path}`.
pub fn get_http(host: &str, path: &str) -> Request {
    request(Scheme::Http, "GET", host, 80, path)
}

/// `CONNECT {host}:{port}`.
pub fn connect(host: &str, port: u16) -> Request {
    request(Scheme::Https, "CONNECT", host, port, "")
}

pub fn assert_allowed(verdict: &Verdict, rule: &str) {
    assert_eq!(
        verdict,
        &Verdict::Allow {
            rule: Some(rule.to_owned())
        }
    );
}

/// Asserts a denial; returns its reason.
pub fn assert_denied(verdict: &Verdict, status: u16) -> String {
    match verdict {
        Verdict::Deny {
            status: actual,
            reason,
            ..
        } => {
            assert_eq!(*actual, status, "{reason}");
            reason.clone()
        }
        other => panic!("expected a {status} denial, got {other:?}"),
    }
}

/// Asserts the verdict lets the request through (allowed or injected).
pub fn assert_passes(verdict: &Verdict) {
    assert!(
        !matches!(verdict, Verdict::Deny { .. }),
        "expected to pass, got {verdict:?}"
    );
}

/// Asserts an injection of exactly `authorization: <prefix><secret>`.
pub fn assert_injects(verdict: &Verdict, prefix: &str, secret: &str, rule: &str) {
    let Verdict::Inject {
        headers,
        rule: actual,
    } = verdict
    else {
        panic!("expected an injection, got {verdict:?}");
    };
    assert_eq!(actual.as_deref(), Some(rule));
    assert_eq!(headers.len(), 1);
    assert_eq!(headers[0].name, "authorization");
    assert_eq!(
        headers[0].value,
        vec![
            Part::Literal(prefix.to_owned()),
            Part::Secret(secret.to_owned())
        ]
    );
}
