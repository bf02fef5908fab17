//! The decision: one [`Request`] (and its headers, read on demand) → one [`Verdict`].
//! The types mirror the WIT's; `component.rs` converts between the two.

use std::borrow::Cow;

use crate::config::{Host, Policy};

/// The scheme the client used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS, or the CONNECT that opens a tunnel.
    Https,
}

/// The request being decided (the client's address is left out: this policy does
/// not use it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Upper-case method as sent: `GET`, `POST`, … or `CONNECT` for a tunnel.
    pub method: Cow<'static, str>,
    /// Target host, lower-case, without a trailing dot.
    pub host: String,
    /// Target port.
    pub port: u16,
    /// Path and query as the proxy normalised them (`/a/b?x=1`); empty for a CONNECT.
    pub path: String,
}

/// The request's headers, read on demand (in the component, a call to the proxy).
/// Any `Fn(&str) -> Vec<String>` is one, which keeps tests short.
pub trait Headers {
    /// Every value of header `name` (case-insensitive), in the order sent.
    fn get(&self, name: &str) -> Vec<String>;
}

impl<F: Fn(&str) -> Vec<String>> Headers for F {
    fn get(&self, name: &str) -> Vec<String> {
        self(name)
    }
}

/// The request body the proxy held, read in slices (in the component, calls to the
/// proxy). A byte slice is one (a complete body), which keeps tests short.
pub trait Body {
    /// How many bytes are held.
    fn len(&self) -> u64;
    /// Whether they are the whole body.
    fn complete(&self) -> bool;
    /// Up to `max` bytes from `offset`.
    fn read(&self, offset: u64, max: u32) -> Vec<u8>;
}

impl Body for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn complete(&self) -> bool {
        true
    }

    fn read(&self, offset: u64, max: u32) -> Vec<u8> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(<[u8]>::len(self));
        let end = start.saturating_add(max as usize).min(<[u8]>::len(self));
        self[start..end].to_vec()
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it unchanged.
    Allow {
        /// The rule that allowed it, for the access log.
        rule: Option<String>,
    },
    /// Refuse it with this status and reason; the proxy answers the client.
    Deny {
        /// HTTP status, 4xx or 5xx.
        status: u16,
        /// Why, in words the agent can act on.
        reason: String,
        /// The rule that denied it, if one matched.
        rule: Option<String>,
        /// Notes for the proxy's access log, e.g. the forbidden field found.
        annotations: Vec<(String, String)>,
    },
    /// Hold the request and call `decide_body` with (at most) this many bytes of it.
    NeedBody {
        /// How many bytes.
        max_bytes: u64,
    },
    /// Forward it with these headers set (replacing any the client sent).
    Inject {
        /// The headers to set.
        headers: Vec<InjectedHeader>,
        /// The rule that matched.
        rule: Option<String>,
    },
}

/// A header the proxy sets; its value is the concatenation of the parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedHeader {
    /// Header name, lower-case.
    pub name: String,
    /// Literal text and secret references.
    pub value: Vec<Part>,
}

/// One piece of an injected header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text used as is.
    Literal(String),
    /// A secret's name; the proxy puts in its value (the policy never sees it).
    Secret(String),
}

/// Slice size for reading a body.
const SLICE: u32 = 16 * 1024;

impl Policy {
    /// Decide one request. Reads only the `content-length` header, and only for
    /// requests that got past the host, port and method checks. An upload to a host
    /// with `forbidden_fields` needs its body: `NeedBody`.
    pub fn decide(&self, req: &Request, headers: &impl Headers) -> Verdict {
        let host = match self.check_head(req, headers) {
            Ok(host) => host,
            Err(verdict) => return verdict,
        };
        if req.method != "CONNECT" && !host.forbidden_fields.is_empty() && is_upload(req) {
            return Verdict::NeedBody {
                max_bytes: self.max_upload_bytes,
            };
        }
        self.credentials(req, host)
    }

