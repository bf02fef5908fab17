//! `mcp:` — JSON-RPC 2.0 over HTTP, as MCP's streamable HTTP transport uses it: which
//! methods a client may call on the endpoint and, for `tools/call`, which tools.
//!
//! On the endpoint, `POST` bodies are read whole (at most [`MAX_MESSAGE_BYTES`]) and
//! decided message by message; a batch passes only if every message does. Requests
//! and notifications are checked against `methods`; `tools/call` names its tool in
//! `params.name`, checked against `tools`. A response the client sends to a request of
//! the server's (no `method`; `result` or `error`) passes. `GET` (the server's event
//! stream) and `DELETE` (ending the session) carry no call and pass; other methods get
//! 405. Anything that is not well-formed JSON-RPC 2.0 — not JSON, a duplicate key, an
//! empty batch, a `jsonrpc` other than `"2.0"`, a method that is not a string, a
//! `tools/call` without a tool name — is refused.
//!
//! The host answers a refused call as a JSON-RPC error carrying the reason (see the
//! host's `dialect` module), so an MCP client shows the agent why.

use serde_json::{Map, Value};

use crate::config::{
    ConfigError, expect_object, expect_str, kind, non_empty_list, reject_unknown_keys,
};
use crate::endpoint::Endpoint;
use crate::request::{Body, Request, read_all};
use crate::verdict::Verdict;

/// Largest JSON-RPC body read for a decision (the host clamps it to its own limit).
const MAX_MESSAGE_BYTES: u64 = 1024 * 1024;

const KEYS: &[&str] = &["path", "methods", "tools"];
const FORBIDDEN: u16 = 403;
const BAD_REQUEST: u16 = 400;
const METHOD_NOT_ALLOWED: u16 = 405;

/// A route's MCP rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct McpRules {
    endpoint: Endpoint,
    /// Allowed JSON-RPC methods; `None` = any.
    methods: Option<Vec<String>>,
    /// Allowed tools for `tools/call`; `None` = any.
    tools: Option<Vec<String>>,
}

impl McpRules {
    pub(crate) fn parse(at: &str, value: &Value) -> Result<Self, ConfigError> {
        let rules = expect_object(at, value, "such as `{path: /mcp, tools: [search]}`")?;
        reject_unknown_keys(rules, KEYS, at)?;
        let methods = names(&format!("{at}.methods"), rules.get("methods"), "method")?;
        let tools = names(&format!("{at}.tools"), rules.get("tools"), "tool")?;
        if let (Some(methods), Some(_)) = (&methods, &tools)
            && !methods.iter().any(|method| method == "tools/call")
        {
            return Err(ConfigError::new(
                format!("{at}.tools"),
                "lists tools, but `methods` does not allow `tools/call`; add it, or remove `tools`",
            ));
        }
        Ok(Self {
            endpoint: Endpoint::parse(&format!("{at}.path"), rules.get("path"), "/mcp")?,
            methods,
            tools,
        })
    }

