//! The WebAssembly glue, and the only code that sees the generated bindings: exports
//! `egress:policy/decider` by converting WIT types to and from the domain types.
//!
//! The configured routes live in instance-global state. `configure` replaces them; a
//! `configure` that fails leaves the instance unconfigured, and `decide` before a
//! successful `configure` denies with 500.
#![expect(
    unsafe_code,
    reason = "wit-bindgen generates `unsafe` canonical-ABI export functions"
)]

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};

use crate::{InjectedHeader, Part, Request, Routes, Scheme, Verdict};

wit_bindgen::generate!({ path: "../wit", world: "policy" });

use exports::egress::policy::decider as wit;

/// The guest's allocator. Every `decide` allocates a handful of small strings (the
/// request's fields, the verdict's); talc's binned free lists make each allocation
/// and free several times cheaper in wasm than the default dlmalloc.
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// The routes of the last successful `configure`.
static ROUTES: Mutex<Option<Routes>> = Mutex::new(None);

/// Status when `decide` is called before a successful `configure`.
const NOT_CONFIGURED: u16 = 500;

struct Policy;

impl wit::Guest for Policy {
    fn configure(routes: String) -> Result<wit::Summary, String> {
        let parsed = Routes::parse(&routes);
        let mut slot = ROUTES.lock().unwrap_or_else(PoisonError::into_inner);
        match parsed {
            Ok(routes) => {
                let summary = routes.summary();
                *slot = Some(routes);
                Ok(wit::Summary {
                    rules: summary.rules,
                    secrets: summary.secrets,
                    rule_ids: summary.rule_ids,
                })
            }
            Err(error) => {
                *slot = None;
                Err(error.to_string())
            }
        }
    }

    /// The default policy decides on the request line; it reads `content-length` only
    /// on routes with `max_body_bytes`.
    fn decide(request: wit::Request, headers: &wit::Headers) -> wit::Verdict {
        decide(request, headers, None)
    }

    /// Called after `decide` asked for the body (a `max_body_bytes` route without a
    /// `content-length`).
    fn decide_body(
        request: wit::Request,
        headers: &wit::Headers,
        body: &wit::Body,
    ) -> wit::Verdict {
        decide(request, headers, Some(body))
    }
}

/// The host's resources as the domain's traits.
struct HostHeaders<'a>(&'a wit::Headers);

impl crate::Headers for HostHeaders<'_> {
    fn get(&self, name: &str) -> Vec<String> {
        self.0.get(name)
    }
}

struct HostBody<'a>(&'a wit::Body);

impl crate::Body for HostBody<'_> {
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

/// The host's shared state (token buckets across instances and reloads).
struct HostState;

impl crate::State for HostState {
    fn take(&self, key: &str, cost: u32, capacity: u32, refill_per_second: f64) -> Result<(), u64> {
        egress::policy::state::take(key, cost, capacity, refill_per_second)
    }
}

fn decide(request: wit::Request, headers: &wit::Headers, body: Option<&wit::Body>) -> wit::Verdict {
    let slot = ROUTES.lock().unwrap_or_else(PoisonError::into_inner);
    let headers = HostHeaders(headers);
    let verdict = match slot.as_ref() {
        Some(routes) => {
            let request = from_wit(request);
            match body {
                Some(body) => routes.decide_body(&request, &headers, &HostBody(body), &HostState),
                None => routes.decide_head(&request, &headers, &HostState),
            }
        }
        None => Verdict::Deny {
            status: NOT_CONFIGURED,
            reason: "policy not configured".to_owned(),
            rule: None,
            headers: Vec::new(),
        },
    };
    to_wit(verdict)
}

export!(Policy);

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
        client: SocketAddr::new(
            match request.client.address {
                wit::IpAddress::Ipv4(bits) => IpAddr::V4(Ipv4Addr::from_bits(bits)),
                wit::IpAddress::Ipv6((high, low)) => IpAddr::V6(Ipv6Addr::from_bits(
                    u128::from(high) << 64 | u128::from(low),
                )),
            },
            request.client.port,
        ),
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
            headers,
        } => wit::Verdict::Deny(wit::Denial {
            status,
            reason,
            rule,
            headers: headers
                .into_iter()
                .map(|(name, value)| wit::ResponseHeader { name, value })
                .collect(),
            annotations: Vec::new(),
        }),
        Verdict::Report {
            status,
            reason,
            rule,
        } => wit::Verdict::Allow(wit::Allowance {
            rule,
            annotations: vec![
                wit::Annotation {
                    key: crate::verdict::REPORT_ANNOTATION.to_owned(),
                    value: reason,
                },
                wit::Annotation {
                    key: crate::verdict::REPORT_STATUS_ANNOTATION.to_owned(),
                    value: status.to_string(),
                },
            ],
        }),
        Verdict::NeedBody { max_bytes, prefix } => {
            wit::Verdict::NeedBody(wit::BodyNeed { max_bytes, prefix })
        }
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