    /// Decide a request `decide` wanted the body of: the body must be a JSON value
    /// without a forbidden top-level field; then the head decision goes on.
    pub fn decide_body(
        &self,
        req: &Request,
        headers: &impl Headers,
        body: &(impl Body + ?Sized),
    ) -> Verdict {
        let host = match self.check_head(req, headers) {
            Ok(host) => host,
            Err(verdict) => return verdict,
        };
        let rule = Some(req.host.clone());
        if !body.complete() {
            return deny(413, "the body is too large to check".to_owned(), rule);
        }
        let mut bytes = Vec::new();
        while (bytes.len() as u64) < body.len() {
            let slice = body.read(bytes.len() as u64, SLICE);
            if slice.is_empty() {
                break;
            }
            bytes.extend_from_slice(&slice);
        }
        let value: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(value) => value,
            Err(e) => {
                return deny(400, format!("the body is not valid JSON: {e}"), rule);
            }
        };
        if let Some(object) = value.as_object()
            && let Some(field) = host
                .forbidden_fields
                .iter()
                .find(|f| object.contains_key(*f))
        {
            return Verdict::Deny {
                status: 403,
                reason: format!(
                    "field `{field}` is not allowed in bodies sent to `{}`",
                    req.host
                ),
                rule,
                annotations: vec![("field".to_owned(), field.clone())],
            };
        }
        self.credentials(req, host)
    }

    /// Host, port, method and size: `Ok` with the host's rules if they pass.
    fn check_head(&self, req: &Request, headers: &impl Headers) -> Result<&Host, Verdict> {
        let Some(host) = self.hosts.get(&req.host) else {
            return Err(deny(
                403,
                format!("host `{}` is not allowed", req.host),
                None,
            ));
        };
        let rule = Some(req.host.clone());
        let default_port = match req.scheme {
            Scheme::Https => 443,
            Scheme::Http => 80,
        };
        if req.port != default_port {
            let reason = format!(
                "port {} is not allowed for `{}`; only {default_port}",
                req.port, req.host
            );
            return Err(deny(403, reason, rule));
        }
        // A tunnel is decided on host and port; each request inside it comes next.
        if req.method == "CONNECT" {
            return Ok(host);
        }

        let upload = is_upload(req);
        if !(matches!(&*req.method, "GET" | "HEAD") || upload && host.uploads) {
            let allowed = if host.uploads {
                "GET, HEAD, POST, PUT and PATCH"
            } else {
                "GET and HEAD"
            };
            let reason = format!(
                "method {} is not allowed for `{}`; only {allowed}",
                req.method, req.host
            );
            return Err(deny(405, reason, rule));
        }
        if let Some(denial) = self.check_size(req, headers, upload) {
            return Err(denial);
        }
        Ok(host)
    }

    /// Allow, or inject the token of the path's prefix (over https only).
    fn credentials(&self, req: &Request, host: &Host) -> Verdict {
        let rule = Some(req.host.clone());
        if req.method == "CONNECT" {
            return Verdict::Allow { rule };
        }
        match token_for(host, &req.path) {
            None => Verdict::Allow { rule },
            Some((prefix, _)) if req.scheme == Scheme::Http => {
                let reason = format!(
                    "`{}{prefix}` needs a credential, which is sent only over https; use https://",
                    req.host
                );
                deny(403, reason, rule)
            }
            Some((prefix, secret)) => Verdict::Inject {
                headers: vec![InjectedHeader {
                    name: "authorization".to_owned(),
                    value: vec![
                        Part::Literal("Bearer ".to_owned()),
                        Part::Secret(secret.to_owned()),
                    ],
                }],
                rule: Some(format!("{}{prefix}", req.host)),
            },
        }
    }

    /// The body-size check: `content-length` must be at most `max_upload_bytes`, and an
    /// upload must send one (the proxy enforces that the body matches it; a policy
    /// cannot bound a body whose size it is not told).
    fn check_size(&self, req: &Request, headers: &impl Headers, upload: bool) -> Option<Verdict> {
        let max = self.max_upload_bytes;
        let rule = Some(req.host.clone());
        let values = headers.get("content-length");
        let length = match values.as_slice() {
            [] if upload => {
                let reason = format!("an upload must send content-length (at most {max} bytes)");
                return Some(deny(411, reason, rule));
            }
            [] => return None,
            [value] => parse_length(value),
            _ => None,
        };
        match length {
            None => Some(deny(400, "invalid content-length".to_owned(), rule)),
            Some(length) if length > max => {
                let reason = format!("a body of {length} bytes is over the limit of {max} bytes");
                Some(deny(413, reason, rule))
            }
            Some(_) => None,
        }
    }
}

/// A `content-length` value: digits only (no sign), as HTTP defines it.
fn parse_length(value: &str) -> Option<u64> {
    let digits = value.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The longest token prefix the path starts with, and its secret.
fn token_for<'a>(host: &'a Host, path: &str) -> Option<(&'a str, &'a str)> {
    host.tokens
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        .map(|(prefix, secret)| (prefix.as_str(), secret.as_str()))
}

fn is_upload(req: &Request) -> bool {
    matches!(&*req.method, "POST" | "PUT" | "PATCH")
}

fn deny(status: u16, reason: String, rule: Option<String>) -> Verdict {
    Verdict::Deny {
        status,
        reason,
        rule,
        annotations: Vec::new(),
    }
}
