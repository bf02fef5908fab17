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
//!   - name: a JSON body with a forbidden field is refused
//!     method: POST
//!     url: https://api.example.com/v1/items
//!     headers: { content-type: application/json }
//!     body: '{"name": "x", "admin": true}'   # or body_base64, or body_file (next to
//!                                            # this file), at most one of the three
//!     content_encoding: gzip         # optional: send the body gzip-encoded (gzip,
//!                                    # deflate or zstd; the policy sees it decoded)
//!     after: 2s                      # optional: advance the frozen clock first
//!     expect:
//!       verdict: deny
//!       annotations: { field: admin }          # optional: each must be present
//!       response_headers: { retry-after: "1" } # optional (deny): each must be present
//! ```
//!
//! Header templates use `${NAME}` for a secret reference and `$$` for a literal `$`.
//!
//! Bodies: a case with a body sends `content-length` (unless its headers give one or
//! `transfer-encoding`). A policy that answers `need-body` gets the case's body (an
//! empty one if it has none), held and decoded exactly as the proxy would
//! ([`crate::inspect`]); a body
//! the proxy would refuse (413, 415, 400) is a `deny` with that status. Cases in one
//! file run in order against one rate-limit state on a frozen clock that only `after:`
//! moves, so "five requests pass, the sixth gets 429, a second later one passes" is a
//! file of seven cases.
//!
//! URLs are normalised exactly as the proxy normalises them before asking the policy
//! ([`crate::target`]): the policy sees resolved dot-segments and canonical IP
//! literals. A URL the proxy refuses before the policy is asked (an ambiguous path, an
//! invalid host) counts as `deny` with status 400, as the agent would see it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::inspect::{self, BodyRefusal};
use crate::policy::{Denial, DenyKind, Generation, Head, Request, Template, Verdict};
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
    /// The body, as text.
    #[serde(default)]
    pub body: Option<String>,
    /// The body, base64-encoded.
    #[serde(default)]
    pub body_base64: Option<String>,
    /// The body, from a file next to the case file.
    #[serde(default)]
    pub body_file: Option<String>,
    /// Send the body with this content coding (the runner encodes it).
    #[serde(default)]
    pub content_encoding: Option<String>,
    /// Advance the frozen clock by this much before the case (`2s`, `500ms`).
    #[serde(default, with = "duration")]
    pub after: Option<Duration>,
    /// The bytes sent, from `body*` and `content_encoding` (filled in by
    /// [`CaseFile::load`] / [`CaseFile::parse`]).
    #[serde(skip)]
    pub sent: Vec<u8>,
    /// The expected verdict.
    pub expect: Expect,
}

mod duration {
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::time::Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
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
    /// Annotations that must be present, key → value.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Deny response headers that must be present, name → value.
    #[serde(default)]
    pub response_headers: Option<BTreeMap<String, String>>,
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
    /// Read and parse a case file; `body_file`s are read relative to it.
    pub fn load(path: &Path) -> Result<Self, CaseFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CaseFileError::Read(path.display().to_string(), e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse_in(&text, dir).map_err(|e| CaseFileError::Parse(path.display().to_string(), e))
    }

