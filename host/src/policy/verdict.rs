//! Verdicts: what the guest returned, validated ([`Verdict`]), and what the proxy
//! acts on once secrets are resolved ([`Decision`]).
//!
//! Everything a guest returns is untrusted; `validate` checks it, and a verdict that
//! breaks a rule becomes a deny (fail closed).

use std::fmt;

use http::{HeaderName, HeaderValue};

use crate::secrets::SecretSource;

/// Longest reason or rule text kept from a guest, in bytes.
pub const MAX_TEXT: usize = 1024;
/// Most annotations on one verdict.
pub const MAX_ANNOTATIONS: usize = 8;
/// Longest annotation key, in bytes.
pub const MAX_ANNOTATION_KEY: usize = 64;
/// Longest annotation value kept, in bytes (longer values are cut).
pub const MAX_ANNOTATION_VALUE: usize = 256;
/// Most response headers on one denial.
pub const MAX_RESPONSE_HEADERS: usize = 8;
/// Status used when a guest asks for a status that is not 4xx/5xx, and for faults.
pub const DEFAULT_DENY_STATUS: u16 = 403;

/// One piece of an injected header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text used as is.
    Literal(String),
    /// The value of the named secret.
    Secret(String),
}

/// A header value built from literal text and secret references. Displayed as text in
/// which `${NAME}` is a secret reference and `$$` a literal dollar sign.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template(pub Vec<Part>);

impl Template {
    /// Parse the display form back (used by case files). Adjacent literals merge.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            literal.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                literal.push('$');
                rest = tail;
            } else if let Some(tail) = after.strip_prefix('{') {
                let end = tail
                    .find('}')
                    .ok_or_else(|| format!("unclosed `${{` in `{text}`"))?;
                let name = &tail[..end];
                if !crate::secrets::is_valid_name(name) {
                    return Err(format!(
                        "`${{{name}}}` in `{text}` is not a valid secret name"
                    ));
                }
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Secret(name.to_owned()));
                rest = &tail[end + 1..];
            } else {
                return Err(format!(
                    "`$` in `{text}` must start `${{NAME}}` or be doubled as `$$`"
                ));
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self(parts))
    }

    /// A template from parts, adjacent literals merged and empty ones dropped, so that
    /// equal values compare equal.
    pub fn from_parts(parts: Vec<Part>) -> Self {
        let canonical = parts
            .windows(2)
            .all(|w| !matches!(w, [Part::Literal(_), Part::Literal(_)]))
            && !parts
                .iter()
                .any(|p| matches!(p, Part::Literal(s) if s.is_empty()));
        if canonical {
            return Self(parts);
        }
        let mut out: Vec<Part> = Vec::with_capacity(parts.len());
        for part in parts {
            match (out.last_mut(), part) {
                (_, Part::Literal(s)) if s.is_empty() => {}
                (Some(Part::Literal(prev)), Part::Literal(s)) => prev.push_str(&s),
                (_, part) => out.push(part),
            }
        }
        Self(out)
    }

    /// The secret names this template references.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Part::Secret(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.0 {
            match part {
                Part::Literal(text) => f.write_str(&text.replace('$', "$$"))?,
                Part::Secret(name) => write!(f, "${{{name}}}")?,
            }
        }
        Ok(())
    }
}

/// A short key/value note a policy attached to a verdict, for the access log and the
/// policy CLI. Validated: see [`MAX_ANNOTATIONS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// `a-z`, `0-9`, `_`, `.`, `-`; 1 to [`MAX_ANNOTATION_KEY`] bytes.
    pub key: String,
    /// Control characters replaced; at most [`MAX_ANNOTATION_VALUE`] bytes.
    pub value: String,
}

/// How much of the body the policy needs before it can decide (`need-body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyNeed {
    /// At most this many bytes (decoded), before the host's own cap.
    pub max_bytes: u64,
    /// A prefix is enough: a longer body is held up to `max_bytes` and passed on as
    /// incomplete, instead of being refused with 413.
    pub prefix: bool,
}

/// The head phase's outcome: decided, or the policy needs (some of) the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head<T> {
    /// Decided on the request line and headers.
    Decided(T),
    /// Hold the request, read this much of its body, and ask `decide-body`.
    NeedBody(BodyNeed),
}

/// A header the policy wants set, with its value still a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedHeader {
    /// Validated, lower-case header name.
    pub name: HeaderName,
    /// The value, with secret references unresolved.
    pub value: Template,
}

/// Why a request was denied: by the policy's own rules, or by the host on the
/// policy's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyKind {
    /// The policy returned `deny`.
    Policy,
    /// The guest trapped, timed out, ran out of memory, or could not be instantiated.
    PolicyFault,
    /// The guest returned a verdict the host refuses to act on.
    InvalidVerdict,
    /// An injected secret is missing, empty, or not a valid header value.
    CredentialUnavailable,
}

impl DenyKind {
    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyKind::Policy => "policy",
            DenyKind::PolicyFault => "policy_fault",
            DenyKind::InvalidVerdict => "invalid_verdict",
            DenyKind::CredentialUnavailable => "credential_unavailable",
        }
    }
}

/// A refusal, with what the client will be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// 4xx or 5xx.
    pub status: u16,
    /// Why, in words an agent can act on (no control characters, at most
    /// [`MAX_TEXT`] bytes).
    pub reason: String,
    /// The rule that denied it, if any.
    pub rule: Option<String>,
    /// Who decided.
    pub kind: DenyKind,
    /// Extra headers for the deny response (validated), e.g. `retry-after`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The policy's notes.
    pub annotations: Vec<Annotation>,
}

