//! `policy test` case files: named requests with the verdict each must get.
//!
//! ```yaml
//! cases:
//!   - name: reading acme's repos injects the token
//!     method: GET                    # optional, default GET
//!     url: https://api.github.com/repos/acme/widget
//!     headers: { accept: application/json }   # optional
//!     expect:
//!       verdict: inject              # allow | deny | inject
//!       rule: api.github.com         # optional: the rule id must equal this
//!       headers:                     # optional (inject): exactly these headers
//!         authorization: "Bearer ${GH_PAT}"
//!   - name: a tunnel to an unrouted host is refused
//!     method: CONNECT
//!     url: evil.example:443          # CONNECT takes host:port
//!     expect: { verdict: deny, status: 403, reason: "no route" }  # reason: substring
//! ```
//!
//! Header templates use `${NAME}` for a secret reference and `$$` for a literal `$`.
//!
//! URLs are normalised exactly as the proxy normalises them before asking the policy
//! ([`crate::target`]): the policy sees resolved dot-segments and canonical IP
//! literals. A URL the proxy refuses before the policy is asked (an ambiguous path, an
//! invalid host) counts as `deny` with status 400, as the agent would see it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

use crate::policy::{Denial, DenyKind, Generation, Request, Template, Verdict};
use crate::target::{Target, TargetError};

/// The client address used for requests from the command line and case files.
pub const LOCAL_CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// A case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The cases, run in order.
    pub cases: Vec<Case>,
}

/// One named request and what must happen to it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in the output.
    pub name: String,
    /// Request method; default `GET`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Absolute URL, or `host:port` for `CONNECT`.
    pub url: String,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Client address (`ip:port`); default [`LOCAL_CLIENT`].
    #[serde(default)]
    pub client: Option<SocketAddr>,
    /// The expected verdict.
    pub expect: Expect,
}

fn default_method() -> String {
    "GET".into()
}

/// The verdict kind a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedKind {
    /// `allow`.
    Allow,
    /// `deny`.
    Deny,
    /// `inject`.
    Inject,
}

/// What a case expects. Only the fields given are checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// allow, deny or inject.
    pub verdict: ExpectedKind,
    /// Deny status.
    #[serde(default)]
    pub status: Option<u16>,
    /// A substring of the deny reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// The rule id.
    #[serde(default)]
    pub rule: Option<String>,
    /// Exactly the injected headers, name → template.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
}

/// Why a case file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaseFileError {
    /// Unreadable.
    #[error("cannot read case file {0}: {1}")]
    Read(String, std::io::Error),
    /// Not a valid case file.
    #[error("case file {0} is invalid: {1}")]
    Parse(String, String),
}

impl CaseFile {
    /// Read and parse a case file.
    pub fn load(path: &Path) -> Result<Self, CaseFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CaseFileError::Read(path.display().to_string(), e))?;
        Self::parse(&text).map_err(|e| CaseFileError::Parse(path.display().to_string(), e))
    }

    /// Parse case-file text (YAML or JSON).
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: CaseFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        for case in &file.cases {
            if let Some(headers) = &case.expect.headers {
                for (name, template) in headers {
                    Template::parse(template)
                        .map_err(|e| format!("case `{}`, header `{name}`: {e}", case.name))?;
                }
            }
        }
        Ok(file)
    }
}

/// Build the request a case or `policy eval` describes.
pub fn request_for(
    method: &str,
    url: &str,
    headers: impl IntoIterator<Item = (String, String)>,
    client: SocketAddr,
) -> Result<Request, TargetError> {
    let method = method.to_ascii_uppercase();
    let target = if method == "CONNECT" {
        Target::from_authority(url)?
    } else {
        Target::from_url(url)?
    };
    Ok(Request::new(&method, target, headers, client))
}

impl Case {
    /// Run the case: `Ok(())` if the verdict matches, else what differs.
    pub fn run(&self, generation: &Generation) -> Result<(), String> {
        let headers = self.headers.iter().map(|(k, v)| (k.clone(), v.clone()));
        let client = self.client.unwrap_or(LOCAL_CLIENT);
        let verdict = match request_for(&self.method, &self.url, headers, client) {
            Ok(request) => generation.evaluate(&request),
            // What the agent gets for a URL the proxy refuses before the policy is
            // asked (an ambiguous path, a host that is not a host): a 400.
            Err(refused) => Verdict::Deny(Denial {
                status: 400,
                reason: format!("refused before the policy: {refused}"),
                rule: None,
                kind: DenyKind::Policy,
            }),
        };
        self.expect.compare(&verdict)
    }
}

