//! A denial in the client's own protocol. Most clients get the proxy's JSON deny
//! ([`respond::deny`]); some show only what their protocol carries, so the agent
//! behind them would see "HTTP 403" and nothing else. For those the same denial — the
//! same reason, rule, status header and log line — is written the way the client
//! shows it. Which form is chosen depends only on the request (and the body the
//! policy read), never on the policy, so custom policies get it too.
//!
//! - [`Dialect::JsonRpc`]: a `POST` of `application/json` whose body (read by the
//!   policy, complete) is a JSON-RPC 2.0 call or a batch of them, with at least one
//!   `id` — MCP's streamable HTTP transport among others. The answer is `200` with a
//!   JSON-RPC error object per call (an array for a batch), code
//!   [`JSONRPC_DENIED`], the reason as `message`, and the JSON deny's fields under
//!   `data`: an MCP client surfaces the message to the agent as the call's error. A
//!   batch of notifications only (nothing to answer) gets the JSON deny.
//! - [`Dialect::Http`]: the JSON deny; everything else.

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::body::ProxyBody;
use super::respond;
use crate::policy::{Denial, PolicyBody, Request};

/// The JSON-RPC error code of a call the egress policy refused (in the range
/// JSON-RPC 2.0 leaves to implementations, -32000 to -32099).
pub(crate) const JSONRPC_DENIED: i64 = -32001;

/// How a denial is written for this request's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// The JSON deny, with the verdict's status.
    Http,
    /// JSON-RPC errors for these call ids.
    JsonRpc {
        /// The `id` of every call in the body, in order.
        ids: Vec<Value>,
        /// Whether the body was a batch (the answer is then an array).
        batch: bool,
    },
}

impl Dialect {
    /// The form for `request`; `body` is what the policy read, if it read the body.
    pub(crate) fn of(request: &Request, body: Option<&PolicyBody>) -> Dialect {
        body.and_then(|body| json_rpc(request, body))
            .unwrap_or(Dialect::Http)
    }

    /// The response to `denial` in this form.
    pub(crate) fn deny(&self, denial: &Denial, policy_sha256: &str) -> Response<ProxyBody> {
        match self {
            Dialect::Http => respond::deny(denial, policy_sha256),
            Dialect::JsonRpc { ids, batch } => json_rpc_errors(denial, policy_sha256, ids, *batch),
        }
    }
}

/// The calls' ids if `body` is a JSON-RPC 2.0 call or batch sent as JSON.
fn json_rpc(request: &Request, body: &PolicyBody) -> Option<Dialect> {
    if request.method != "POST" || !body.complete || !is_json(request) {
        return None;
    }
    let value: Value = serde_json::from_slice(&body.bytes).ok()?;
    let (messages, batch) = match &value {
        Value::Array(messages) => (messages.iter().collect::<Vec<_>>(), true),
        message => (vec![message], false),
    };
    let is_call = |message: &&Value| {
        message.get("jsonrpc") == Some(&Value::from("2.0"))
            && message.get("method").is_some_and(Value::is_string)
    };
    if messages.is_empty() || !messages.iter().all(is_call) {
        return None;
    }
    let ids: Vec<Value> = messages
        .iter()
        .filter_map(|message| message.get("id").cloned())
        .collect();
    (!ids.is_empty()).then_some(Dialect::JsonRpc { ids, batch })
}

/// Whether the request's content type is `application/json` (parameters allowed).
fn is_json(request: &Request) -> bool {
    let mut types = request
        .headers
        .iter()
        .filter(|(name, _)| name == "content-type");
    let Some((_, value)) = types.next() else {
        return false;
    };
    types.next().is_none()
        && value
            .split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

fn json_rpc_errors(
    denial: &Denial,
    policy_sha256: &str,
    ids: &[Value],
    batch: bool,
) -> Response<ProxyBody> {
    let data = json!({
        "error": "denied_by_egress_policy",
        "status": denial.status,
        "rule": denial.rule,
        "kind": denial.kind.as_str(),
        "policy": format!("sha256:{policy_sha256}"),
        "hint": respond::DENY_HINT,
    });
    let errors: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {"code": JSONRPC_DENIED, "message": denial.reason, "data": data},
            })
        })
        .collect();
    let body = match (batch, errors.as_slice()) {
        (false, [one]) => one.clone(),
        _ => Value::Array(errors),
    };
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(ProxyBody::full(text));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(respond::DENY_HEADER, respond::header_text(&denial.reason));
    for (name, value) in &denial.headers {
        headers.insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{DenyKind, Scheme};
    use crate::target::Target;

    fn post(content_type: &str) -> Request {
        Request::new(
            "POST",
            Target {
                scheme: Scheme::Https,
                host: "mcp.example".into(),
                port: 443,
                path: "/mcp".into(),
            },
            vec![("content-type".to_owned(), content_type.to_owned())],
            "127.0.0.1:1".parse().unwrap(),
        )
    }

    fn body(text: &str) -> PolicyBody {
        PolicyBody::complete(text.as_bytes().to_vec())
    }

    #[test]
    fn json_rpc_calls_are_recognised() {
        let call = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"rm"}}"#;
        assert_eq!(
            Dialect::of(&post("application/json"), Some(&body(call))),
            Dialect::JsonRpc {
                ids: vec![json!(7)],
                batch: false
            }
        );
        let batch = r#"[{"jsonrpc":"2.0","id":"a","method":"x"},{"jsonrpc":"2.0","method":"n"}]"#;
        assert_eq!(
            Dialect::of(&post("Application/JSON; charset=utf-8"), Some(&body(batch))),
            Dialect::JsonRpc {
                ids: vec![json!("a")],
                batch: true
            }
        );
        for (content_type, text) in [
            ("text/plain", call),
            (
                "application/json",
                r#"{"jsonrpc":"2.0","method":"notifications/x"}"#,
            ),
            ("application/json", r#"{"query":"{ a }"}"#),
            ("application/json", "[]"),
            ("application/json", "not json"),
        ] {
            assert_eq!(
                Dialect::of(&post(content_type), Some(&body(text))),
                Dialect::Http,
                "{text}"
            );
        }
        assert_eq!(Dialect::of(&post("application/json"), None), Dialect::Http);
    }

    #[test]
    fn a_refused_call_is_a_json_rpc_error_with_the_reason() {
        let denial = Denial::with_status(
            403,
            DenyKind::Policy,
            "MCP tool `rm` is not allowed",
            Some("mcp.example".into()),
        );
        let response = Dialect::JsonRpc {
            ids: vec![json!(7)],
            batch: false,
        }
        .deny(&denial, "abc");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[respond::DENY_HEADER],
            "MCP tool `rm` is not allowed"
        );
        let response = Dialect::JsonRpc {
            ids: vec![json!(1), json!(2)],
            batch: true,
        }
        .deny(&denial, "abc");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }
}
