//! `git:` — git's smart HTTP protocol on a route: whether clients may fetch, which refs
//! they may push to, whether a push may delete a ref, and which repositories.
//!
//! ```yaml
//! git: {fetch: true, push: [refs/heads/agent/*], delete: false, repos: [/acme/*]}
//! ```
//!
//! - `fetch` (default `true`): clone, fetch and ls-remote — `GET …/info/refs` (with
//!   `service=git-upload-pack`, or none: dumb HTTP) and `POST …/git-upload-pack`.
//! - `push` (default none: no push): ref patterns. `GET …/info/refs?service=
//!   git-receive-pack` (push discovery) passes only with some pattern. A `POST
//!   …/git-receive-pack` is decided by its body: the ref update commands before the
//!   pack (see [`receive_pack_commands`]); **every** ref must match a pattern, since
//!   without the `atomic` capability git applies each ref on its own.
//! - `delete` (default `false`): a command with a zero new id also needs this (and a
//!   matching pattern).
//! - `repos` (default any): path patterns for the repository — the request path before
//!   `/info/refs`, `/git-upload-pack` or `/git-receive-pack`, with a trailing `.git`
//!   ignored on both sides (`/acme/widgets` matches `/acme/widgets.git/info/refs`).
//!   Git requests for other repositories are refused.
//!
//! In patterns, `*` matches any run of characters within one component (not `/`),
//! `**` any run across components: `refs/heads/agent/*` admits `refs/heads/agent/x`
//! but not `refs/heads/agent/x/y`; `refs/heads/agent/**` admits both.
//!
//! Dumb-HTTP writing is refused on the route: the WebDAV methods (`PROPFIND`, `MKCOL`,
//! `MOVE`, `COPY`, `LOCK`, `UNLOCK`, `PROPPATCH`), and `PUT` or `DELETE` into a
//! repository (a path with a component ending in `.git`, or under a `repos` pattern).
//! A request path that cannot be normalised is refused (400): it could be read as a
//! git request upstream. The git endpoints are recognised ignoring ASCII case and a
//! trailing `/`, in both readings of encoded separators (see [`crate::path`]).
//!
//! The host writes a refused push as git's own `report-status` (`ng <ref> <reason>`),
//! and a refused discovery as `text/plain`, so git prints the reason.

mod receive_pack;
mod refname;

pub use receive_pack::{Commands, RefUpdate, receive_pack_commands};

use serde_json::Value;

use crate::config::{
    ConfigError, expect_object, expect_str, kind, non_empty_list, reject_unknown_keys,
};
use crate::decide::quote;
use crate::path::{NormalPath, PathError};
use crate::request::{Body, Request};
use crate::verdict::Verdict;

/// Most bytes of a `git-receive-pack` body read for its commands (a prefix: the pack
/// after them is not needed).
pub const MAX_COMMAND_BYTES: u64 = 256 * 1024;

/// The first read of a push body: enough for the commands of most pushes.
const FIRST_READ: u32 = 8 * 1024;
const KEYS: &[&str] = &["fetch", "push", "delete", "repos"];
const FORBIDDEN: u16 = 403;
const BAD_REQUEST: u16 = 400;
const METHOD_NOT_ALLOWED: u16 = 405;
const WEBDAV_METHODS: &[&str] = &[
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "MOVE",
    "COPY",
    "LOCK",
    "UNLOCK",
];

/// A route's git rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GitRules {
    fetch: bool,
    /// Ref patterns a push may update; empty = no push.
    push: Vec<String>,
    delete: bool,
    /// Repository path patterns (without a trailing `.git` or `/`); `None` = any.
    repos: Option<Vec<String>>,
}

/// What a request does in git's smart HTTP protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Fetch,
    PushDiscovery,
    Push,
}

impl GitRules {
    pub(crate) fn parse(at: &str, value: &Value) -> Result<Self, ConfigError> {
        let rules = expect_object(at, value, "such as `{push: [refs/heads/agent/*]}`")?;
        reject_unknown_keys(rules, KEYS, at)?;
        let flag = |key: &str, default: bool| match rules.get(key) {
            None => Ok(default),
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(other) => Err(ConfigError::new(
                format!("{at}.{key}"),
                format!("expected true or false, found {}", kind(other)),
            )),
        };
        let push = patterns(&format!("{at}.push"), rules.get("push"), "refs/")?;
        let delete = flag("delete", false)?;
        if delete && push.as_ref().is_none_or(Vec::is_empty) {
            return Err(ConfigError::new(
                format!("{at}.delete"),
                "is true, but `push` lists no ref patterns; a delete must match one",
            ));
        }
        let repos = patterns(&format!("{at}.repos"), rules.get("repos"), "/")?.map(|repos| {
            repos
                .iter()
                .map(|repo| repo_path(repo).to_owned())
                .collect()
        });
        Ok(Self {
            fetch: flag("fetch", true)?,
            push: push.unwrap_or_default(),
            delete,
            repos,
        })
    }