impl Expect {
    /// Compare a verdict with what is expected; the error lists every difference.
    pub fn compare(&self, verdict: &Verdict) -> Result<(), String> {
        let mut diffs = Vec::new();
        let kind = match self.verdict {
            ExpectedKind::Allow => "allow",
            ExpectedKind::Deny => "deny",
            ExpectedKind::Inject => "inject",
        };
        if verdict.kind() != kind {
            diffs.push(format!("expected {kind}, got {}", describe(verdict)));
        }
        if let Some(rule) = &self.rule
            && verdict.rule() != Some(rule.as_str())
        {
            diffs.push(format!("expected rule `{rule}`, got {:?}", verdict.rule()));
        }
        if let Verdict::Deny(denial) = verdict {
            if let Some(status) = self.status
                && denial.status != status
            {
                diffs.push(format!("expected status {status}, got {}", denial.status));
            }
            if let Some(reason) = &self.reason
                && !denial.reason.contains(reason.as_str())
            {
                diffs.push(format!(
                    "expected reason containing `{reason}`, got `{}`",
                    denial.reason
                ));
            }
        }
        if let (Some(expected), Verdict::Inject { headers, .. }) = (&self.headers, verdict) {
            let actual: BTreeMap<String, String> = headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_string()))
                .collect();
            let expected: BTreeMap<String, String> = expected
                .iter()
                .map(|(name, t)| {
                    // Parsed when the file was loaded; re-render to compare canonically.
                    let t = Template::parse(t).map(|t| t.to_string());
                    (name.to_ascii_lowercase(), t.unwrap_or_else(|e| e))
                })
                .collect();
            if actual != expected {
                diffs.push(format!("expected headers {expected:?}, got {actual:?}"));
            }
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(diffs.join("; "))
        }
    }
}

/// A verdict in one line, e.g. `deny 403 (rule x): reason`.
pub fn describe(verdict: &Verdict) -> String {
    let mut s = String::from(verdict.kind());
    if let Verdict::Deny(d) = verdict {
        let _ = write!(s, " {}", d.status);
    }
    if let Some(rule) = verdict.rule() {
        let _ = write!(s, " (rule {rule})");
    }
    if let Verdict::Deny(d) = verdict {
        let _ = write!(s, ": {}", d.reason);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let file = CaseFile::parse(
            r#"
cases:
  - name: inject
    url: https://api.github.com/repos/acme/widget
    headers: { accept: application/json }
    expect:
      verdict: inject
      headers: { authorization: "Bearer ${GH_PAT}" }
  - name: tunnel
    method: CONNECT
    url: evil.example:443
    expect: { verdict: deny, status: 403, reason: "no route" }
"#,
        )
        .unwrap();
        assert_eq!(file.cases.len(), 2);
        assert_eq!(file.cases[0].method, "GET");
        assert_eq!(file.cases[1].expect.verdict, ExpectedKind::Deny);
    }

    #[test]
    fn unknown_keys_and_bad_templates_are_errors() {
        assert!(
            CaseFile::parse(
                "cases: [{name: a, url: 'http://x/', expect: {verdict: allow}, extra: 1}]"
            )
            .is_err()
        );
        assert!(
            CaseFile::parse("cases: [{name: a, url: 'http://x/', expect: {verdict: maybe}}]")
                .is_err()
        );
        assert!(CaseFile::parse("cases: [{name: a, url: 'http://x/', expect: {verdict: inject, headers: {a: '$x'}}}]").is_err());
    }

    #[test]
    fn request_for_connect_and_url() {
        let r = request_for("connect", "x.example:443", [], LOCAL_CLIENT).unwrap();
        assert!(r.is_connect());
        assert_eq!(r.path, "");
        let r = request_for(
            "get",
            "https://x.example/a",
            [("Authorization".to_owned(), "Bearer agent".to_owned())],
            LOCAL_CLIENT,
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert!(
            r.headers.is_empty(),
            "credentials must be hidden from the policy"
        );
    }
}
