//! The request a policy decides on: the crate's own mirror of the WIT `request`.

use std::borrow::Cow;
use std::net::SocketAddr;

/// The scheme the client used to reach the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (an absolute-form request sent to the proxy).
    Http,
    /// HTTPS: a request inside an intercepted CONNECT tunnel, or the CONNECT itself.
    Https,
}

/// One request, as the host describes it. Headers are not part of it: the WIT passes
/// them as a resource read on demand, and the default policy never reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// The method, upper-case as sent (`GET`, ... or `CONNECT` for a tunnel). Common
    /// methods are static text (the WIT passes them as a variant, not a string).
    pub method: Cow<'static, str>,
    /// The target host (the host sends it lower-case without a trailing dot; the
    /// policy normalises it again anyway).
    pub host: String,
    /// The target port.
    pub port: u16,
    /// Path and query exactly as sent (`/a/b?x=1`); empty for a CONNECT.
    pub path: String,
    /// The client's socket address.
    pub client: SocketAddr,
}

impl Request {
    /// Whether this is the CONNECT that opens a tunnel (method matched as sent).
    pub(crate) fn is_connect(&self) -> bool {
        self.method == "CONNECT"
    }
}
