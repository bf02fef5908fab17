//! Conversions between the generated WIT types and the domain types, at the edge.

use super::bindings::wit;
use super::request::{Request, Scheme};
use super::verdict::{Denial, DenyKind, Part, Validator, Verdict};

/// Borrow the request's headers in WIT form (lives as long as the call).
pub(super) fn headers(req: &Request) -> Vec<wit::Header<'_>> {
    req.headers
        .iter()
        .map(|(name, value)| wit::Header { name, value })
        .collect()
}

/// The WIT request, borrowing from `req` and its converted `headers`.
pub(super) fn request<'a>(req: &'a Request, headers: &'a [wit::Header<'a>]) -> wit::Request<'a> {
    wit::Request {
        scheme: match req.scheme {
            Scheme::Http => wit::Scheme::Http,
            Scheme::Https => wit::Scheme::Https,
        },
        method: &req.method,
        host: &req.host,
        port: req.port,
        path: &req.path,
        headers,
        client: wit::ClientInfo {
            address: &req.client,
        },
    }
}

/// Validate what the guest returned. Anything the host will not act on becomes a
/// deny ([`DenyKind::InvalidVerdict`]).
pub(super) fn verdict(raw: wit::Verdict, validator: &Validator<'_>) -> Verdict {
    let rule = |r: Option<String>| r.map(|r| Validator::text(&r));
    match raw {
        wit::Verdict::Allow(a) => Verdict::Allow { rule: rule(a.rule) },
        wit::Verdict::Deny(d) => Verdict::Deny(Denial {
            status: Validator::status(d.status),
            reason: match Validator::text(&d.reason) {
                r if r.trim().is_empty() => "denied by the egress policy".to_owned(),
                r => r,
            },
            rule: rule(d.rule),
            kind: DenyKind::Policy,
        }),
        wit::Verdict::Inject(i) => {
            let rule = rule(i.rule);
            let mut headers = Vec::with_capacity(i.headers.len());
            for h in i.headers {
                let parts = h
                    .value
                    .into_iter()
                    .map(|p| match p {
                        wit::Part::Literal(s) => Part::Literal(s),
                        wit::Part::Secret(s) => Part::Secret(s),
                    })
                    .collect();
                match validator.header(&h.name, parts) {
                    Ok(header) => headers.push(header),
                    Err(why) => {
                        return Verdict::Deny(Denial::host(
                            DenyKind::InvalidVerdict,
                            format!("the egress policy returned an invalid verdict: {why}"),
                            rule,
                        ));
                    }
                }
            }
            Verdict::Inject { headers, rule }
        }
    }
}
