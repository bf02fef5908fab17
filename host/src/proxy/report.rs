//! Report mode: forward what the policy would deny, and say so loudly.
//!
//! Two ways in, one place that carries them out ([`apply`]):
//!
//! - **global**, `run --enforcement report`: every denial *by the policy's rules*
//!   ([`DenyKind::Policy`]) is forwarded unchanged, with no credentials injected. What
//!   the host refuses on the policy's behalf still refuses: a policy fault (trap,
//!   timeout), an invalid verdict, an unavailable credential — when the proxy cannot
//!   decide safely it denies. The address guard, framing checks and limits act before
//!   or after the policy and are not touched at all.
//! - **per verdict**, within the unchanged WIT contract: a policy that allows with the
//!   annotation [`WOULD_DENY`] (the reason; [`WOULD_DENY_STATUS`] the status) is
//!   reporting a denial it chose not to make. The built-in policy does this for a
//!   route with `report: true`.
//!
//! Either way the access line's `decision` is `would_deny`, with the `rule` and the
//! `reason`; `egress_proxy_requests_total{decision="would_deny"}` counts them.

use super::access::{AccessRecord, Outcome};
use crate::policy::{Annotation, Decision, DenyKind};

/// The annotation a policy allows with to report a denial it did not make.
pub const WOULD_DENY: &str = "would-deny";
/// The status of that denial, as decimal text (optional; default 403).
pub const WOULD_DENY_STATUS: &str = "would-deny-status";

/// `run --enforcement`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Enforcement {
    /// Deny what the policy denies.
    #[default]
    Enforce,
    /// Forward what the policy denies by its rules, and log it as `would_deny`.
    Report,
}

impl Enforcement {
    /// `enforce` or `report`.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Enforce => "enforce",
            Enforcement::Report => "report",
        }
    }
}

/// A denial that was forwarded instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WouldDeny {
    pub(crate) status: u16,
    pub(crate) reason: String,
    pub(crate) rule: Option<String>,
}

/// The decision to carry out under `enforcement`, and the denial it replaced, if any.
pub(crate) fn apply(enforcement: Enforcement, decision: Decision) -> (Decision, Option<WouldDeny>) {
    match decision {
        Decision::Deny(denial)
            if enforcement == Enforcement::Report && denial.kind == DenyKind::Policy =>
        {
            let would = WouldDeny {
                status: denial.status,
                reason: denial.reason,
                rule: denial.rule.clone(),
            };
            let allow = Decision::Allow {
                rule: denial.rule,
                annotations: denial.annotations,
            };
            (allow, Some(would))
        }
        Decision::Allow { rule, annotations } => {
            let would = reported(&annotations, rule.as_ref());
            (Decision::Allow { rule, annotations }, would)
        }
        other => (other, None),
    }
}

/// A denial the policy reported in its annotations.
fn reported(annotations: &[Annotation], rule: Option<&String>) -> Option<WouldDeny> {
    let reason = annotations.iter().find(|a| a.key == WOULD_DENY)?;
    let status = annotations
        .iter()
        .find(|a| a.key == WOULD_DENY_STATUS)
        .and_then(|a| a.value.parse().ok())
        .unwrap_or(crate::policy::DEFAULT_DENY_STATUS);
    Some(WouldDeny {
        status,
        reason: reason.value.clone(),
        rule: rule.cloned(),
    })
}

/// Log a forwarded denial as `would_deny`, with its rule and reason.
pub(crate) fn mark(record: &mut AccessRecord, would: Option<WouldDeny>) {
    if let Some(would) = would {
        record.outcome = Outcome::WouldDeny;
        record.rule = would.rule;
        record.reason = Some(format!("{} {}", would.status, would.reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Denial;

    fn deny(kind: DenyKind) -> Decision {
        Decision::Deny(Denial::host(kind, "no", Some("r".into())))
    }

    #[test]
    fn report_forwards_only_the_policys_own_denials() {
        let (decision, would) = apply(Enforcement::Report, deny(DenyKind::Policy));
        assert!(
            matches!(decision, Decision::Allow { ref rule, .. } if rule.as_deref() == Some("r"))
        );
        assert_eq!(would.unwrap().reason, "no");
        for kind in [
            DenyKind::PolicyFault,
            DenyKind::InvalidVerdict,
            DenyKind::CredentialUnavailable,
        ] {
            let (decision, would) = apply(Enforcement::Report, deny(kind));
            assert!(matches!(decision, Decision::Deny(_)), "{kind:?}");
            assert!(would.is_none());
        }
        let (decision, would) = apply(Enforcement::Enforce, deny(DenyKind::Policy));
        assert!(matches!(decision, Decision::Deny(_)));
        assert!(would.is_none());
    }

    #[test]
    fn the_built_in_policy_reports_with_the_same_annotations() {
        assert_eq!(WOULD_DENY, policy_guest::REPORT_ANNOTATION);
        assert_eq!(WOULD_DENY_STATUS, policy_guest::REPORT_STATUS_ANNOTATION);
    }

    #[test]
    fn an_allow_with_the_annotation_is_a_reported_denial() {
        let annotations = vec![
            Annotation {
                key: WOULD_DENY.into(),
                value: "path not allowed".into(),
            },
            Annotation {
                key: WOULD_DENY_STATUS.into(),
                value: "405".into(),
            },
        ];
        let allow = Decision::Allow {
            rule: Some("r".into()),
            annotations,
        };
        let (decision, would) = apply(Enforcement::Enforce, allow);
        assert!(matches!(decision, Decision::Allow { .. }));
        let would = would.unwrap();
        assert_eq!(
            (would.status, would.reason.as_str()),
            (405, "path not allowed")
        );
    }
}
