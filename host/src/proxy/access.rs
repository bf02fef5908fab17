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

use std::net::SocketAddr;
use std::time::Instant;

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
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let (shadow, shadow_decision, shadow_rule) = super::shadow::fields(self.shadow.as_ref());
        tracing::info!(
            target: ACCESS_TARGET,
            start = %humantime::format_rfc3339_micros(self.started_at),
            client = %self.client,
            method = %self.method,
            scheme = self.scheme.as_str(),
            host = %self.host,
            port = self.port,
            path = %self.path,
            decision = self.outcome.as_str(),
            rule = self.rule.as_deref().unwrap_or("-"),
            annotations = %Notes(&self.annotations),
            deny_kind = self.deny_kind.unwrap_or("-"),
            status = self.status,
            bytes,
            duration_ms = format_args!("{duration_ms:.3}"),
            generation = self.generation.as_ref().map_or(0, |g| g.0),
            policy = self.generation.as_ref().map_or("-", |g| g.1.as_str()),
            original_dst = %OriginalDst(self.original),
            body_sha256 = self.body_sha256.as_deref().unwrap_or("-"),
            reason = self.reason.as_deref().unwrap_or("-"),
            shadow,
            shadow_decision,
            shadow_rule,
            outcome = if complete { "complete" } else { "aborted" },
            "access"
        );
    }
}
