//! The WebAssembly glue, and the only code that sees the generated bindings: exports
//! `egress:policy/decider` by converting WIT types to and from the crate's own.
//!
//! `configure` runs once per instance, before any `decide`, so the parsed policy is
//! kept in instance-global state. A `configure` that fails leaves the instance
//! unconfigured, and `decide` then denies with 500.
#![expect(
    unsafe_code,
    reason = "wit-bindgen generates `unsafe` canonical-ABI export functions"
)]

use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};

use crate::{Body, InjectedHeader, Part, Policy, Request, Scheme, Verdict};

// The path is relative to this crate's Cargo.toml. Copied out of the repository, point
// it at your copy of `policy.wit` (e.g. `path: "wit"`).
wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use exports::egress::policy::decider as wit;

/// The policy of the last successful `configure`.
static POLICY: Mutex<Option<Policy>> = Mutex::new(None);

struct Component;

impl wit::Guest for Component {
    fn configure(routes: String) -> Result<wit::Summary, String> {
        let parsed = Policy::parse(&routes);
        let mut slot = POLICY.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = parsed.as_ref().ok().cloned();
        let summary = parsed?.summary();
        Ok(wit::Summary {
            rules: summary.rules,
            secrets: summary.secrets,
            rule_ids: summary.rule_ids,
        })
    }

    fn decide(request: wit::Request, headers: &wit::Headers) -> wit::Verdict {
        let slot = POLICY.lock().unwrap_or_else(PoisonError::into_inner);
        let verdict = match slot.as_ref() {
            Some(policy) => policy.decide(&from_wit(request), &|name: &str| headers.get(name)),
            None => not_configured(),
        };
        to_wit(verdict)
    }

    fn decide_body(
        request: wit::Request,
        headers: &wit::Headers,
        body: &wit::Body,
    ) -> wit::Verdict {
        let slot = POLICY.lock().unwrap_or_else(PoisonError::into_inner);
        let verdict = match slot.as_ref() {
            Some(policy) => policy.decide_body(
                &from_wit(request),
                &|name: &str| headers.get(name),
                &HeldBody(body),
            ),
            None => not_configured(),
        };
        to_wit(verdict)
    }
}

/// The proxy's body resource as the crate's [`Body`].
struct HeldBody<'a>(&'a wit::Body);

impl Body for HeldBody<'_> {
    fn len(&self) -> u64 {
        self.0.len()
    }

    fn complete(&self) -> bool {
        self.0.complete()
    }

    fn read(&self, offset: u64, max: u32) -> Vec<u8> {
        self.0.read(offset, max)
    }
}

fn not_configured() -> Verdict {
    Verdict::Deny {
        status: 500,
        reason: "policy not configured".to_owned(),
        rule: None,
        annotations: Vec::new(),
    }
}

export!(Component);

fn from_wit(request: wit::Request) -> Request {
    Request {
        scheme: match request.scheme {
            wit::Scheme::Http => Scheme::Http,
            wit::Scheme::Https => Scheme::Https,
        },
        method: match request.method {
            wit::Method::Get => Cow::Borrowed("GET"),
            wit::Method::Head => Cow::Borrowed("HEAD"),
            wit::Method::Post => Cow::Borrowed("POST"),
            wit::Method::Put => Cow::Borrowed("PUT"),
            wit::Method::Delete => Cow::Borrowed("DELETE"),
            wit::Method::Connect => Cow::Borrowed("CONNECT"),
            wit::Method::Options => Cow::Borrowed("OPTIONS"),
            wit::Method::Trace => Cow::Borrowed("TRACE"),
            wit::Method::Patch => Cow::Borrowed("PATCH"),
            wit::Method::Other(method) => Cow::Owned(method),
        },
        host: request.host,
        port: request.port,
        path: request.path,
    }
}

fn to_wit(verdict: Verdict) -> wit::Verdict {
    match verdict {
        Verdict::Allow { rule } => wit::Verdict::Allow(wit::Allowance {
            rule,
            annotations: Vec::new(),
        }),
        Verdict::Deny {
            status,
            reason,
            rule,
            annotations,
        } => wit::Verdict::Deny(wit::Denial {
            status,
            reason,
            rule,
            headers: Vec::new(),
            annotations: annotations
                .into_iter()
                .map(|(key, value)| wit::Annotation { key, value })
                .collect(),
        }),
        Verdict::NeedBody { max_bytes } => wit::Verdict::NeedBody(wit::BodyNeed {
            max_bytes,
            prefix: false,
        }),
        Verdict::Inject { headers, rule } => wit::Verdict::Inject(wit::Injection {
            headers: headers.into_iter().map(header_to_wit).collect(),
            rule,
            annotations: Vec::new(),
        }),
    }
}

fn header_to_wit(header: InjectedHeader) -> wit::InjectedHeader {
    wit::InjectedHeader {
        name: header.name,
        value: header
            .value
            .into_iter()
            .map(|part| match part {
                Part::Literal(text) => wit::Part::Literal(text),
                Part::Secret(name) => wit::Part::Secret(name),
            })
            .collect(),
    }
}
