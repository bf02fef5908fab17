//! Reading the routes document: JSON text → [`Route`]s, field by field, so that every
//! error names the route and field at fault (`routes[2].auth: missing `token_ref``).
//!
//! The document is strict: unknown keys, wrong JSON types (`null` included: omit an
//! optional key instead), empty or partial `auth`, and empty lists of ports are errors.

use std::fmt;

use serde_json::{Map, Value};

use crate::git::GitRules;
use crate::graphql::GraphqlRules;
use crate::host::HostPattern;
use crate::mcp::McpRules;
use crate::path::{NormalPath, PathError};
use crate::rate::RateLimit;
use crate::routes::{AllowedPath, Auth, AuthScheme, Route};

/// Why a routes document was rejected: where, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: `routes document`, `routes[2]`, `routes[2].auth.token_ref`, ...
    at: String,
    message: String,
}

impl ConfigError {
    pub(crate) fn new(at: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            at: at.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

impl std::error::Error for ConfigError {}

const DOCUMENT: &str = "routes document";
const TOP_KEYS: &[&str] = &["routes"];
const ROUTE_KEYS: &[&str] = &[
    "host",
    "path_allowlist",
    "auth",
    "auth_scheme",
    "token_env",
    "ports",
    "inject_over_http",
    "methods",
    "max_body_bytes",
    "rate_limit",
    "mcp",
    "graphql",
    "git",
    "report",
];
const AUTH_KEYS: &[&str] = &["scheme", "token_ref"];

/// Parses the whole document into routes, in order (duplicates are checked later).
pub(crate) fn parse_document(json: &str) -> Result<Vec<Route>, ConfigError> {
    let document: Value = serde_json::from_str(json)
        .map_err(|error| ConfigError::new(DOCUMENT, format!("not valid JSON: {error}")))?;
    let Value::Object(top) = document else {
        return Err(ConfigError::new(
            DOCUMENT,
            format!(
                "expected an object with a `routes` list, found {}",
                kind(&document)
            ),
        ));
    };
    reject_unknown_keys(&top, TOP_KEYS, DOCUMENT)?;
    let routes = top.get("routes").ok_or_else(|| {
        ConfigError::new(
            DOCUMENT,
            "missing `routes` (a list; `routes: []` denies everything)",
        )
    })?;
    let Value::Array(routes) = routes else {
        return Err(ConfigError::new(
            "routes",
            format!("expected a list of routes, found {}", kind(routes)),
        ));
    };
    routes
        .iter()
        .enumerate()
        .map(|(index, route)| parse_route(&format!("routes[{index}]"), route))
        .collect()
}

fn parse_route(at: &str, value: &Value) -> Result<Route, ConfigError> {
    let Value::Object(route) = value else {
        return Err(ConfigError::new(
            at,
            format!(
                "expected a route (an object with a `host`), found {}",
                kind(value)
            ),
        ));
    };
    reject_unknown_keys(route, ROUTE_KEYS, at)?;
    let host = parse_host(&format!("{at}.host"), route.get("host"))?;
    Ok(Route {
        rule: host.to_string(),
        host,
        path_allowlist: parse_allowlist(
            &format!("{at}.path_allowlist"),
            route.get("path_allowlist"),
        )?,
        auth: parse_auth(at, route)?,
        ports: parse_ports(&format!("{at}.ports"), route.get("ports"))?,
        inject_over_http: parse_bool(
            &format!("{at}.inject_over_http"),
            route.get("inject_over_http"),
        )?
        .unwrap_or(false),
        report: parse_bool(&format!("{at}.report"), route.get("report"))?.unwrap_or(false),
        methods: parse_methods(&format!("{at}.methods"), route.get("methods"))?,
        max_body_bytes: parse_size(&format!("{at}.max_body_bytes"), route.get("max_body_bytes"))?,
        graphql: route
            .get("graphql")
            .map(|value| GraphqlRules::parse(&format!("{at}.graphql"), value))
            .transpose()?,
        git: route
            .get("git")
            .map(|value| GitRules::parse(&format!("{at}.git"), value))
            .transpose()?,
        mcp: route
            .get("mcp")
            .map(|value| McpRules::parse(&format!("{at}.mcp"), value))
            .transpose()?,
        rate_limit: route
            .get("rate_limit")
            .map(|value| RateLimit::parse(&format!("{at}.rate_limit"), value))
            .transpose()?,
    })
}

/// A size in bytes: a whole number, at least 0.
fn parse_size(at: &str, value: Option<&Value>) -> Result<Option<u64>, ConfigError> {
    value
        .map(|value| {
            value.as_u64().ok_or_else(|| {
                ConfigError::new(
                    at,
                    format!("expected a whole number of bytes, found {}", kind(value)),
                )
            })
        })
        .transpose()
}

/// `methods: [GET, HEAD, …]`: HTTP method tokens in upper case (methods are
/// case-sensitive), not CONNECT (a tunnel is decided by host and ports).
fn parse_methods(at: &str, value: Option<&Value>) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let items = non_empty_list(
        at,
        value,
        "a list of methods such as [GET, HEAD]",
        "list at least one method, or omit `methods` to allow any",
    )?;
    let mut methods = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let at = format!("{at}[{index}]");
        let method = expect_str(&at, item)?;
        let token = !method.is_empty()
            && method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(ConfigError::new(
                &at,
                format!("`{method}` is not an HTTP method"),
            ));
        }
        if method != method.to_ascii_uppercase() {
            return Err(ConfigError::new(
                &at,
                format!(
                    "`{method}`: methods are case-sensitive; write `{}`",
                    method.to_ascii_uppercase()
                ),
            ));
        }
        if method == "CONNECT" {
            return Err(ConfigError::new(
                &at,
                "CONNECT is decided by the route's host and ports; list the methods of the requests inside the tunnel",
            ));
        }
        if !methods.iter().any(|m| m == method) {
            methods.push(method.to_owned());
        }
    }
    Ok(Some(methods))
}

