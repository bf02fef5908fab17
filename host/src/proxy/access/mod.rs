//! The access log: one line per request, emitted when its response has been fully
//! sent (or abandoned), through `tracing` target `egress_proxy::access`.
//!
//! Fields: `start` (wall-clock time the request reached the pipeline, before the
//! policy was asked), `client`, `method`, `scheme`, `host`, `port`, `path`, `decision` (`allow`,
//! `inject`, `deny`, or `error` for a request the proxy could not complete), `rule`,
//! `deny_kind`, `status`, `bytes` (response body bytes sent to the client),
//! `duration_ms`, `generation` (the policy generation's number; 0 when none decided),
//! `policy` (the module's sha256 prefix), `original_dst` (the address a connection
//! redirected to the transparent listener was dialled to, `-` otherwise), `annotations` (the policy's notes on its verdict
//! as a JSON object, `-` for none), `body_sha256` (hex SHA-256 of the decoded body
//! bytes the policy read in its body phase, `-` when it read none), `reason` (for
//! `would_deny`: the status and reason of the denial not made, `-` otherwise),
//! `shadow`, `shadow_decision`, `shadow_rule` (the shadow policy's answer, see
//! [`super::shadow`]; `-` without one), and `outcome`
//! (`complete`, or `aborted` when the response body did not finish). Never a header
//! value: credentials cannot reach the log.

mod line;
mod sink;

use std::net::SocketAddr;
use std::time::Instant;

use line::Value;
pub(crate) use line::write_directly;
pub use sink::flush;

use crate::policy::Scheme;

/// The target the access log lines are written to.
pub const ACCESS_TARGET: &str = "egress_proxy::access";

/// What was decided, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded unchanged.
    Allow,
    /// Forwarded with injected headers.
    Inject,
    /// Refused by the policy (or by the host on its behalf).
    Deny,
    /// Refused or failed by the proxy itself (bad request, upstream failure).
    Error,
    /// Denied by the policy but forwarded in report mode ([`super::report`]).
    WouldDeny,
}

impl Outcome {
    /// The label in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Inject => "inject",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
            Outcome::WouldDeny => "would_deny",
        }
    }
}

/// Annotations in the log: a JSON object of key → value, or `-` for none.
struct Notes<'a>(&'a [crate::policy::Annotation]);

impl std::fmt::Display for Notes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        let map: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|a| (a.key.clone(), serde_json::Value::String(a.value.clone())))
            .collect();
        write!(f, "{}", serde_json::Value::Object(map))
    }
}

/// A redirected connection's original destination in the log, `-` for none.
struct OriginalDst(Option<SocketAddr>);

impl std::fmt::Display for OriginalDst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("-"),
        }
    }
}

/// One request's log line, filled in as the request goes through the pipeline.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub(crate) start: Instant,
    /// Wall-clock time the record was opened, before the policy was asked.
    pub(crate) started_at: std::time::SystemTime,
    pub(crate) client: SocketAddr,
    pub(crate) method: String,
    pub(crate) scheme: Scheme,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
    pub(crate) outcome: Outcome,
    pub(crate) rule: Option<String>,
    pub(crate) annotations: Vec<crate::policy::Annotation>,
    pub(crate) deny_kind: Option<&'static str>,
    pub(crate) status: u16,
    pub(crate) generation: Option<(u64, String)>,
    pub(crate) metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    /// The original destination of a redirected (transparent) connection.
    pub(crate) original: Option<SocketAddr>,
    /// Digest of the body the policy read (`policy replay` tells such lines apart).
    pub(crate) body_sha256: Option<String>,
    /// For a `would_deny` line: the status and reason of the denial not made.
    pub(crate) reason: Option<String>,
    /// Where the shadow policy's answer lands (`None` without a shadow).
    pub(crate) shadow: Option<super::shadow::Slot>,
}

impl AccessRecord {
    /// A record for a request that has just arrived.
    pub(crate) fn new(
        start: Instant,
        client: SocketAddr,
        method: &str,
        scheme: Scheme,
        host: &str,
        port: u16,
        path: &str,
    ) -> Self {
        Self {
            start,
            started_at: std::time::SystemTime::now(),
            client,
            method: method.to_owned(),
            scheme,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
            outcome: Outcome::Error,
            rule: None,
            annotations: Vec::new(),
            deny_kind: None,
            status: 0,
            generation: None,
            metrics: None,
            original: None,
            body_sha256: None,
            reason: None,
            shadow: None,
        }
    }

    /// Write the line.
    pub(crate) fn emit(&self, bytes: u64, complete: bool) {
        let elapsed = self.start.elapsed();
        if let Some(metrics) = &self.metrics {
            metrics.request(self.outcome.as_str(), self.status, elapsed);
        }
        line::emit(
            "access",
            &Line {
                record: self,
                bytes,
                complete,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
            },
        );
    }
}

/// A record's line: its fields in order.
struct Line<'a> {
    record: &'a AccessRecord,
    bytes: u64,
    complete: bool,
    duration_ms: f64,
}

impl line::Fields for Line<'_> {
    fn each(&self, sink: &mut dyn FnMut(&'static str, Value<'_>)) {
        let r = self.record;
        sink(
            "start",
            Value::Shown(&humantime::format_rfc3339_micros(r.started_at)),
        );
        sink("client", Value::Shown(&r.client));
        sink("method", Value::Str(&r.method));
        sink("scheme", Value::Str(r.scheme.as_str()));
        sink("host", Value::Str(&r.host));
        sink("port", Value::Num(u64::from(r.port)));
        sink("path", Value::Str(&r.path));
        sink("decision", Value::Str(r.outcome.as_str()));
        sink("rule", Value::Str(r.rule.as_deref().unwrap_or("-")));
        sink("annotations", Value::Shown(&Notes(&r.annotations)));
        sink("deny_kind", Value::Str(r.deny_kind.unwrap_or("-")));
        sink("status", Value::Num(u64::from(r.status)));
        sink("bytes", Value::Num(self.bytes));
        sink(
            "duration_ms",
            Value::Shown(&format_args!("{:.3}", self.duration_ms)),
        );
        sink(
            "generation",
            Value::Num(r.generation.as_ref().map_or(0, |g| g.0)),
        );
        sink(
            "policy",
            Value::Str(r.generation.as_ref().map_or("-", |g| g.1.as_str())),
        );
        sink("original_dst", Value::Shown(&OriginalDst(r.original)));
        sink(
            "body_sha256",
            Value::Str(r.body_sha256.as_deref().unwrap_or("-")),
        );
        sink("reason", Value::Str(r.reason.as_deref().unwrap_or("-")));
        let (shadow, shadow_decision, shadow_rule) = super::shadow::fields(r.shadow.as_ref());
        sink("shadow", Value::Str(shadow));
        sink("shadow_decision", Value::Str(shadow_decision));
        sink(
            "shadow_rule",
            Value::Str(shadow_rule.as_deref().unwrap_or("-")),
        );
        sink(
            "outcome",
            Value::Str(if self.complete { "complete" } else { "aborted" }),
        );
    }
}
