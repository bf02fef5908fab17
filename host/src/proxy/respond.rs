//! Every response the proxy writes itself, in one place: policy denials and the
//! proxy's own refusals and failures, each a JSON body plus a header an agent (or its
//! HTTP library) can read without parsing the body.
//!
//! Which side failed decides the status: the client's request is malformed → 400
//! (421 for a request naming another host than its tunnel); the policy says no →
//! the verdict's status (403 by default); the upstream cannot be reached → 502, or
//! 504 on a timeout; the proxy itself failed → 500.

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;

use super::body::ProxyBody;
use super::upstream::UpstreamError;
use crate::inspect::BodyRefusal;
use crate::policy::Denial;
use crate::target::TargetError;

/// Response header carrying a denial's reason.
pub const DENY_HEADER: &str = "x-egress-proxy-denied";
/// Response header carrying the reason for a proxy error (400/421/5xx).
pub const ERROR_HEADER: &str = "x-egress-proxy-error";

/// What the deny body tells an agent about the nature of the refusal.
pub const DENY_HINT: &str = "This request was blocked by the egress proxy's policy; it is not a network failure, and retrying will not help. Ask the operator to allow it if the task needs it.";

/// A request the proxy refuses or cannot complete, by cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An origin-form request: the proxy is not a web server.
    #[error(
        "this is an HTTP proxy, not a web server: send absolute-form requests (GET http://host/path) or CONNECT host:port; configure it as HTTP_PROXY/HTTPS_PROXY"
    )]
    NotProxyRequest,
    /// The request's target cannot be understood.
    #[error("{0}")]
    BadTarget(#[from] TargetError),
    /// A request with both `Content-Length` and `Transfer-Encoding` on its connection.
    #[error(
        "a request with both Content-Length and Transfer-Encoding has ambiguous framing (request smuggling); refused, and the connection is closed"
    )]
    AmbiguousFraming,
    /// The request is malformed in some other way.
    #[error("{0}")]
    BadRequest(String),
    /// The request names another host (or port) than the tunnel it arrived through.
    #[error("{0}")]
    Misdirected(String),
    /// The upstream exchange failed.
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    /// The body the policy needed could not be held or decoded.
    #[error("{0}")]
    Body(#[from] BodyRefusal),
    /// The proxy itself failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Refusal {
    /// The status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NotProxyRequest
            | Refusal::BadTarget(_)
            | Refusal::BadRequest(_)
            | Refusal::AmbiguousFraming => StatusCode::BAD_REQUEST,
            Refusal::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::Upstream(err) => err.status(),
            Refusal::Body(refusal) => {
                StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Refusal::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable label for the body's `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotProxyRequest => "not_a_proxy_request",
            Refusal::BadTarget(_) | Refusal::BadRequest(_) => "bad_request",
            Refusal::AmbiguousFraming => "ambiguous_framing",
            Refusal::Misdirected(_) => "misdirected_request",
            Refusal::Upstream(UpstreamError::ConnectTimeout | UpstreamError::Timeout(_)) => {
                "upstream_timeout"
            }
            Refusal::Upstream(UpstreamError::Refused(_)) => "destination_not_allowed",
            Refusal::Upstream(_) => "upstream_unavailable",
            Refusal::Body(refusal) => refusal.code(),
            Refusal::Internal(_) => "internal_error",
        }
    }

    /// The response.
    pub fn response(&self) -> Response<ProxyBody> {
        let reason = self.to_string();
        let hint = match self {
            Refusal::Upstream(UpstreamError::Refused(_)) => {
                "The egress proxy never connects to private, loopback, link-local (cloud metadata) or other non-public addresses, nor to itself; retrying will not help."
            }
            Refusal::Upstream(_) => {
                "The egress proxy allowed this request but could not get a response from the upstream server."
            }
            Refusal::Body(BodyRefusal::Busy) => "Retry shortly.",
            Refusal::Body(_) => {
                "The egress policy decides this request by its body, and the body could not be inspected."
            }
            _ => "The egress proxy could not process this request.",
        };
        let body = json!({ "error": self.code(), "reason": reason, "hint": hint });
        let mut response = json_response(self.status(), ERROR_HEADER, &reason, &body);
        if *self == Refusal::AmbiguousFraming {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if *self == Refusal::Body(BodyRefusal::Busy) {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The response to a denied request.
pub fn deny(denial: &Denial, policy_sha256: &str) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(denial.status).unwrap_or(StatusCode::FORBIDDEN);
    let body = json!({
        "error": "denied_by_egress_policy",
        "reason": denial.reason,
        "rule": denial.rule,
        "kind": denial.kind.as_str(),
        "policy": format!("sha256:{policy_sha256}"),
        "hint": DENY_HINT,
    });
    let mut response = json_response(status, DENY_HEADER, &denial.reason, &body);
    for (name, value) in &denial.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

fn json_response(
    status: StatusCode,
    header: &'static str,
    reason: &str,
    body: &serde_json::Value,
) -> Response<ProxyBody> {
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(ProxyBody::full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header, header_text(reason));
    response
}

/// `reason` as a header value: printable ASCII kept, anything else replaced, capped.
pub(crate) fn header_text(reason: &str) -> HeaderValue {
    let text: String = reason
        .chars()
        .take(256)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("denied"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DenyKind;

    #[test]
    fn deny_carries_reason_rule_and_policy() {
        let mut denial = Denial::with_status(
            451,
            DenyKind::Policy,
            "no route for evil.example — ask\u{7}",
            Some("r1".into()),
        );
        denial
            .headers
            .push((http::header::RETRY_AFTER, HeaderValue::from_static("7")));
        let response = deny(&denial, "abc");
        assert_eq!(response.status(), 451);
        assert_eq!(
            response.headers()[DENY_HEADER],
            "no route for evil.example ? ask?"
        );
        assert_eq!(response.headers()["retry-after"], "7");
    }

    #[test]
    fn statuses_by_cause() {
        assert_eq!(Refusal::NotProxyRequest.status(), 400);
        assert_eq!(Refusal::Misdirected("x".into()).status(), 421);
        assert_eq!(
            Refusal::Upstream(UpstreamError::Connect("refused".into())).status(),
            502
        );
        assert_eq!(
            Refusal::Upstream(UpstreamError::Timeout(std::time::Duration::from_secs(1))).status(),
            504
        );
    }
}