    /// `None` if the request is not git's or the rules allow it; else the denial, or
    /// the body prefix it needs.
    pub(crate) fn check(
        &self,
        rule: &str,
        request: &Request,
        body: Option<&dyn Body>,
    ) -> Option<Verdict> {
        let refuse = |status: u16, reason: String| Some(Verdict::deny(status, reason, Some(rule)));
        let method = request.method.as_ref();
        if WEBDAV_METHODS.contains(&method) {
            return Some(Verdict::Deny {
                status: METHOD_NOT_ALLOWED,
                reason: format!("{method} (dumb-HTTP/WebDAV git writing) is refused on `{rule}`"),
                rule: Some(rule.to_owned()),
                headers: Vec::new(),
            });
        }
        let path = match NormalPath::parse(&request.path) {
            Ok(path) => path,
            Err(PathError::NotAbsolute) => return None,
            Err(PathError::Malformed(why)) => {
                return refuse(
                    BAD_REQUEST,
                    format!("malformed path: {why}; `{rule}` decides git requests by path"),
                );
            }
            Err(PathError::Ambiguous) => {
                return refuse(
                    BAD_REQUEST,
                    format!(
                        "ambiguous path (dot-segments with encoded separators); `{rule}` decides git requests by path"
                    ),
                );
            }
        };
        let query = query_of(&request.path);
        let mut push_repo = None;
        for reading in path.readings() {
            if matches!(method, "PUT" | "DELETE") && self.is_repository_write(reading) {
                return refuse(
                    FORBIDDEN,
                    format!(
                        "{method} into a git repository (dumb-HTTP writing) is refused on `{rule}`"
                    ),
                );
            }
            let Some((service, repo)) = classify(method, reading, query) else {
                continue;
            };
            if let Some(denial) = self.check_service(rule, service, repo) {
                return Some(denial);
            }
            if service == Service::Push {
                push_repo = Some(repo);
            }
        }
        let repo = push_repo?;
        let Some(body) = body else {
            return Some(Verdict::NeedBody {
                max_bytes: MAX_COMMAND_BYTES,
                prefix: true,
            });
        };
        let (bytes, parsed) = read_commands(body);
        let commands = match parsed {
            Ok(commands) => commands,
            Err(why) if !body.complete() => {
                return refuse(
                    BAD_REQUEST,
                    format!(
                        "the push to `{}` cannot be read in the {} bytes `{rule}` holds: {why}",
                        quote(repo),
                        bytes.len()
                    ),
                );
            }
            Err(why) => {
                return refuse(
                    BAD_REQUEST,
                    format!("the push to `{}` cannot be read: {why}", quote(repo)),
                );
            }
        };
        commands
            .updates
            .iter()
            .find_map(|update| self.refuse_update(rule, update))
            .and_then(|reason| refuse(FORBIDDEN, reason))
    }

    fn check_service(&self, rule: &str, service: Service, repo: &str) -> Option<Verdict> {
        let refuse = |reason: String| Some(Verdict::deny(FORBIDDEN, reason, Some(rule)));
        if let Some(repos) = &self.repos
            && !repos.iter().any(|pattern| glob(pattern, repo_path(repo)))
        {
            return refuse(format!(
                "git repository `{}` is not in `git.repos` of `{rule}` (allowed: {})",
                quote(repo),
                repos.join(", ")
            ));
        }
        match service {
            Service::Fetch if !self.fetch => refuse(format!(
                "git fetch from `{}` is not allowed: `git.fetch` is false on `{rule}`",
                quote(repo)
            )),
            Service::PushDiscovery | Service::Push if self.push.is_empty() => refuse(format!(
                "git push to `{}` is not allowed: `{rule}` has no `git.push` ref patterns",
                quote(repo)
            )),
            _ => None,
        }
    }

    /// Why `update` may not be made, if it may not.
    fn refuse_update(&self, rule: &str, update: &RefUpdate) -> Option<String> {
        let name = &update.name;
        if !self.push.iter().any(|pattern| glob(pattern, name)) {
            return Some(format!(
                "push to {name} refused: it matches no `git.push` pattern of `{rule}` (allowed: {})",
                self.push.join(", ")
            ));
        }
        if update.is_delete() && !self.delete {
            return Some(format!(
                "deleting {name} refused: `git.delete` is false on `{rule}`"
            ));
        }
        None
    }

    /// The services the rules open, for coverage: `fetch`, `push`.
    pub(crate) fn services(&self) -> Vec<&'static str> {
        let mut services = Vec::new();
        if self.fetch {
            services.push("fetch");
        }
        if !self.push.is_empty() {
            services.push("push");
        }
        services
    }

    /// The service a request asks for (`fetch` or `push`), for coverage; `None` if it
    /// is not a git smart-HTTP request.
    pub(crate) fn service_of(&self, request: &Request) -> Option<&'static str> {
        let path = NormalPath::parse(&request.path).ok()?;
        let query = query_of(&request.path);
        path.readings().into_iter().find_map(|reading| {
            classify(request.method.as_ref(), reading, query).map(|(service, _)| match service {
                Service::Fetch => "fetch",
                Service::PushDiscovery | Service::Push => "push",
            })
        })
    }

    /// Whether a `PUT`/`DELETE` to `path` writes into a repository.
    fn is_repository_write(&self, path: &str) -> bool {
        let mut prefix_end = 0;
        for component in path.split('/').skip(1) {
            prefix_end += component.len() + 1;
            let prefix = path.get(..prefix_end).unwrap_or(path);
            if ends_with_ignore_case(component, ".git")
                || self
                    .repos
                    .as_ref()
                    .is_some_and(|repos| repos.iter().any(|p| glob(p, repo_path(prefix))))
            {
                return true;
            }
        }
        false
    }
}

