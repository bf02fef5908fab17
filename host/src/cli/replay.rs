//! `egress-proxy policy replay`: re-decide the requests of JSON access logs.
//!
//! Every access line (target [`ACCESS_TARGET`]) becomes the request it records —
//! method, scheme, host, port, path with its query, client — and is decided by the
//! given policy on a frozen clock that moves as the lines' `start` times do, so rate
//! limits replay as they happened. A line is:
//!
//! - **same**: the decision (allow, inject, deny), its rule, and for a deny its status
//!   are what the log recorded;
//! - **different**: any of those differ (exit status 1);
//! - **not exact**: it cannot be replayed exactly — the policy asks for the body, which
//!   the log does not hold (only its digest, `body_sha256`), or the recorded denial
//!   was a policy fault (a trap or timeout, not a verdict);
//! - **skipped**: the proxy refused it itself (`decision: error`), so no verdict was
//!   recorded.
//!
//! The log holds no header values (credentials cannot reach it), so every line is
//! replayed without headers; a decision that read a header may differ, and replay
//! says so in its summary.
//!
//! `--write-cases` writes the same and different lines — what the log recorded, not
//! what the policy now says — as a case file: one case per distinct method and URL
//! (the first occurrence), named `METHOD URL`.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::PolicyArgs;
use super::policy::load;
use crate::cases::{LOCAL_CLIENT, describe, request_for};
use crate::policy::{Head, Verdict};
use crate::proxy::ACCESS_TARGET;

/// One access line, as recorded.
struct Recorded {
    method: String,
    url: String,
    client: std::net::SocketAddr,
    decision: String,
    rule: Option<String>,
    deny_kind: Option<String>,
    status: u64,
    body_sha256: Option<String>,
    start: Option<SystemTime>,
}

impl Recorded {
    /// The access line's fields, or `None` for a line that is not an access line.
    fn parse(line: &str) -> Option<Result<Self, String>> {
        let value: Value = serde_json::from_str(line).ok()?;
        if value.get("target").and_then(Value::as_str) != Some(ACCESS_TARGET) {
            return None;
        }
        Some(Self::from_json(&value))
    }

    fn from_json(value: &Value) -> Result<Self, String> {
        let text = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("the access line has no `{key}`"))
        };
        let optional = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .filter(|v| *v != "-")
                .map(str::to_owned)
        };
        let method = text("method")?.to_owned();
        let host = text("host")?;
        let port = value
            .get("port")
            .and_then(Value::as_u64)
            .ok_or("the access line has no numeric `port`")?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let url = if method == "CONNECT" {
            format!("{host}:{port}")
        } else {
            let scheme = text("scheme")?;
            let default = if scheme == "http" { 80 } else { 443 };
            let path = text("path")?;
            let path = if path.is_empty() { "/" } else { path };
            if port == default {
                format!("{scheme}://{host}{path}")
            } else {
                format!("{scheme}://{host}:{port}{path}")
            }
        };
        Ok(Self {
            method,
            url,
            client: optional("client")
                .and_then(|c| c.parse().ok())
                .unwrap_or(LOCAL_CLIENT),
            decision: text("decision")?.to_owned(),
            rule: optional("rule"),
            deny_kind: optional("deny_kind"),
            status: value.get("status").and_then(Value::as_u64).unwrap_or(0),
            body_sha256: optional("body_sha256"),
            start: optional("start").and_then(|s| humantime::parse_rfc3339(&s).ok()),
        })
    }

    /// The verdict kind the policy gave: a credential that was unavailable was still
    /// an inject.
    fn kind(&self) -> &str {
        if self.deny_kind.as_deref() == Some("credential_unavailable") {
            "inject"
        } else {
            &self.decision
        }
    }

    fn describe(&self) -> String {
        let mut s = self.kind().to_owned();
        if s == "deny" {
            s.push_str(&format!(" {}", self.status));
        }
        if let Some(rule) = &self.rule {
            s.push_str(&format!(" (rule {rule})"));
        }
        s
    }

    /// Whether `verdict` is the recorded decision.
    fn matches(&self, verdict: &Verdict) -> bool {
        let status_matches = match verdict {
            Verdict::Deny(denial) => u64::from(denial.status) == self.status,
            _ => true,
        };
        verdict.kind() == self.kind() && verdict.rule() == self.rule.as_deref() && status_matches
    }

    /// The line as a case expecting what was recorded.
    fn case(&self) -> Value {
        let mut expect = json!({ "verdict": self.kind() });
        if let Some(rule) = &self.rule {
            expect["rule"] = json!(rule);
        }
        if self.kind() == "deny" {
            expect["status"] = json!(self.status);
        }
        json!({
            "name": format!("{} {}", self.method, self.url),
            "method": self.method,
            "url": self.url,
            "expect": expect,
        })
    }
}

