//! What `policy test --coverage` can name inside a route of the built-in policy:
//! the `path_allowlist` entries, the listed `ports`, and the `git`, `graphql` and
//! `mcp` rules; and which of them one request reaches.
//!
//! A request reaches an item the way [`Routes::decide_head`] walks the route: its
//! host finds the route; its port is an item when the route lists `ports` (a route
//! without them allows only the scheme's default, which nobody wrote, so it is not an
//! item); every allowlist entry the normalised path starts with is reached; a
//! protocol rule is reached when the request is that protocol's (a git smart-HTTP
//! path, the GraphQL or MCP endpoint). A request refused on its port reaches nothing
//! further in the route.

use crate::host::normalize_request_host;
use crate::path::NormalPath;
use crate::request::Request;
use crate::routes::Routes;

/// One thing a route's author wrote that a test can exercise.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoverageItem {
    /// The route's rule id (its normalised host).
    pub rule: String,
    /// `path`, `port`, `git`, `graphql` or `mcp`.
    pub kind: &'static str,
    /// The entry as written: `/repos/acme/`, `8443`, `fetch`, `push`, `/graphql`.
    pub value: String,
}

impl std::fmt::Display for CoverageItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.rule, self.kind, self.value)
    }
}

impl Routes {
    /// Every item of every route, in document order.
    pub fn coverage_items(&self) -> Vec<CoverageItem> {
        let mut items = Vec::new();
        for route in self.all() {
            let item = |kind: &'static str, value: String| CoverageItem {
                rule: route.rule.clone(),
                kind,
                value,
            };
            for port in route.ports.iter().flatten() {
                items.push(item("port", port.to_string()));
            }
            for allowed in &route.path_allowlist {
                items.push(item("path", allowed.written.clone()));
            }
            if let Some(git) = &route.git {
                for service in git.services() {
                    items.push(item("git", service.to_owned()));
                }
            }
            if let Some(graphql) = &route.graphql {
                items.push(item("graphql", graphql.endpoint().to_owned()));
            }
            if let Some(mcp) = &route.mcp {
                items.push(item("mcp", mcp.endpoint().to_owned()));
            }
        }
        items
    }

    /// The items `request` reaches (see the module docs).
    pub fn coverage_reached(&self, request: &Request) -> Vec<CoverageItem> {
        let host = normalize_request_host(&request.host);
        let Some(route) = self.route_for(&host) else {
            return Vec::new();
        };
        let item = |kind: &'static str, value: String| CoverageItem {
            rule: route.rule.clone(),
            kind,
            value,
        };
        let connect = request.is_connect();
        if !route.allows_port(request.port, request.scheme, connect) {
            return Vec::new();
        }
        let mut reached = Vec::new();
        if route.ports.is_some() {
            reached.push(item("port", request.port.to_string()));
        }
        if connect {
            return reached;
        }
        if let Ok(path) = NormalPath::parse(&request.path) {
            for allowed in &route.path_allowlist {
                if path.starts_with(&allowed.normal) {
                    reached.push(item("path", allowed.written.clone()));
                }
            }
        }
        if let Some(service) = route.git.as_ref().and_then(|git| git.service_of(request)) {
            reached.push(item("git", service.to_owned()));
        }
        if let Some(graphql) = &route.graphql
            && graphql.names(request)
        {
            reached.push(item("graphql", graphql.endpoint().to_owned()));
        }
        if let Some(mcp) = &route.mcp
            && mcp.names(request)
        {
            reached.push(item("mcp", mcp.endpoint().to_owned()));
        }
        reached
    }
}
