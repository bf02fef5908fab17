//! The request a policy decides on: the crate's own mirror of the WIT `request`.

/// The scheme the client used to reach the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (an absolute-form request sent to the proxy).
    Http,
    /// HTTPS: a request inside an intercepted CONNECT tunnel, or the CONNECT itself.
    Https,
}

/// One request, as the host describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// The method, upper-case as sent (`GET`, ... or `CONNECT` for a tunnel).
    pub method: String,
    /// The target host (the host sends it lower-case without a trailing dot; the
    /// policy normalises it again anyway).
    pub host: String,
    /// The target port.
    pub port: u16,
    /// Path and query exactly as sent (`/a/b?x=1`); empty for a CONNECT.
    pub path: String,
    /// Request headers as `(name, value)`, names lower-case, credentials removed.
    /// The default policy does not look at them.
    pub headers: Vec<(String, String)>,
    /// The client's socket address, `ip:port`.
    pub client: String,
}

impl Request {
    /// Whether this is the CONNECT that opens a tunnel (method matched as sent).
    pub(crate) fn is_connect(&self) -> bool {
        self.method == "CONNECT"
    }
}
