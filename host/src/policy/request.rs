//! The request a policy decides on, in the host's own types.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// The scheme the client used toward the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP: an absolute-form request sent to the proxy.
    Http,
    /// HTTPS: a CONNECT, or a request inside an intercepted tunnel.
    Https,
}

impl Scheme {
    /// The port used when a URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request as the policy sees it. Build it with credentials already removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `http` or `https` (a CONNECT is `https`).
    pub scheme: Scheme,
    /// Upper-case method as sent; `CONNECT` for a tunnel.
    pub method: String,
    /// Lower-case host, no trailing dot, IPv6 without brackets.
    pub host: String,
    /// Target port (the scheme's default if the client named none).
    pub port: u16,
    /// Path and query as sent (origin form); empty for a CONNECT.
    pub path: String,
    /// Headers as (lower-case name, value), without [`HIDDEN_HEADERS`]. Shared, not
    /// copied, with the policy call that reads them.
    pub headers: Arc<[(String, String)]>,
    /// The client's socket address.
    pub client: SocketAddr,
}

impl Request {
    /// Whether this is the tunnel decision rather than a request inside it.
    pub fn is_connect(&self) -> bool {
        self.method == "CONNECT"
    }
}

/// Headers the policy never sees: the client's credentials and connection-management
/// headers.
pub const HIDDEN_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "trailer",
    "transfer-encoding",
];

impl Request {
    /// Build a request, dropping [`HIDDEN_HEADERS`] and lower-casing header names.
    pub fn new(
        method: &str,
        target: crate::target::Target,
        headers: impl IntoIterator<Item = (String, String)>,
        client: SocketAddr,
    ) -> Self {
        let headers = headers
            .into_iter()
            .map(|(mut name, value)| {
                name.make_ascii_lowercase();
                (name, value)
            })
            .filter(|(name, _)| !HIDDEN_HEADERS.contains(&name.as_str()))
            .collect();
        Self {
            scheme: target.scheme,
            method: method.to_owned(),
            host: target.host,
            port: target.port,
            path: target.path,
            headers,
            client,
        }
    }
}
