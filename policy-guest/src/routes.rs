//! The typed routes document: what [`Routes::parse`] produces, how a request's host
//! finds its route, and the summary `configure` reports.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{self, ConfigError};
use crate::git::GitRules;
use crate::graphql::GraphqlRules;
use crate::host::HostPattern;
use crate::mcp::McpRules;
use crate::path::NormalPath;
use crate::rate::RateLimit;
use crate::request::Scheme;

/// The port a route allows over https (and for CONNECT) when it lists none.
pub(crate) const DEFAULT_HTTPS_PORT: u16 = 443;
/// The port a route allows over plain http when it lists none.
pub(crate) const DEFAULT_HTTP_PORT: u16 = 80;

/// An accepted routes document, ready to decide requests.
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<Route>,
    /// Exact host → index into `routes`.
    exact: BTreeMap<String, usize>,
    /// Indices of wildcard routes, longest suffix first.
    wildcards: Vec<usize>,
}

/// What an accepted document declares (the WIT `summary`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// How many routes the document defines.
    pub rules: u32,
    /// Every secret name a verdict may reference, sorted, without duplicates.
    pub secrets: Vec<String>,
    /// Every rule id, in document order (a route's id is its normalised host).
    pub rule_ids: Vec<String>,
}

/// One route of the document.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) host: HostPattern,
    /// The rule id reported in verdicts: the normalised host pattern.
    pub(crate) rule: String,
    /// Allowed path prefixes; empty = any path.
    pub(crate) path_allowlist: Vec<AllowedPath>,
    pub(crate) auth: Option<Auth>,
    /// Allowed ports, sorted; `None` = the scheme's default.
    pub(crate) ports: Option<Vec<u16>>,
    /// Inject credentials over plain http too (default: https only).
    pub(crate) inject_over_http: bool,
    /// Report mode for this route: what it would deny is allowed and reported
    /// ([`crate::Verdict::Report`]) instead.
    pub(crate) report: bool,
    /// Allowed methods for requests inside a tunnel or over plain http, as written
    /// (upper-case tokens); `None` = any.
    pub(crate) methods: Option<Vec<String>>,
    /// Largest request body, in bytes; `None` = no limit of the policy's own.
    pub(crate) max_body_bytes: Option<u64>,
    /// GraphQL operation types and mutation fields on the route's GraphQL endpoint.
    pub(crate) graphql: Option<GraphqlRules>,
    /// Fetch, push (ref patterns), delete and repositories for git's smart HTTP.
    pub(crate) git: Option<GitRules>,
    /// JSON-RPC methods and MCP tools on the route's MCP endpoint.
    pub(crate) mcp: Option<McpRules>,
    /// Requests per period, per route or per client.
    pub(crate) rate_limit: Option<RateLimit>,
}

/// One `path_allowlist` entry.
#[derive(Debug, Clone)]
pub(crate) struct AllowedPath {
    /// As written in the routes document, for deny reasons.
    pub(crate) written: String,
    pub(crate) normal: NormalPath<'static>,
}

/// Credentials a route injects as `Authorization: <scheme> <secret>`.
#[derive(Debug, Clone)]
pub(crate) struct Auth {
    pub(crate) scheme: AuthScheme,
    /// The secret's name; the host resolves it.
    pub(crate) token_ref: String,
}

/// The `Authorization` scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthScheme {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: token <token>` (GitHub's classic form).
    Token,
}

impl AuthScheme {
    /// The literal text before the secret in the header value.
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            Self::Bearer => "Bearer ",
            Self::Token => "token ",
        }
    }
}

impl Route {
    /// Whether the route admits `port` for a request of this kind.
    pub(crate) fn allows_port(&self, port: u16, scheme: Scheme, connect: bool) -> bool {
        match &self.ports {
            Some(ports) => ports.contains(&port),
            None => port == default_port(scheme, connect),
        }
    }

    /// The allowed ports, for deny reasons (`443` or `443, 8443`).
    pub(crate) fn describe_ports(&self, scheme: Scheme, connect: bool) -> String {
        match &self.ports {
            Some(ports) => ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            None => default_port(scheme, connect).to_string(),
        }
    }
}

fn default_port(scheme: Scheme, connect: bool) -> u16 {
    match scheme {
        Scheme::Https => DEFAULT_HTTPS_PORT,
        Scheme::Http if connect => DEFAULT_HTTPS_PORT,
        Scheme::Http => DEFAULT_HTTP_PORT,
    }
}

impl Routes {
    /// Parses and validates a routes document (JSON text). The error names the route
    /// and field at fault, e.g. `routes[2].auth: missing `token_ref``.
    pub fn parse(json: &str) -> Result<Routes, ConfigError> {
        let routes = config::parse_document(json)?;
        let mut exact = BTreeMap::new();
        let mut wildcards = Vec::new();
        let mut seen: BTreeMap<&HostPattern, usize> = BTreeMap::new();
        for (index, route) in routes.iter().enumerate() {
            if let Some(first) = seen.insert(&route.host, index) {
                return Err(ConfigError::new(
                    format!("routes[{index}].host"),
                    format!(
                        "`{}` is the same host as routes[{first}]; merge the two routes into one",
                        route.rule
                    ),
                ));
            }
            match &route.host {
                HostPattern::Exact(name) => {
                    exact.insert(name.clone(), index);
                }
                HostPattern::Wildcard(_) => wildcards.push(index),
            }
        }
        wildcards.sort_by_key(|&index| {
            std::cmp::Reverse(routes.get(index).map_or(0, |route| route.rule.len()))
        });
        Ok(Routes {
            routes,
            exact,
            wildcards,
        })
    }

    /// How many rules the document has and which secrets it may reference.
    pub fn summary(&self) -> Summary {
        let secrets: BTreeSet<&str> = self
            .routes
            .iter()
            .filter_map(|route| route.auth.as_ref())
            .map(|auth| auth.token_ref.as_str())
            .collect();
        Summary {
            rules: u32::try_from(self.routes.len()).unwrap_or(u32::MAX),
            secrets: secrets.into_iter().map(str::to_owned).collect(),
            rule_ids: self.routes.iter().map(|route| route.rule.clone()).collect(),
        }
    }

    /// Every route, in document order.
    pub(crate) fn all(&self) -> &[Route] {
        &self.routes
    }

    /// The route for a normalised request host: an exact pattern beats any wildcard,
    /// and among wildcards the longest suffix wins.
    pub(crate) fn route_for(&self, host: &str) -> Option<&Route> {
        if let Some(&index) = self.exact.get(host) {
            return self.routes.get(index);
        }
        self.wildcards
            .iter()
            .filter_map(|&index| self.routes.get(index))
            .find(|route| route.host.matches(host))
    }
}
