//! Conversions between the generated WIT types and the domain types, at the edge.

use std::net::IpAddr;

use super::bindings::wit;
use super::request::{Request, Scheme};
use super::verdict::{Denial, DenyKind, Part, Validator, Verdict};

/// The WIT request, borrowing from `req`. Headers travel separately, as a resource.
pub(super) fn request(req: &Request) -> wit::Request<'_> {
    wit::Request {
        scheme: match req.scheme {
            Scheme::Http => wit::Scheme::Http,
            Scheme::Https => wit::Scheme::Https,
        },
        method: method(&req.method),
        host: &req.host,
        port: req.port,
        path: &req.path,
        client: wit::ClientInfo {
            address: match req.client.ip() {
                IpAddr::V4(ip) => wit::IpAddress::Ipv4(ip.to_bits()),
                IpAddr::V6(ip) => {
                    let bits = ip.to_bits();
                    // Truncation is the point: the high and the low 64 bits.
                    #[expect(clippy::cast_possible_truncation, reason = "splitting 128 bits")]
                    let (high, low) = ((bits >> 64) as u64, bits as u64);
                    wit::IpAddress::Ipv6((high, low))
                }
            },
            port: req.client.port(),
        },
    }
}

/// Common methods travel as a variant case (no string to copy into the guest).
fn method(method: &str) -> wit::Method<'_> {
    match method {
        "GET" => wit::Method::Get,
        "HEAD" => wit::Method::Head,
        "POST" => wit::Method::Post,
        "PUT" => wit::Method::Put,
        "DELETE" => wit::Method::Delete,
        "CONNECT" => wit::Method::Connect,
        "OPTIONS" => wit::Method::Options,
        "TRACE" => wit::Method::Trace,
        "PATCH" => wit::Method::Patch,
        other => wit::Method::Other(other),
    }
}

/// Validate what the guest returned. Anything the host will not act on becomes a
/// deny ([`DenyKind::InvalidVerdict`]).
pub(super) fn verdict(raw: wit::Verdict, validator: &Validator<'_>) -> Verdict {
    let rule = |r: Option<String>| r.map(Validator::owned_text);
    match raw {
        wit::Verdict::Allow(a) => Verdict::Allow { rule: rule(a.rule) },
        wit::Verdict::Deny(d) => Verdict::Deny(Denial {
            status: Validator::status(d.status),
            reason: match Validator::owned_text(d.reason) {
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
