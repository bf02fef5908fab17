//! The decision: one [`Request`] → one [`Verdict`], in flat steps.
//!
//! 1. Find the route for the host (exact beats wildcard; longest wildcard wins);
//!    none → 403.
//! 2. The port must be one the route allows (default 443 for https and CONNECT,
//!    80 for http) → else 403.
//! 3. A CONNECT is decided here: the tunnel is allowed.
//! 4. With `methods`, the request's method must be one of them → else 405 with an
//!    `allow` header listing them.
//! 5. With `max_body_bytes`, a `content-length` over it → 413; without one, the body
//!    is needed (a prefix of one byte more than the limit): in `decide_body`, more than
//!    the limit, or a body the host could not hold far enough to tell → 413.
//! 6. With a `path_allowlist`, the normalised path must start with an entry
//!    (see [`crate::path`]) → else 403 (400 for a malformed or ambiguous path).
//! 7. The protocol rules (`git`, `graphql`, `mcp`) decide the requests of their
//!    protocol, reading the body where the decision is in it.
//! 8. With `rate_limit`, a token is spent (only now, so refused requests cost none);
//!    none left → 429 with `retry-after`.
//! 9. No `auth` → allow. With `auth`: plain http without `inject_over_http` → 403;
//!    otherwise inject `authorization: <scheme> <secret>`.
//!
//! A route with `report: true` turns any denial of steps 2–8 into
//! [`Verdict::Report`]: forwarded, no credentials injected, reported by the host as
//! `would_deny`.

use crate::host::normalize_request_host;
use crate::path::{self, NormalPath, PathError};
use crate::request::{Body, Headers, NoHeaders, NoState, Request, Scheme, State};
use crate::routes::{Route, Routes};
use crate::verdict::{InjectedHeader, Part, Verdict};

/// Longest piece of request text (host, path) quoted in a deny reason, in characters.
const MAX_QUOTED_CHARS: usize = 200;

/// Status for a refusal by policy.
const FORBIDDEN: u16 = 403;
/// Status for a method the route does not allow.
const METHOD_NOT_ALLOWED: u16 = 405;
/// Status for a body over the route's limit.
const PAYLOAD_TOO_LARGE: u16 = 413;
/// Status for a path the policy cannot interpret.
const BAD_REQUEST: u16 = 400;

impl Routes {
    /// Decides one request without looking at its headers (as if it had none) and
    /// without rate-limit state (a rate-limited route then refuses). Pure: the same
    /// request always gets the same verdict.
    pub fn decide(&self, request: &Request) -> Verdict {
        self.decide_inner(request, &NoHeaders, None, &NoState)
    }

    /// Decides one request on its head, reading headers where a rule needs them and
    /// spending rate-limit tokens in `state`; may answer [`Verdict::NeedBody`].
    pub fn decide_head(
        &self,
        request: &Request,
        headers: &impl Headers,
        state: &impl State,
    ) -> Verdict {
        self.decide_inner(request, headers, None, state)
    }

    /// Decides a request whose body [`Routes::decide_head`] asked for.
    pub fn decide_body(
        &self,
        request: &Request,
        headers: &impl Headers,
        body: &impl Body,
        state: &impl State,
    ) -> Verdict {
        self.decide_inner(request, headers, Some(body), state)
    }

    fn decide_inner(
        &self,
        request: &Request,
        headers: &impl Headers,
        body: Option<&dyn Body>,
        state: &dyn State,
    ) -> Verdict {
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
        let verdict = decide_route(route, &host, request, headers, body, state);
        match verdict {
            Verdict::Deny {
                status,
                reason,
                rule,
                ..
            } if route.report => Verdict::Report {
                status,
                reason,
                rule,
            },
            verdict => verdict,
        }
    }
}

/// Steps 2–9 for the request's route. (With `report: true`, [`Routes::decide_head`]
/// turns the denial into [`Verdict::Report`].)
fn decide_route(
    route: &Route,
    host: &str,
    request: &Request,
    headers: &impl Headers,
    body: Option<&dyn Body>,
    state: &dyn State,
) -> Verdict {
    let rule = Some(route.rule.as_str());
    let connect = request.is_connect();
    if !route.allows_port(request.port, request.scheme, connect) {
        return Verdict::deny(
            FORBIDDEN,
            format!(
                "port {} is not allowed for `{}` (allowed: {})",
                request.port,
                quote(host),
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
    if let Some(verdict) = check_body_size(route, headers, body) {
        return verdict;
    }
    if let Some(denial) = check_path(route, &request.path) {
        return denial;
    }
    if let Some(verdict) = check_protocols(route, request, headers, body) {
        return verdict;
    }
    if let Some(denial) = route
        .rate_limit
        .as_ref()
        .and_then(|limit| limit.check(&route.rule, request, state))
    {
        return denial;
    }
    credentials(route, request, host)
}

/// Step 7: the protocol rules of the route (`git`, `graphql`, `mcp`): `None` if the
/// request is not theirs or they allow it, else the denial or the body they need.
fn check_protocols(
    route: &Route,
    request: &Request,
    headers: &impl Headers,
    body: Option<&dyn Body>,
) -> Option<Verdict> {
    let rule = route.rule.as_str();
    if let Some(verdict) = route
        .git
        .as_ref()
        .and_then(|git| git.check(rule, request, body))
    {
        return Some(verdict);
    }
    if let Some(verdict) = route
        .graphql
        .as_ref()
        .and_then(|graphql| graphql.check(rule, request, headers, body))
    {
        return Some(verdict);
    }
    route
        .mcp
        .as_ref()
        .and_then(|mcp| mcp.check(rule, request, body))
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

/// Step 5: `None` if the body is within the route's limit, else a 413, or `NeedBody`
/// when only the body itself can tell.
fn check_body_size(
    route: &Route,
    headers: &impl Headers,
    body: Option<&dyn Body>,
) -> Option<Verdict> {
    let max = route.max_body_bytes?;
    let too_large = |size: String| {
        Verdict::deny(
            PAYLOAD_TOO_LARGE,
            format!(
                "the request body ({size}) is over the {max} bytes `{}` allows",
                route.rule
            ),
            Some(&route.rule),
        )
    };
    if let Some(body) = body {
        return if body.len() > max {
            Some(too_large(format!("more than {max} bytes")))
        } else if !body.complete() {
            Some(too_large(format!(
                "more than the {} bytes the proxy holds for inspection, so its size is unknown",
                body.len()
            )))
        } else {
            None
        };
    }
    match headers.get("content-length").as_slice() {
        [] => Some(Verdict::NeedBody {
            max_bytes: max.saturating_add(1),
            prefix: true,
        }),
        [value] => match value.trim().parse::<u64>() {
            Ok(length) if length > max => Some(too_large(format!("{length} bytes"))),
            Ok(_) => None,
            Err(_) => Some(Verdict::deny(
                BAD_REQUEST,
                format!("invalid content-length `{}`", quote(value)),
                Some(&route.rule),
            )),
        },
        _ => Some(Verdict::deny(
            BAD_REQUEST,
            "more than one content-length".to_owned(),
            Some(&route.rule),
        )),
    }
}

/// Step 6: `None` if the path is allowed, else the denial.
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

/// Step 9: allow, inject, or refuse to inject over plain http.
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
pub(crate) fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", text.get(..cut).unwrap_or(text)),
        None => text.to_owned(),
    }
}