/// Counts for the summary.
#[derive(Default)]
struct Tally {
    same: usize,
    different: usize,
    inexact: usize,
    skipped: usize,
    invalid: usize,
}

pub(super) fn replay(
    args: &PolicyArgs,
    logs: &[PathBuf],
    write_cases: Option<&Path>,
) -> Result<ExitCode> {
    let (loaded, clock) = load(args)?;
    let mut out = std::io::stdout().lock();
    let mut tally = Tally::default();
    let mut cases = Vec::new();
    let mut seen = BTreeSet::new();
    let mut last_start: Option<SystemTime> = None;
    for log in logs {
        let text = std::fs::read_to_string(log)
            .with_context(|| format!("cannot read access log {}", log.display()))?;
        for (index, line) in text.lines().enumerate() {
            let at = format!("{}:{}", log.display(), index + 1);
            let recorded = match Recorded::parse(line) {
                None => continue,
                Some(Ok(recorded)) => recorded,
                Some(Err(why)) => {
                    tally.invalid += 1;
                    writeln!(out, "INVALID {at}: {why}")?;
                    continue;
                }
            };
            let what = format!("{} {}", recorded.method, recorded.url);
            if recorded.decision == "error" {
                tally.skipped += 1;
                continue;
            }
            if recorded.deny_kind.as_deref() == Some("policy_fault") {
                tally.inexact += 1;
                writeln!(
                    out,
                    "NOT EXACT {at}: {what}: the recorded denial was a policy fault (trap or timeout), not a verdict"
                )?;
                continue;
            }
            if let Some(start) = recorded.start {
                if let Some(elapsed) = last_start.and_then(|last| start.duration_since(last).ok()) {
                    clock.advance(elapsed);
                }
                if last_start.is_none_or(|last| start > last) {
                    last_start = Some(start);
                }
            }
            let request = match request_for(&recorded.method, &recorded.url, [], recorded.client) {
                Ok(request) => request,
                Err(why) => {
                    tally.invalid += 1;
                    writeln!(out, "INVALID {at}: {what}: {why}")?;
                    continue;
                }
            };
            let verdict = match loaded.generation.evaluate_head(&request) {
                Head::Decided(verdict) => verdict,
                Head::NeedBody(_) => {
                    tally.inexact += 1;
                    let digest = recorded
                        .body_sha256
                        .as_deref()
                        .map_or(String::new(), |d| format!(" (sha256 {d})"));
                    writeln!(
                        out,
                        "NOT EXACT {at}: {what}: the policy reads the body, which the log does not hold{digest}; recorded {}",
                        recorded.describe()
                    )?;
                    continue;
                }
            };
            if recorded.matches(&verdict) {
                tally.same += 1;
            } else {
                tally.different += 1;
                writeln!(
                    out,
                    "DIFFERENT {at}: {what}: recorded {}, now {}",
                    recorded.describe(),
                    describe(&verdict)
                )?;
            }
            if seen.insert(what) {
                cases.push(recorded.case());
            }
        }
    }
    writeln!(
        out,
        "{} same, {} different, {} not exact, {} skipped (refused by the proxy itself), {} invalid",
        tally.same, tally.different, tally.inexact, tally.skipped, tally.invalid
    )?;
    writeln!(
        out,
        "note: the log holds no headers, so every line was replayed without them; a decision that read a header may differ"
    )?;
    if let Some(path) = write_cases {
        let doc = json!({ "cases": cases });
        std::fs::write(path, format!("{doc:#}\n"))
            .with_context(|| format!("cannot write case file {}", path.display()))?;
        writeln!(out, "wrote {} cases to {}", cases.len(), path.display())?;
    }
    Ok(if tally.different == 0 && tally.invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
