//! The decision: one [`Request`] → one [`Verdict`], in flat steps.
//!
//! 1. Find the route for the host (exact beats wildcard; longest wildcard wins);
//!    none → 403.
//! 2. The port must be one the route allows (default 443 for https and CONNECT,
//!    80 for http) → else 403.
//! 3. A CONNECT is decided here: the tunnel is allowed.
//! 4. With `methods`, the request's method must be one of them → else 405 with an
//!    `allow` header listing them.
//! 5. With a `path_allowlist`, the normalised path must start with an entry
//!    (see [`crate::path`]) → else 403 (400 for a malformed or ambiguous path).
//! 6. No `auth` → allow. With `auth`: plain http without `inject_over_http` → 403;
//!    otherwise inject `authorization: <scheme> <secret>`.

use crate::host::normalize_request_host;
use crate::path::{self, NormalPath, PathError};
use crate::request::{Request, Scheme};
use crate::routes::{Route, Routes};
use crate::verdict::{InjectedHeader, Part, Verdict};

/// Longest piece of request text (host, path) quoted in a deny reason, in characters.
const MAX_QUOTED_CHARS: usize = 200;

/// Status for a refusal by policy.
const FORBIDDEN: u16 = 403;
/// Status for a method the route does not allow.
const METHOD_NOT_ALLOWED: u16 = 405;
/// Status for a path the policy cannot interpret.
const BAD_REQUEST: u16 = 400;

impl Routes {
    /// Decides one request. Pure: the same request always gets the same verdict.
    pub fn decide(&self, request: &Request) -> Verdict {
        let host = normalize_request_host(&request.host);
        let Some(route) = self.route_for(&host) else {
            return Verdict::deny(
                FORBIDDEN,
                format!(
                    "no route allows host `{}`; the egress policy blocks it",
                    quote(&host)
                ),
                None,
            );
        };
        let rule = Some(route.rule.as_str());
        let connect = request.is_connect();
        if !route.allows_port(request.port, request.scheme, connect) {
            return Verdict::deny(
                FORBIDDEN,
                format!(
                    "port {} is not allowed for `{}` (allowed: {})",
                    request.port,
                    quote(&host),
                    route.describe_ports(request.scheme, connect)
                ),
                rule,
            );
        }
        if connect {
            return allow(route);
        }
        if let Some(denial) = check_method(route, &request.method) {
            return denial;
        }
        if let Some(denial) = check_path(route, &request.path) {
            return denial;
        }
        credentials(route, request, &host)
    }
}

fn allow(route: &Route) -> Verdict {
    Verdict::Allow {
        rule: Some(route.rule.clone()),
    }
}

/// Step 4: `None` if the method is allowed, else a 405 naming the allowed ones.
fn check_method(route: &Route, method: &str) -> Option<Verdict> {
    let methods = route.methods.as_ref()?;
    if methods.iter().any(|allowed| allowed == method) {
        return None;
    }
    let allowed = methods.join(", ");
    Some(Verdict::Deny {
        status: METHOD_NOT_ALLOWED,
        reason: format!(
            "method {} is not allowed for `{}` (allowed: {allowed})",
            quote(method),
            route.rule
        ),
        rule: Some(route.rule.clone()),
        headers: vec![("allow".to_owned(), allowed)],
    })
}

/// Step 5: `None` if the path is allowed, else the denial.
fn check_path(route: &Route, path_and_query: &str) -> Option<Verdict> {
    if route.path_allowlist.is_empty() {
        return None;
    }
    let shown = || quote(path::without_query(path_and_query));
    let rule = Some(route.rule.as_str());
    let path = match NormalPath::parse(path_and_query) {
        Ok(path) => path,
        Err(PathError::NotAbsolute) => {
            return Some(Verdict::deny(
                FORBIDDEN,
                format!(
                    "path `{}` does not start with `/`; `{}` allows only {}",
                    shown(),
                    route.rule,
                    allowed_prefixes(route)
                ),
                rule,
            ));
        }
        Err(PathError::Malformed(why)) => {
            return Some(Verdict::deny(
                BAD_REQUEST,
                format!("malformed path `{}`: {why}", shown()),
                rule,
            ));
        }
        Err(PathError::Ambiguous) => {
            return Some(Verdict::deny(
                BAD_REQUEST,
                format!(
                    "ambiguous path `{}`: it mixes dot-segments with encoded \
                     separators, `;` or `//`, which servers read differently; send it \
                     with dot-segments resolved",
                    shown()
                ),
                rule,
            ));
        }
    };
    if route
        .path_allowlist
        .iter()
        .any(|allowed| path.starts_with(&allowed.normal))
    {
        return None;
    }
    Some(Verdict::deny(
        FORBIDDEN,
        format!(
            "path `{}` is not in the allowlist for `{}` (allowed: {})",
            quote(path.as_str()),
            route.rule,
            allowed_prefixes(route)
        ),
        rule,
    ))
}

/// Step 6: allow, inject, or refuse to inject over plain http.
fn credentials(route: &Route, request: &Request, host: &str) -> Verdict {
    let Some(auth) = &route.auth else {
        return allow(route);
    };
    if request.scheme == Scheme::Http && !route.inject_over_http {
        return Verdict::deny(
            FORBIDDEN,
            format!(
                "route `{}` injects credentials only over https; use https://{}/ instead of http://",
                route.rule,
                url_host(&quote(host))
            ),
            Some(&route.rule),
        );
    }
    Verdict::Inject {
        headers: vec![InjectedHeader {
            name: "authorization".to_owned(),
            value: vec![
                Part::Literal(auth.scheme.prefix().to_owned()),
                Part::Secret(auth.token_ref.clone()),
            ],
        }],
        rule: Some(route.rule.clone()),
    }
}

/// A host as written in a URL: IPv6 literals in brackets.
fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The route's allowlist as written, for deny reasons: `` `/a/`, `/b/` ``.
fn allowed_prefixes(route: &Route) -> String {
    route
        .path_allowlist
        .iter()
        .map(|allowed| format!("`{}`", allowed.written))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Request text for a reason, cut to [`MAX_QUOTED_CHARS`].
fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or(text)),
        None => text.to_owned(),
    }
}
