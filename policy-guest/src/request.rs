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

/// The request's headers, read on demand (in the component, a call to the host).
/// The default policy reads only `content-length`, and only on routes with
/// `max_body_bytes`.
pub trait Headers {
    /// Every value of header `name` (case-insensitive), in the order sent.
    fn get(&self, name: &str) -> Vec<String>;
}

/// No headers at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeaders;

impl Headers for NoHeaders {
    fn get(&self, _name: &str) -> Vec<String> {
        Vec::new()
    }
}

impl<F: Fn(&str) -> Vec<String>> Headers for F {
    fn get(&self, name: &str) -> Vec<String> {
        self(name)
    }
}

/// What the default policy needs to know of a held body: how much the host held, and
/// whether that is all of it.
pub trait Body {
    /// Bytes held.
    fn len(&self) -> u64;
    /// Whether no byte is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether they are the whole body.
    fn complete(&self) -> bool;
}