    /// Parse case-file text (YAML or JSON); `body_file`s are read from the current
    /// directory.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_in(text, Path::new("."))
    }

    fn parse_in(text: &str, dir: &Path) -> Result<Self, String> {
        let mut file: CaseFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        for case in &mut file.cases {
            case.sent = case
                .sent_bytes(dir)
                .map_err(|e| format!("case `{}`: {e}", case.name))?;
        }
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

/// Decide a request as the proxy would, both phases: the head, then — if the policy
/// asks for it — the body (`body`, possibly empty), held and decoded as the proxy
/// holds it, with at most `max_body` bytes inspected. A body the proxy would refuse is
/// a deny with the proxy's status.
pub fn evaluate(generation: &Generation, request: &Request, body: &[u8], max_body: u64) -> Verdict {
    let need = match generation.evaluate_head(request) {
        Head::Decided(verdict) => return verdict,
        Head::NeedBody(need) => need,
    };
    let refused = |refusal: BodyRefusal| {
        Verdict::Deny(Denial::with_status(
            refusal.status(),
            DenyKind::Policy,
            format!("refused by the proxy: {refusal}"),
            None,
        ))
    };
    let codings = match inspect::codings(
        request
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    ) {
        Ok(codings) => codings,
        Err(refusal) => return refused(refusal),
    };
    // The proxy stops reading once more than the limit is held.
    let limit = usize::try_from(inspect::limit(need, max_body)).unwrap_or(usize::MAX);
    let held = body.get(..limit.saturating_add(1)).unwrap_or(body);
    let ended = body.len() <= limit;
    let raw = bytes::Bytes::copy_from_slice(held);
    match inspect::policy_body(&raw, ended, &codings, need, max_body) {
        Ok(view) => generation.evaluate_body(request, &view),
        Err(refusal) => refused(refusal),
    }
}

impl Case {
    /// Run the case: `Ok(())` if the verdict matches, else what differs.
    pub fn run(&self, generation: &Generation, max_body: u64) -> Result<(), String> {
        self.expect.compare(&self.verdict(generation, max_body))
    }

    /// The request the case sends, with its framing headers; `Err` for a URL the
    /// proxy refuses before the policy is asked.
    pub fn request(&self) -> Result<Request, TargetError> {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(coding) = &self.content_encoding {
            headers.push(("content-encoding".to_owned(), coding.clone()));
        }
        // As a client would: a body goes with its length, unless the case says otherwise.
        let framed = headers.iter().any(|(name, _)| {
            name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
        });
        if !self.sent.is_empty() && !framed {
            headers.push(("content-length".to_owned(), self.sent.len().to_string()));
        }
        let client = self.client.unwrap_or(LOCAL_CLIENT);
        request_for(&self.method, &self.url, headers, client)
    }

    /// The verdict the case gets, as the proxy would decide it.
    pub fn verdict(&self, generation: &Generation, max_body: u64) -> Verdict {
        match self.request() {
            Ok(request) => evaluate(generation, &request, &self.sent, max_body),
            // What the agent gets for a URL the proxy refuses before the policy is
            // asked (an ambiguous path, a host that is not a host): a 400.
            Err(refused) => Verdict::Deny(Denial::with_status(
                400,
                DenyKind::Policy,
                format!("refused before the policy: {refused}"),
                None,
            )),
        }
    }

    /// The bytes this case sends: its body, encoded with `content_encoding`.
    fn sent_bytes(&self, dir: &Path) -> Result<Vec<u8>, String> {
        let given = [
            self.body.is_some(),
            self.body_base64.is_some(),
            self.body_file.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err("give at most one of `body`, `body_base64` and `body_file`".into());
        }
        let body = if let Some(text) = &self.body {
            text.as_bytes().to_vec()
        } else if let Some(b64) = &self.body_base64 {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("`body_base64` is not base64: {e}"))?
        } else if let Some(file) = &self.body_file {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|e| format!("`body_file` {}: {e}", path.display()))?
        } else {
            Vec::new()
        };
        match self.content_encoding.as_deref() {
            None => Ok(body),
            Some(coding) => encode(coding, &body),
        }
    }
}

/// Encode a case's body with a content coding.
fn encode(coding: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let io = |e: std::io::Error| format!("cannot {coding}-encode the body: {e}");
    match coding.to_ascii_lowercase().as_str() {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(body).map_err(io)?;
            e.finish().map_err(io)
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(body).map_err(io)?;
            e.finish().map_err(io)
        }
        "zstd" => Ok(ruzstd::encoding::compress_to_vec(
            body,
            ruzstd::encoding::CompressionLevel::Fastest,
        )),
        other => Err(format!(
            "`content_encoding: {other}`: the runner encodes gzip, deflate and zstd; for another coding give the encoded bytes (`body_file`) and a `content-encoding` header"
        )),
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
        if let Some(expected) = &self.annotations {
            for (key, value) in expected {
                let found = verdict.annotations().iter().find(|a| &a.key == key);
                match found {
                    Some(a) if &a.value == value => {}
                    Some(a) => diffs.push(format!(
                        "expected annotation {key}={value}, got {key}={}",
                        a.value
                    )),
                    None => diffs.push(format!("expected annotation {key}={value}, got none")),
                }
            }
        }
        if let Some(expected) = &self.response_headers {
            let actual: &[(http::HeaderName, http::HeaderValue)] = match verdict {
                Verdict::Deny(denial) => &denial.headers,
                _ => &[],
            };
            for (name, value) in expected {
                let found = actual
                    .iter()
                    .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
                    .map(|(_, v)| String::from_utf8_lossy(v.as_bytes()).into_owned());
                if found.as_deref() != Some(value.as_str()) {
                    diffs.push(format!(
                        "expected response header {name}: {value}, got {}",
                        found.unwrap_or_else(|| "none".into())
                    ));
                }
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
    for a in verdict.annotations() {
        let _ = write!(s, " [{}={}]", a.key, a.value);
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