    /// The endpoint as written, for coverage.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint.written
    }

    /// Whether the request names the endpoint, for coverage.
    pub(crate) fn names(&self, request: &Request) -> bool {
        self.endpoint.names(&request.path, "").unwrap_or(false)
    }

    /// `None` if the request is not an MCP call on the endpoint or every message in it
    /// is allowed; else the denial, or the body it needs.
    pub(crate) fn check(
        &self,
        rule: &str,
        request: &Request,
        body: Option<&dyn Body>,
    ) -> Option<Verdict> {
        match self.endpoint.names(&request.path, rule) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(denial) => return Some(denial),
        }
        match request.method.as_ref() {
            "POST" => {}
            "GET" | "DELETE" => return None,
            other => {
                return Some(Verdict::Deny {
                    status: METHOD_NOT_ALLOWED,
                    reason: format!(
                        "method {other} is not part of MCP's HTTP transport at {} on `{rule}`",
                        self.endpoint.written
                    ),
                    rule: Some(rule.to_owned()),
                    headers: vec![("allow".to_owned(), "GET, POST, DELETE".to_owned())],
                });
            }
        }
        let Some(body) = body else {
            return Some(Verdict::NeedBody {
                max_bytes: MAX_MESSAGE_BYTES,
                prefix: false,
            });
        };
        let refuse = |status: u16, reason: String| Some(Verdict::deny(status, reason, Some(rule)));
        let Some(bytes) = read_all(body, MAX_MESSAGE_BYTES).filter(|_| body.complete()) else {
            return refuse(
                413,
                format!("the JSON-RPC body is over the {MAX_MESSAGE_BYTES} bytes `{rule}` reads"),
            );
        };
        let value = match crate::json::parse(&bytes) {
            Ok(value) => value,
            Err(error) => return refuse(BAD_REQUEST, format!("the body is not JSON-RPC: {error}")),
        };
        let messages = match &value {
            Value::Array(batch) if batch.is_empty() => {
                return refuse(BAD_REQUEST, "an empty JSON-RPC batch".to_owned());
            }
            Value::Array(batch) => batch.iter().collect(),
            other => vec![other],
        };
        for (index, message) in messages.into_iter().enumerate() {
            let place = if value.is_array() {
                format!("message {index} of the batch")
            } else {
                "the message".to_owned()
            };
            match self.check_message(message) {
                Ok(()) => {}
                Err(Refused::Malformed(why)) => {
                    return refuse(BAD_REQUEST, format!("{place} is not JSON-RPC 2.0: {why}"));
                }
                Err(Refused::Forbidden(why)) => {
                    return refuse(FORBIDDEN, format!("{why} on `{rule}`"));
                }
            }
        }
        None
    }

    fn check_message(&self, message: &Value) -> Result<(), Refused> {
        let Value::Object(message) = message else {
            return Err(Refused::Malformed(format!(
                "expected an object, found {}",
                kind(message)
            )));
        };
        if message.get("jsonrpc") != Some(&Value::from("2.0")) {
            return Err(Refused::Malformed("`jsonrpc` must be \"2.0\"".to_owned()));
        }
        let Some(method) = message.get("method") else {
            return if message.contains_key("id")
                && (message.contains_key("result") || message.contains_key("error"))
            {
                Ok(())
            } else {
                Err(Refused::Malformed(
                    "neither a call (`method`) nor a response (`id` with `result` or `error`)"
                        .to_owned(),
                ))
            };
        };
        let Value::String(method) = method else {
            return Err(Refused::Malformed(format!(
                "`method` is {}, not a string",
                kind(method)
            )));
        };
        if let Some(methods) = &self.methods
            && !methods.contains(method)
        {
            return Err(Refused::Forbidden(format!(
                "MCP method `{}` is not allowed (allowed: {})",
                crate::decide::quote(method),
                methods.join(", ")
            )));
        }
        if method == "tools/call" {
            let tool = tool_name(message).map_err(Refused::Malformed)?;
            if let Some(tools) = &self.tools
                && !tools.iter().any(|allowed| allowed == tool)
            {
                return Err(Refused::Forbidden(format!(
                    "MCP tool `{}` is not allowed (allowed: {})",
                    crate::decide::quote(tool),
                    tools.join(", ")
                )));
            }
        }
        Ok(())
    }
}

enum Refused {
    Malformed(String),
    Forbidden(String),
}

fn tool_name(message: &Map<String, Value>) -> Result<&str, String> {
    match message.get("params") {
        Some(Value::Object(params)) => match params.get("name") {
            Some(Value::String(name)) => Ok(name),
            Some(other) => Err(format!(
                "`params.name` of tools/call is {}, not a string",
                kind(other)
            )),
            None => Err("tools/call without `params.name`".to_owned()),
        },
        _ => Err("tools/call without `params`".to_owned()),
    }
}

