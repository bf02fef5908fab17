//! A denial in the client's own protocol. Most clients get the proxy's JSON deny
//! ([`respond::deny`]); some show only what their protocol carries, so the agent
//! behind them would see "HTTP 403" and nothing else. For those the same denial — the
//! same reason, rule, status header and log line — is written the way the client
//! shows it. Which form is chosen depends only on the request (and the body the
//! policy read), never on the policy, so custom policies get it too.
//!
//! - [`Dialect::Http`]: the JSON deny; everything not listed below.

use http::Response;

use super::body::ProxyBody;
use super::respond;
use crate::policy::{Denial, PolicyBody, Request};

/// How a denial is written for this request's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// The JSON deny, with the verdict's status.
    Http,
}

impl Dialect {
    /// The form for `request`; `body` is what the policy read, if it read the body.
    pub(crate) fn of(request: &Request, body: Option<&PolicyBody>) -> Dialect {
        let _ = (request, body);
        Dialect::Http
    }

    /// The response to `denial` in this form.
    pub(crate) fn deny(&self, denial: &Denial, policy_sha256: &str) -> Response<ProxyBody> {
        match self {
            Dialect::Http => respond::deny(denial, policy_sha256),
        }
    }
}