fn parse_host(at: &str, value: Option<&Value>) -> Result<HostPattern, ConfigError> {
    let Some(value) = value else {
        return Err(ConfigError::new(at, "missing; every route needs a `host`"));
    };
    let host = expect_str(at, value)?;
    HostPattern::parse(host).map_err(|message| ConfigError::new(at, message))
}

fn parse_allowlist(at: &str, value: Option<&Value>) -> Result<Vec<AllowedPath>, ConfigError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let Value::Array(entries) = value else {
        return Err(ConfigError::new(
            at,
            format!("expected a list of path prefixes, found {}", kind(value)),
        ));
    };
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| parse_allowed_path(&format!("{at}[{index}]"), entry))
        .collect()
}

fn parse_allowed_path(at: &str, value: &Value) -> Result<AllowedPath, ConfigError> {
    let written = expect_str(at, value)?;
    if written.contains(['?', '#']) {
        return Err(ConfigError::new(
            at,
            format!("`{written}` contains `?` or `#`; queries never take part in matching"),
        ));
    }
    let normal = NormalPath::parse(written).map_err(|error| {
        let why = match error {
            PathError::NotAbsolute => "must start with `/`".to_owned(),
            PathError::Malformed(why) => format!("is malformed: {why}"),
            PathError::Ambiguous => {
                "mixes dot-segments with encoded or doubled separators; write it plainly".to_owned()
            }
        };
        ConfigError::new(at, format!("`{written}` {why}"))
    })?;
    Ok(AllowedPath {
        written: written.to_owned(),
        normal: normal.into_owned(),
    })
}

/// Nested `auth: {scheme, token_ref}` or flat `auth_scheme` + `token_env`.
fn parse_auth(at: &str, route: &Map<String, Value>) -> Result<Option<Auth>, ConfigError> {
    let flat_scheme = route.get("auth_scheme");
    let flat_token = route.get("token_env");
    if let Some(nested) = route.get("auth") {
        if flat_scheme.is_some() || flat_token.is_some() {
            return Err(ConfigError::new(
                at,
                "has both `auth` and `auth_scheme`/`token_env`; use only one form",
            ));
        }
        return parse_nested_auth(&format!("{at}.auth"), nested).map(Some);
    }
    match (flat_scheme, flat_token) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::new(
            at,
            "`auth_scheme` without `token_env`; give both or neither",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            at,
            "`token_env` without `auth_scheme`; give both or neither",
        )),
        (Some(scheme), Some(token)) => Ok(Some(Auth {
            scheme: parse_scheme(&format!("{at}.auth_scheme"), scheme)?,
            token_ref: parse_secret_name(&format!("{at}.token_env"), token)?,
        })),
    }
}