impl Denial {
    /// A denial made by the host on the policy's behalf.
    pub fn host(kind: DenyKind, reason: impl Into<String>, rule: Option<String>) -> Self {
        Self::with_status(DEFAULT_DENY_STATUS, kind, reason, rule)
    }

    /// A denial with a given status, no headers and no annotations.
    pub fn with_status(
        status: u16,
        kind: DenyKind,
        reason: impl Into<String>,
        rule: Option<String>,
    ) -> Self {
        Self {
            status,
            reason: reason.into(),
            rule,
            kind,
            headers: Vec::new(),
            annotations: Vec::new(),
        }
    }
}

/// A validated verdict, secrets still unresolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward unchanged.
    Allow {
        /// The rule that allowed it.
        rule: Option<String>,
        /// The policy's notes.
        annotations: Vec<Annotation>,
    },
    /// Refuse.
    Deny(Denial),
    /// Forward with these headers set.
    Inject {
        /// Headers to set, replacing any the client sent.
        headers: Vec<InjectedHeader>,
        /// The rule that matched.
        rule: Option<String>,
        /// The policy's notes.
        annotations: Vec<Annotation>,
    },
}

impl Verdict {
    /// `allow`, `deny` or `inject`.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Allow { .. } => "allow",
            Verdict::Deny(_) => "deny",
            Verdict::Inject { .. } => "inject",
        }
    }

    /// The rule id, whichever the verdict.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Verdict::Allow { rule, .. } | Verdict::Inject { rule, .. } => rule.as_deref(),
            Verdict::Deny(denial) => denial.rule.as_deref(),
        }
    }

    /// The policy's notes, whichever the verdict.
    pub fn annotations(&self) -> &[Annotation] {
        match self {
            Verdict::Allow { annotations, .. } | Verdict::Inject { annotations, .. } => annotations,
            Verdict::Deny(denial) => &denial.annotations,
        }
    }

    /// Resolve secret references into header values. A secret that is missing, empty
    /// or not a valid header value denies the request: a request is never forwarded
    /// without the credential its route requires.
    pub fn resolve(self, secrets: &dyn SecretSource) -> Decision {
        let (headers, rule, annotations) = match self {
            Verdict::Allow { rule, annotations } => return Decision::Allow { rule, annotations },
            Verdict::Deny(denial) => return Decision::Deny(denial),
            Verdict::Inject {
                headers,
                rule,
                annotations,
            } => (headers, rule, annotations),
        };
        let unavailable = |reason: String, rule: Option<String>| {
            let mut denial = Denial::host(DenyKind::CredentialUnavailable, reason, rule);
            denial.annotations.clone_from(&annotations);
            Decision::Deny(denial)
        };
        let mut resolved = Vec::with_capacity(headers.len());
        for header in headers {
            let mut bytes = Vec::new();
            for part in &header.value.0 {
                match part {
                    Part::Literal(text) => bytes.extend_from_slice(text.as_bytes()),
                    Part::Secret(name) => match secrets.get(name) {
                        Some(value) if !value.is_empty() => bytes.extend_from_slice(&value),
                        _ => {
                            return unavailable(
                                format!(
                                    "credential unavailable: secret `{name}` is not set on the proxy"
                                ),
                                rule,
                            );
                        }
                    },
                }
            }
            let Ok(mut value) = HeaderValue::from_bytes(&bytes) else {
                return unavailable(
                    format!(
                        "credential unavailable: header `{}` would not be a valid header value",
                        header.name
                    ),
                    rule,
                );
            };
            value.set_sensitive(true);
            resolved.push((header.name, value));
        }
        Decision::Inject {
            headers: resolved,
            rule,
            annotations,
        }
    }
}

/// What the proxy does with a request.
#[derive(Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward unchanged.
    Allow {
        /// The rule that allowed it.
        rule: Option<String>,
        /// The policy's notes.
        annotations: Vec<Annotation>,
    },
    /// Answer with the denial.
    Deny(Denial),
    /// Forward with these headers set (values are marked sensitive).
    Inject {
        /// Headers to set, replacing any the client sent.
        headers: Vec<(HeaderName, HeaderValue)>,
        /// The rule that matched.
        rule: Option<String>,
        /// The policy's notes.
        annotations: Vec<Annotation>,
    },
}

impl fmt::Debug for Decision {
    /// Never prints header values: they hold secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow { rule, annotations } => f
                .debug_struct("Allow")
                .field("rule", rule)
                .field("annotations", annotations)
                .finish(),
            Decision::Deny(denial) => f.debug_tuple("Deny").field(denial).finish(),
            Decision::Inject {
                headers,
                rule,
                annotations,
            } => f
                .debug_struct("Inject")
                .field(
                    "headers",
                    &headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                )
                .field("rule", rule)
                .field("annotations", annotations)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_round_trips() {
        let t = Template(vec![
            Part::Literal("Bearer $x ".into()),
            Part::Secret("GH_PAT".into()),
        ]);
        assert_eq!(t.to_string(), "Bearer $$x ${GH_PAT}");
        assert_eq!(Template::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn template_from_parts_is_canonical() {
        let lit = |s: &str| Part::Literal(s.into());
        let t = Template::from_parts(vec![lit("a"), lit(""), lit("b"), Part::Secret("S".into())]);
        assert_eq!(t, Template(vec![lit("ab"), Part::Secret("S".into())]));
        assert_eq!(Template::parse("ab${S}").unwrap(), t);
    }

    #[test]
    fn template_rejects_stray_dollar() {
        assert!(Template::parse("a $b").is_err());
        assert!(Template::parse("${unclosed").is_err());
        assert!(Template::parse("${1BAD}").is_err());
    }
}
