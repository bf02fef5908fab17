//! A denial in the client's own protocol. Most clients get the proxy's JSON deny
//! ([`respond::deny`]); some show only what their protocol carries, so the agent
//! behind them would see "HTTP 403" and nothing else. For those the same denial — the
//! same reason, rule, status header and log line — is written the way the client
//! shows it. Which form is chosen depends only on the request (and the body the
//! policy read), never on the policy, so custom policies get it too.
//!
//! - [`Dialect::GitReport`]: a `POST …/git-receive-pack` whose body's ref commands
//!   parse and whose client asked for `report-status`: a 200 `report-status` with
//!   `unpack ok` and `ng <ref> <reason>` for every ref (in side-band band 1 if the
//!   client asked for side-band), so git prints `! [remote rejected] main -> main
//!   (reason)`. Nothing was applied: the upstream never saw the request.
//! - [`Dialect::GitText`]: a git ref discovery (`GET …/info/refs?service=…`): the
//!   reason as `text/plain`, which git prints as `remote: <reason>`.
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
use super::respond::{self, DENY_HEADER};
use crate::policy::{Denial, PolicyBody, Request};

/// The JSON-RPC error code of a call the egress policy refused (in the range
/// JSON-RPC 2.0 leaves to implementations, -32000 to -32099).
pub(crate) const JSONRPC_DENIED: i64 = -32001;

/// Longest reason written into one `ng` line, in bytes.
const MAX_NG_REASON: usize = 1000;

/// How a denial is written for this request's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// The JSON deny, with the verdict's status.
    Http,
    /// git's `report-status`: every ref of the push rejected with the reason.
    GitReport {
        /// The refs the push names, in order.
        refs: Vec<String>,
        /// Largest side-band packet, if the client asked for side-band.
        side_band: Option<usize>,
    },
    /// `text/plain` with the verdict's status.
    GitText,
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
        let (path, query) = request
            .path
            .split_once('?')
            .unwrap_or((request.path.as_str(), ""));
        let path = path.strip_suffix('/').unwrap_or(path).to_ascii_lowercase();
        if request.method == "POST"
            && path.ends_with("/git-receive-pack")
            && let Some(body) = body
            && let Ok(commands) = policy_guest::git::receive_pack_commands(&body.bytes)
            && !commands.updates.is_empty()
            && (commands.has_capability("report-status")
                || commands.has_capability("report-status-v2"))
        {
            let side_band = if commands.has_capability("side-band-64k") {
                Some(65520)
            } else if commands.has_capability("side-band") {
                Some(1000)
            } else {
                None
            };
            return Dialect::GitReport {
                refs: commands.updates.into_iter().map(|u| u.name).collect(),
                side_band,
            };
        }
        if matches!(request.method.as_str(), "GET" | "HEAD")
            && path.ends_with("/info/refs")
            && query.split('&').any(|pair| pair.starts_with("service="))
        {
            return Dialect::GitText;
        }
        body.and_then(|body| json_rpc(request, body))
            .unwrap_or(Dialect::Http)
    }

    /// The response to `denial` in this form.
    pub(crate) fn deny(&self, denial: &Denial, policy_sha256: &str) -> Response<ProxyBody> {
        match self {
            Dialect::Http => respond::deny(denial, policy_sha256),
            Dialect::GitReport { refs, side_band } => {
                let report = git_report(refs, &denial.reason, *side_band);
                let status = StatusCode::OK;
                with_denial(
                    report,
                    "application/x-git-receive-pack-result",
                    status,
                    denial,
                )
            }
            Dialect::GitText => {
                let status = StatusCode::from_u16(denial.status).unwrap_or(StatusCode::FORBIDDEN);
                let text = format!("{}\n", one_line(&denial.reason, usize::MAX));
                with_denial(
                    text.into_bytes(),
                    "text/plain; charset=utf-8",
                    status,
                    denial,
                )
            }
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
    with_denial(
        text.into_bytes(),
        "application/json",
        StatusCode::OK,
        denial,
    )
}

fn with_denial(
    body: Vec<u8>,
    content_type: &'static str,
    status: StatusCode,
    denial: &Denial,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(DENY_HEADER, respond::header_text(&denial.reason));
    for (name, value) in &denial.headers {
        headers.insert(name.clone(), value.clone());
    }
    response
}

/// A `report-status` rejecting every ref with `reason`, then a flush; in side-band
/// band 1 (packets of at most `side_band` bytes) and a final flush, if asked.
fn git_report(refs: &[String], reason: &str, side_band: Option<usize>) -> Vec<u8> {
    let reason = one_line(reason, MAX_NG_REASON);
    let mut report = Vec::new();
    pkt_line(&mut report, b"unpack ok\n");
    for name in refs {
        pkt_line(&mut report, format!("ng {name} {reason}\n").as_bytes());
    }
    report.extend_from_slice(b"0000");
    let Some(max) = side_band else {
        return report;
    };
    let mut banded = Vec::with_capacity(report.len() + 16);
    // Each side-band packet: length (4), band (1), data.
    for chunk in report.chunks(max.saturating_sub(5).max(1)) {
        let mut packet = Vec::with_capacity(chunk.len() + 1);
        packet.push(1);
        packet.extend_from_slice(chunk);
        pkt_line(&mut banded, &packet);
    }
    banded.extend_from_slice(b"0000");
    banded
}

fn pkt_line(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:04x}", data.len() + 4).as_bytes());
    out.extend_from_slice(data);
}

