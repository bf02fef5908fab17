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

impl Policy {
    /// Decide one request. Reads only the `content-length` header, and only for
    /// requests that got past the host, port and method checks.
    pub fn decide(&self, req: &Request, headers: &impl Headers) -> Verdict {
        let Some(host) = self.hosts.get(&req.host) else {
            return deny(403, format!("host `{}` is not allowed", req.host), None);
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
            return deny(403, reason, rule);
        }
        // A tunnel is decided on host and port; each request inside it comes next.
        if req.method == "CONNECT" {
            return Verdict::Allow { rule };
        }

        let upload = matches!(&*req.method, "POST" | "PUT" | "PATCH");
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
            return deny(405, reason, rule);
        }
        if let Some(denial) = self.check_size(req, headers, upload) {
            return denial;
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

fn deny(status: u16, reason: String, rule: Option<String>) -> Verdict {
    Verdict::Deny {
        status,
        reason,
        rule,
    }
}