fn parse_nested_auth(at: &str, value: &Value) -> Result<Auth, ConfigError> {
    let Value::Object(auth) = value else {
        return Err(ConfigError::new(
            at,
            format!(
                "expected an object with `scheme` and `token_ref`, found {}",
                kind(value)
            ),
        ));
    };
    if auth.is_empty() {
        return Err(ConfigError::new(
            at,
            "is empty; give both `scheme` and `token_ref`, or remove `auth`",
        ));
    }
    reject_unknown_keys(auth, AUTH_KEYS, at)?;
    let scheme = auth
        .get("scheme")
        .ok_or_else(|| ConfigError::new(at, "missing `scheme` (`Bearer` or `token`)"))?;
    let token = auth
        .get("token_ref")
        .ok_or_else(|| ConfigError::new(at, "missing `token_ref` (the secret's name)"))?;
    Ok(Auth {
        scheme: parse_scheme(&format!("{at}.scheme"), scheme)?,
        token_ref: parse_secret_name(&format!("{at}.token_ref"), token)?,
    })
}

fn parse_scheme(at: &str, value: &Value) -> Result<AuthScheme, ConfigError> {
    match expect_str(at, value)? {
        "Bearer" => Ok(AuthScheme::Bearer),
        "token" => Ok(AuthScheme::Token),
        other => Err(ConfigError::new(
            at,
            format!("`{other}` is not supported; use exactly `Bearer` or `token`"),
        )),
    }
}

/// A secret name: `^[A-Za-z_][A-Za-z0-9_]*$`.
fn parse_secret_name(at: &str, value: &Value) -> Result<String, ConfigError> {
    let name = expect_str(at, value)?;
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(ConfigError::new(
            at,
            format!(
                "`{name}` is not a valid secret name; use letters, digits and `_`, \
                 not starting with a digit"
            ),
        ))
    }
}

fn parse_ports(at: &str, value: Option<&Value>) -> Result<Option<Vec<u16>>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let items = non_empty_list(
        at,
        value,
        "a list of port numbers",
        "list at least one port, or omit `ports` for the default (443 for https, 80 for http)",
    )?;
    let mut ports = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            item.as_u64()
                .and_then(|port| u16::try_from(port).ok())
                .filter(|&port| port != 0)
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{at}[{index}]"),
                        format!("`{item}` is not a port number (1-65535)"),
                    )
                })
        })
        .collect::<Result<Vec<u16>, _>>()?;
    ports.sort_unstable();
    ports.dedup();
    Ok(Some(ports))
}

fn parse_bool(at: &str, value: Option<&Value>) -> Result<Option<bool>, ConfigError> {
    value
        .map(|value| {
            value.as_bool().ok_or_else(|| {
                ConfigError::new(
                    at,
                    format!("expected `true` or `false`, found {}", kind(value)),
                )
            })
        })
        .transpose()
}

/// A non-empty list, or an error: `expected` names what was wanted (`a list of
/// patterns`), `if_empty` says what to do instead of an empty one.
pub(crate) fn non_empty_list<'v>(
    at: &str,
    value: &'v Value,
    expected: &str,
    if_empty: &str,
) -> Result<&'v [Value], ConfigError> {
    let Value::Array(items) = value else {
        return Err(ConfigError::new(
            at,
            format!("expected {expected}, found {}", kind(value)),
        ));
    };
    if items.is_empty() {
        return Err(ConfigError::new(at, format!("is empty; {if_empty}")));
    }
    Ok(items)
}

/// An object, or an error naming the expected `shape`.
pub(crate) fn expect_object<'v>(
    at: &str,
    value: &'v Value,
    shape: &str,
) -> Result<&'v Map<String, Value>, ConfigError> {
    value.as_object().ok_or_else(|| {
        ConfigError::new(
            at,
            format!("expected an object {shape}, found {}", kind(value)),
        )
    })
}

pub(crate) fn expect_str<'v>(at: &str, value: &'v Value) -> Result<&'v str, ConfigError> {
    value
        .as_str()
        .ok_or_else(|| ConfigError::new(at, format!("expected a string, found {}", kind(value))))
}

pub(crate) fn reject_unknown_keys(
    object: &Map<String, Value>,
    known: &[&str],
    at: &str,
) -> Result<(), ConfigError> {
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(key) => Err(ConfigError::new(
            at,
            format!("unknown key `{key}`; expected only {}", quoted_list(known)),
        )),
    }
}

fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|item| format!("`{item}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The JSON type of a value, as a phrase for error messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
