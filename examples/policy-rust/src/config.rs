//! The policy document: JSON text (the proxy converts the YAML `--routes` file) →
//! a checked [`Policy`], or an error message a person can act on.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// Largest request body allowed when the document does not say: 1 MiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 1 << 20;

/// A checked policy document, ready to decide requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Largest `content-length` accepted, in bytes.
    pub(crate) max_upload_bytes: u64,
    /// Allowed hosts by name (lower-case).
    pub(crate) hosts: BTreeMap<String, Host>,
}

/// What the policy allows on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Host {
    /// Whether POST, PUT and PATCH are allowed besides GET and HEAD.
    pub(crate) uploads: bool,
    /// (path prefix, secret name), longest prefix first.
    pub(crate) tokens: Vec<(String, String)>,
    /// Top-level fields a JSON upload body must not have (empty: bodies not read).
    pub(crate) forbidden_fields: Vec<String>,
}

/// What `configure` reports to the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// How many hosts the document lists.
    pub rules: u32,
    /// Every secret `decide` may reference, sorted; the proxy resolves only these.
    pub secrets: Vec<String>,
    /// The rule ids verdicts name: each host, and each `host/prefix/` with a token.
    pub rule_ids: Vec<String>,
}

/// The document as written; `deny_unknown_fields` turns a typo into an error instead
/// of a silently ignored rule.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default = "default_max_upload_bytes")]
    max_upload_bytes: u64,
    hosts: Vec<HostEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    host: String,
    #[serde(default)]
    uploads: bool,
    #[serde(default)]
    tokens: BTreeMap<String, String>,
    #[serde(default)]
    forbidden_fields: Vec<String>,
}

fn default_max_upload_bytes() -> u64 {
    DEFAULT_MAX_UPLOAD_BYTES
}

impl Policy {
    /// Parse and check a policy document (JSON text).
    pub fn parse(json: &str) -> Result<Self, String> {
        let document: Document =
            serde_json::from_str(json).map_err(|e| format!("invalid policy document: {e}"))?;
        let mut hosts = BTreeMap::new();
        for entry in document.hosts {
            let name = entry.host;
            if name.is_empty() || name != name.to_ascii_lowercase() || name.ends_with('.') {
                return Err(format!(
                    "host `{name}`: write host names in lower case, without a trailing dot"
                ));
            }
            let mut tokens = Vec::with_capacity(entry.tokens.len());
            for (prefix, secret) in entry.tokens {
                check_token(&name, &prefix, &secret)?;
                tokens.push((prefix, secret));
            }
            // Longest prefix first, so the first match is the most specific one.
            tokens.sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
            if !entry.forbidden_fields.is_empty() && !entry.uploads {
                return Err(format!(
                    "host `{name}`: `forbidden_fields` needs `uploads: true` (only uploads have bodies to check)"
                ));
            }
            let host = Host {
                uploads: entry.uploads,
                tokens,
                forbidden_fields: entry.forbidden_fields,
            };
            if hosts.insert(name.clone(), host).is_some() {
                return Err(format!("host `{name}` is listed twice"));
            }
        }
        Ok(Self {
            max_upload_bytes: document.max_upload_bytes,
            hosts,
        })
    }

    /// The summary `configure` returns: one rule per host, and every secret named.
    pub fn summary(&self) -> Summary {
        let secrets: BTreeSet<&str> = self
            .hosts
            .values()
            .flat_map(|host| host.tokens.iter().map(|(_, secret)| secret.as_str()))
            .collect();
        let rule_ids = self
            .hosts
            .iter()
            .flat_map(|(name, host)| {
                std::iter::once(name.clone()).chain(
                    host.tokens
                        .iter()
                        .map(move |(prefix, _)| format!("{name}{prefix}")),
                )
            })
            .collect();
        Summary {
            rules: u32::try_from(self.hosts.len()).unwrap_or(u32::MAX),
            secrets: secrets.into_iter().map(str::to_owned).collect(),
            rule_ids,
        }
    }
}

/// A token prefix must be a whole directory (`/repos/acme/`, so that it cannot match
/// `/repos/acme-evil/`), and a secret name what the proxy accepts as one.
fn check_token(host: &str, prefix: &str, secret: &str) -> Result<(), String> {
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        return Err(format!(
            "host `{host}`: token path `{prefix}` must start and end with `/`"
        ));
    }
    let mut chars = secret.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "host `{host}`: secret name `{secret}` must match [A-Za-z_][A-Za-z0-9_]*"
        ));
    }
    Ok(())
}