/// The held body's first bytes and their commands: a small first read is usually
/// enough (the commands come before the pack), else up to [`MAX_COMMAND_BYTES`].
fn read_commands(body: &dyn Body) -> (Vec<u8>, Result<Commands, String>) {
    let held = body.len().min(MAX_COMMAND_BYTES);
    let mut bytes = body.read(0, FIRST_READ.min(u32::try_from(held).unwrap_or(u32::MAX)));
    loop {
        let parsed = receive_pack_commands(&bytes);
        let have = bytes.len() as u64;
        if parsed.is_ok() || have >= held {
            return (bytes, parsed);
        }
        let want = u32::try_from(held - have).unwrap_or(u32::MAX);
        let more = body.read(have, want);
        if more.is_empty() {
            return (bytes, parsed);
        }
        bytes.extend_from_slice(&more);
    }
}

/// The service and repository path of a git request in one reading of its path.
fn classify<'p>(method: &str, path: &'p str, query: &str) -> Option<(Service, &'p str)> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let cut = |suffix: &str| {
        let split = path.len().checked_sub(suffix.len())?;
        let (repo, tail) = (path.get(..split)?, path.get(split..)?);
        tail.eq_ignore_ascii_case(suffix).then_some(repo)
    };
    if let Some(repo) = cut("/info/refs") {
        let push =
            query_values(query, "service").any(|s| s.eq_ignore_ascii_case("git-receive-pack"));
        return Some((
            if push {
                Service::PushDiscovery
            } else {
                Service::Fetch
            },
            repo,
        ));
    }
    if let Some(repo) = cut("/git-upload-pack") {
        return Some((Service::Fetch, repo));
    }
    let repo = cut("/git-receive-pack")?;
    Some((
        if method == "POST" {
            Service::Push
        } else {
            Service::PushDiscovery
        },
        repo,
    ))
}

/// The query of a path as sent (after the first `?`, before any `#`).
fn query_of(path_and_query: &str) -> &str {
    let query = path_and_query
        .split_once('?')
        .map_or("", |(_, query)| query);
    query.split_once('#').map_or(query, |(query, _)| query)
}

/// Every value of parameter `name` in `query`, percent-decoded (`+` as space).
fn query_values<'q>(query: &'q str, name: &'q str) -> impl Iterator<Item = String> + 'q {
    query.split('&').filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (b, escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (other, None) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len()
        && text
            .get(text.len() - suffix.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
}

/// A repository path without a trailing `/` and `.git`.
fn repo_path(path: &str) -> &str {
    let path = path.strip_suffix('/').unwrap_or(path);
    if ends_with_ignore_case(path, ".git") {
        path.get(..path.len() - 4).unwrap_or(path)
    } else {
        path
    }
}

/// Whether `text` matches `pattern`: `*` = any run without `/`, `**` = any run.
fn glob(pattern: &str, text: &str) -> bool {
    glob_bytes(pattern.as_bytes(), text.as_bytes())
}

fn glob_bytes(pattern: &[u8], text: &[u8]) -> bool {
    match pattern {
        [] => text.is_empty(),
        [b'*', b'*', rest @ ..] => {
            (0..=text.len()).any(|i| glob_bytes(rest, text.get(i..).unwrap_or_default()))
        }
        [b'*', rest @ ..] => {
            for i in 0..=text.len() {
                if glob_bytes(rest, text.get(i..).unwrap_or_default()) {
                    return true;
                }
                if text.get(i) == Some(&b'/') {
                    return false;
                }
            }
            false
        }
        [first, rest @ ..] => text
            .split_first()
            .is_some_and(|(c, text)| c == first && glob_bytes(rest, text)),
    }
}

/// A non-empty list of patterns, each starting with `start`.
fn patterns(
    at: &str,
    value: Option<&Value>,
    start: &str,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let items = non_empty_list(
        at,
        value,
        "a list of patterns",
        "list at least one pattern, or omit the key",
    )?;
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let at = format!("{at}[{index}]");
            let pattern = expect_str(&at, item)?;
            if !pattern.starts_with(start) || pattern.len() <= start.len() && start != "/" {
                return Err(ConfigError::new(
                    at,
                    format!("`{}` must start with `{start}`", quote(pattern)),
                ));
            }
            if pattern
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "?#[\\".contains(c))
            {
                return Err(ConfigError::new(
                    at,
                    format!(
                        "`{}` contains a space, control character, `?`, `#`, `[` or `\\`",
                        quote(pattern)
                    ),
                ));
            }
            if pattern.split('*').count() > 9 {
                return Err(ConfigError::new(at, "has more than 8 `*`"));
            }
            Ok(pattern.to_owned())
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests;