/// `text` on one line (control characters as spaces), cut to `max` bytes.
fn one_line(text: &str, max: usize) -> String {
    let mut line = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        if line.len() + c.len_utf8() > max {
            break;
        }
        line.push(if c.is_control() { ' ' } else { c });
    }
    line
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;

    use super::*;
    use crate::policy::{DenyKind, Scheme};

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn request(method: &str, path: &str) -> Request {
        Request {
            scheme: Scheme::Https,
            method: method.to_owned(),
            host: "git.example".to_owned(),
            port: 443,
            path: path.to_owned(),
            headers: Arc::from(Vec::new()),
            client: "127.0.0.1:1".parse().unwrap(),
        }
    }

    fn push(caps: &str) -> PolicyBody {
        let first = format!("{A} {B} refs/heads/main\0{caps}\n");
        let second = format!("{A} {B} refs/heads/agent/x\n");
        let body = format!(
            "{:04x}{first}{:04x}{second}0000PACK",
            first.len() + 4,
            second.len() + 4
        );
        PolicyBody::complete(body.into_bytes())
    }

    async fn text(response: Response<ProxyBody>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn denial() -> Denial {
        Denial::with_status(
            403,
            DenyKind::Policy,
            "push to refs/heads/main refused:\nno pattern",
            Some("git.example".into()),
        )
    }

    #[tokio::test]
    async fn a_refused_push_is_a_report_status() {
        let post = request("POST", "/acme/w.git/git-receive-pack");
        let dialect = Dialect::of(&post, Some(&push("report-status agent=git/2")));
        assert_eq!(
            dialect,
            Dialect::GitReport {
                refs: vec!["refs/heads/main".into(), "refs/heads/agent/x".into()],
                side_band: None
            }
        );
        let response = dialect.deny(&denial(), "abc");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "application/x-git-receive-pack-result"
        );
        assert!(response.headers().contains_key(DENY_HEADER));
        assert_eq!(
            text(response).await,
            "000eunpack ok\n\
             0043ng refs/heads/main push to refs/heads/main refused: no pattern\n\
             0046ng refs/heads/agent/x push to refs/heads/main refused: no pattern\n\
             0000"
        );
    }

    #[tokio::test]
    async fn side_band_wraps_the_report_in_band_one() {
        let post = request("POST", "/w/git-receive-pack");
        let dialect = Dialect::of(&post, Some(&push("report-status side-band-64k")));
        let body = text(dialect.deny(&denial(), "abc")).await;
        let inner = "000eunpack ok\n";
        assert!(body.starts_with(&format!(
            "{:04x}\u{1}{inner}",
            4 + 1 + 0x0e + 0x43 + 0x46 + 4
        )));
        assert!(body.ends_with("00000000"));
    }

    #[test]
    fn other_requests_keep_the_json_deny_or_get_text() {
        let post = request("POST", "/w/git-receive-pack");
        // No report-status, unparsable body, no body: JSON.
        assert_eq!(
            Dialect::of(&post, Some(&push("side-band-64k"))),
            Dialect::Http
        );
        assert_eq!(
            Dialect::of(&post, Some(&PolicyBody::complete(&b"junk"[..]))),
            Dialect::Http
        );
        assert_eq!(Dialect::of(&post, None), Dialect::Http);
        let discovery = request("GET", "/w.git/info/refs?service=git-receive-pack");
        assert_eq!(Dialect::of(&discovery, None), Dialect::GitText);
        assert_eq!(Dialect::of(&request("GET", "/api/x"), None), Dialect::Http);
    }

    #[tokio::test]
    async fn discovery_denial_is_plain_text() {
        let response = Dialect::GitText.deny(&denial(), "abc");
        assert_eq!(response.status(), 403);
        assert_eq!(
            text(response).await,
            "push to refs/heads/main refused: no pattern\n"
        );
    }

    fn post(content_type: &str) -> Request {
        Request::new(
            "POST",
            crate::target::Target {
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
