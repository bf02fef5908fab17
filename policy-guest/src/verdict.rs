//! The policy's answer: the crate's own mirror of the WIT `verdict`.

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it unchanged.
    Allow {
        /// The rule (route) that allowed it.
        rule: Option<String>,
    },
    /// Refuse it; the host answers the client.
    Deny {
        /// HTTP status (4xx or 5xx).
        status: u16,
        /// Why, in words an agent can act on.
        reason: String,
        /// The rule (route) that denied it, if one matched.
        rule: Option<String>,
        /// Headers for the deny response, e.g. `allow` on a 405.
        headers: Vec<(String, String)>,
    },
    /// Hold the request and decide again with (a prefix of) its body.
    NeedBody {
        /// At most this many bytes.
        max_bytes: u64,
        /// Whether a prefix is enough.
        prefix: bool,
    },
    /// A route in report mode would have denied it: forward it unchanged (no
    /// credentials injected) and report the denial. The WIT has no such verdict, so
    /// the component answers `allow` with the annotations [`REPORT_ANNOTATION`] (the
    /// reason) and [`REPORT_STATUS_ANNOTATION`] (the status), which the host logs as
    /// `would_deny`.
    Report {
        /// The status the denial would have had.
        status: u16,
        /// Why it would have been denied.
        reason: String,
        /// The route.
        rule: Option<String>,
    },
    /// Forward it with these headers set.
    Inject {
        /// Headers to set, replacing any the client sent.
        headers: Vec<InjectedHeader>,
        /// The rule (route) that matched.
        rule: Option<String>,
    },
}

/// The annotation that carries a report-mode route's would-be denial reason.
pub const REPORT_ANNOTATION: &str = "would-deny";
/// The annotation that carries a report-mode route's would-be denial status.
pub const REPORT_STATUS_ANNOTATION: &str = "would-deny-status";

/// A header whose value the host assembles from literal text and secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedHeader {
    /// Header name, lower-case.
    pub name: String,
    /// The value: the concatenation of its parts.
    pub value: Vec<Part>,
}

/// One piece of an injected header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text used as is.
    Literal(String),
    /// The value of the named secret, resolved by the host.
    Secret(String),
}

impl Verdict {
    /// A denial; `rule` is the matched route's id, if any.
    pub(crate) fn deny(status: u16, reason: String, rule: Option<&str>) -> Self {
        Self::Deny {
            status,
            reason,
            rule: rule.map(str::to_owned),
            headers: Vec::new(),
        }
    }
}
