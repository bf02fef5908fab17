//! Conversions between the generated WIT types (both contract versions) and the
//! domain types, at the edge.

use std::net::IpAddr;

use super::bindings::{v1, v2};
use super::request::{Request, Scheme};
use super::validate::Validator;
use super::verdict::{BodyNeed, Denial, DenyKind, Head, Part, Verdict};

/// `request(req)`: the WIT request of one contract version, borrowing from `req`.
/// The record has the same shape in every version; only the generated types differ.
macro_rules! request_conversion {
    ($wit:path) => {
        pub(in crate::policy) fn request(req: &Request) -> wit::Request<'_> {
            use $wit as wit;
            wit::Request {
                scheme: match req.scheme {
                    Scheme::Http => wit::Scheme::Http,
                    Scheme::Https => wit::Scheme::Https,
                },
                method: match req.method.as_str() {
                    // Common methods travel as a variant case (no string to copy).
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
                },
                host: &req.host,
                port: req.port,
                path: &req.path,
                client: wit::ClientInfo {
                    address: match super::address(req.client.ip()) {
                        super::Address::V4(bits) => wit::IpAddress::Ipv4(bits),
                        super::Address::V6(pair) => wit::IpAddress::Ipv6(pair),
                    },
                    port: req.client.port(),
                },
            }
        }
    };
}

enum Address {
    V4(u32),
    V6((u64, u64)),
}

fn address(ip: IpAddr) -> Address {
    match ip {
        IpAddr::V4(ip) => Address::V4(ip.to_bits()),
        IpAddr::V6(ip) => {
            let bits = ip.to_bits();
            // Truncation is the point: the high and the low 64 bits.
            #[expect(clippy::cast_possible_truncation, reason = "splitting 128 bits")]
            let pair = ((bits >> 64) as u64, bits as u64);
            Address::V6(pair)
        }
    }
}

/// The current contract.
pub(super) mod current {
    use super::*;
    use v2::wit;

    request_conversion!(v2::wit);

    /// Validate what the guest returned for one phase. Anything the host will not act
    /// on becomes a deny ([`DenyKind::InvalidVerdict`]).
    pub(in crate::policy) fn verdict(
        raw: wit::Verdict,
        validator: &Validator<'_>,
    ) -> Head<Verdict> {
        let rule = |r: Option<String>| r.map(Validator::owned_text);
        let notes = |list: Vec<wit::Annotation>| {
            Validator::annotations(list.into_iter().map(|a| (a.key, a.value)))
        };
        let invalid = |why: String, rule: Option<String>| {
            Head::Decided(Verdict::Deny(Denial::host(
                DenyKind::InvalidVerdict,
                format!("the egress policy returned an invalid verdict: {why}"),
                rule,
            )))
        };
        match raw {
            wit::Verdict::NeedBody(need) => Head::NeedBody(BodyNeed {
                max_bytes: need.max_bytes,
                prefix: need.prefix,
            }),
            wit::Verdict::Allow(a) => {
                let rule = rule(a.rule);
                match notes(a.annotations) {
                    Ok(annotations) => Head::Decided(Verdict::Allow { rule, annotations }),
                    Err(why) => invalid(why, rule),
                }
            }
            wit::Verdict::Deny(d) => {
                let rule = rule(d.rule);
                let annotations = match notes(d.annotations) {
                    Ok(a) => a,
                    Err(why) => return invalid(why, rule),
                };
                let headers = match Validator::response_headers(
                    d.headers.into_iter().map(|h| (h.name, h.value)),
                ) {
                    Ok(h) => h,
                    Err(why) => return invalid(why, rule),
                };
                let mut denial = super::denial(d.status, d.reason, rule);
                denial.headers = headers;
                denial.annotations = annotations;
                Head::Decided(Verdict::Deny(denial))
            }
            wit::Verdict::Inject(i) => {
                let rule = rule(i.rule);
                let annotations = match notes(i.annotations) {
                    Ok(a) => a,
                    Err(why) => return invalid(why, rule),
                };
                let headers = i.headers.into_iter().map(|h| {
                    let parts = h.value.into_iter().map(|p| match p {
                        wit::Part::Literal(s) => Part::Literal(s),
                        wit::Part::Secret(s) => Part::Secret(s),
                    });
                    (h.name, parts.collect())
                });
                match super::injected(headers, validator) {
                    Ok(headers) => Head::Decided(Verdict::Inject {
                        headers,
                        rule,
                        annotations,
                    }),
                    Err(why) => invalid(why, rule),
                }
            }
        }
    }
}

/// The 0.1.0 contract: head-only verdicts without annotations or response headers.
pub(super) mod legacy {
    use super::*;
    use v1::wit;

    request_conversion!(v1::wit);

    /// Validate what a 0.1.0 guest returned.
    pub(in crate::policy) fn verdict(raw: wit::Verdict, validator: &Validator<'_>) -> Verdict {
        let rule = |r: Option<String>| r.map(Validator::owned_text);
        match raw {
            wit::Verdict::Allow(a) => Verdict::Allow {
                rule: rule(a.rule),
                annotations: Vec::new(),
            },
            wit::Verdict::Deny(d) => Verdict::Deny(super::denial(d.status, d.reason, rule(d.rule))),
            wit::Verdict::Inject(i) => {
                let rule = rule(i.rule);
                let headers = i.headers.into_iter().map(|h| {
                    let parts = h.value.into_iter().map(|p| match p {
                        wit::Part::Literal(s) => Part::Literal(s),
                        wit::Part::Secret(s) => Part::Secret(s),
                    });
                    (h.name, parts.collect())
                });
                match super::injected(headers, validator) {
                    Ok(headers) => Verdict::Inject {
                        headers,
                        rule,
                        annotations: Vec::new(),
                    },
                    Err(why) => Verdict::Deny(Denial::host(
                        DenyKind::InvalidVerdict,
                        format!("the egress policy returned an invalid verdict: {why}"),
                        rule,
                    )),
                }
            }
        }
    }
}

/// A policy denial: status clamped, reason cleaned (an empty one gets a default).
fn denial(status: u16, reason: String, rule: Option<String>) -> Denial {
    let reason = match Validator::owned_text(reason) {
        r if r.trim().is_empty() => "denied by the egress policy".to_owned(),
        r => r,
    };
    Denial::with_status(Validator::status(status), DenyKind::Policy, reason, rule)
}

fn injected(
    headers: impl Iterator<Item = (String, Vec<Part>)>,
    validator: &Validator<'_>,
) -> Result<Vec<super::verdict::InjectedHeader>, String> {
    headers
        .map(|(name, parts)| validator.header(&name, parts))
        .collect()
}