/// A non-empty list of distinct non-empty names.
fn names(at: &str, value: Option<&Value>, what: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let items = non_empty_list(
        at,
        value,
        &format!("a list of {what} names"),
        &format!("list at least one {what}, or omit the key to allow any"),
    )?;
    let mut names: Vec<String> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let name = expect_str(&format!("{at}[{index}]"), item)?;
        if name.is_empty() {
            return Err(ConfigError::new(
                format!("{at}[{index}]"),
                format!("an empty {what} name"),
            ));
        }
        if !names.iter().any(|known| known == name) {
            names.push(name.to_owned());
        }
    }
    Ok(Some(names))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{MemoryBody, Scheme};

    fn rules(json: &str) -> McpRules {
        McpRules::parse("routes[0].mcp", &serde_json::from_str(json).unwrap()).unwrap()
    }

    fn post(path: &str) -> Request {
        Request {
            scheme: Scheme::Https,
            method: "POST".into(),
            host: "mcp.example".to_owned(),
            port: 443,
            path: path.to_owned(),
            client: "127.0.0.1:1".parse().unwrap(),
        }
    }

    fn decide(rules: &McpRules, body: &str) -> Option<Verdict> {
        rules.check(
            "mcp.example",
            &post("/mcp"),
            Some(&MemoryBody::complete(body)),
        )
    }

    fn call(tool: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#
        )
    }

    fn denial(verdict: Option<Verdict>) -> Option<(u16, String)> {
        match verdict {
            Some(Verdict::Deny { status, reason, .. }) => Some((status, reason)),
            None => None,
            Some(other) => panic!("unexpected {other:?}"),
        }
    }

    const READ_ONLY: &str = r#"{"methods": ["initialize", "notifications/initialized", "tools/list", "tools/call"], "tools": ["search", "read_file"]}"#;

    #[test]
    fn allowed_methods_and_tools_pass() {
        let rules = rules(READ_ONLY);
        assert_eq!(decide(&rules, &call("search")), None);
        assert_eq!(
            decide(&rules, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
            None
        );
        assert_eq!(
            decide(
                &rules,
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#
            ),
            None
        );
        assert_eq!(
            decide(&rules, r#"{"jsonrpc":"2.0","id":"s1","result":{}}"#),
            None
        );
        let batch = format!("[{}, {}]", call("search"), call("read_file"));
        assert_eq!(decide(&rules, &batch), None);
    }

    #[test]
    fn forbidden_tools_and_methods_are_refused_with_the_reason() {
        let rules = rules(READ_ONLY);
        let (status, reason) = denial(decide(&rules, &call("delete_repo"))).unwrap();
        assert_eq!(status, 403);
        assert!(
            reason.contains("MCP tool `delete_repo` is not allowed (allowed: search, read_file)"),
            "{reason}"
        );
        let (status, reason) = denial(decide(
            &rules,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read"}"#,
        ))
        .unwrap();
        assert_eq!(status, 403);
        assert!(
            reason.contains("`resources/read` is not allowed"),
            "{reason}"
        );
        // One forbidden message refuses the whole batch.
        let batch = format!("[{}, {}]", call("search"), call("delete_repo"));
        assert_eq!(denial(decide(&rules, &batch)).unwrap().0, 403);
    }

    #[test]
    fn malformed_messages_are_refused() {
        let rules = rules(r#"{"tools": ["search"]}"#);
        for body in [
            "not json",
            "[]",
            "3",
            r#"{"id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name":"delete"}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}, 4]"#,
        ] {
            assert_eq!(
                denial(decide(&rules, body)).map(|(s, _)| s),
                Some(400),
                "{body}"
            );
        }
    }

    #[test]
    fn the_body_is_needed_whole_and_other_paths_and_methods_are_not_mcp() {
        let rules = rules(READ_ONLY);
        assert_eq!(
            rules.check("r", &post("/mcp/"), None),
            Some(Verdict::NeedBody {
                max_bytes: MAX_MESSAGE_BYTES,
                prefix: false
            })
        );
        assert_eq!(rules.check("r", &post("/other"), None), None);
        let mut get = post("/mcp");
        get.method = "GET".into();
        assert_eq!(rules.check("r", &get, None), None);
        get.method = "PUT".into();
        assert!(matches!(
            rules.check("r", &get, None),
            Some(Verdict::Deny { status: 405, .. })
        ));
        let partial = MemoryBody {
            bytes: b"{".to_vec(),
            complete: false,
        };
        assert_eq!(
            denial(rules.check("r", &post("/mcp"), Some(&partial)))
                .unwrap()
                .0,
            413
        );
    }

    #[test]
    fn bad_rules_name_the_field() {
        for (json, needle) in [
            (r#"{"tools": []}"#, "routes[0].mcp.tools: is empty"),
            (
                r#"{"tools": "search"}"#,
                "routes[0].mcp.tools: expected a list",
            ),
            (
                r#"{"methods": ["tools/list"], "tools": ["search"]}"#,
                "does not allow `tools/call`",
            ),
            (
                r#"{"methods": [""]}"#,
                "routes[0].mcp.methods[0]: an empty method name",
            ),
            (r#"{"path": "mcp"}"#, "routes[0].mcp.path"),
            (r#"{"tool": ["x"]}"#, "unknown key `tool`"),
            (r#"true"#, "routes[0].mcp: expected an object"),
        ] {
            let error = McpRules::parse("routes[0].mcp", &serde_json::from_str(json).unwrap())
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{json}: {error}");
        }
    }
}
