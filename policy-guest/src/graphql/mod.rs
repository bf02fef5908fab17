//! `graphql:` — which GraphQL operations a client may run on the route's endpoint:
//! `{path: /graphql, operations: [query], mutations: [addComment]}`.
//!
//! The operation is found as a server finds it: the request is `POST` JSON
//! `{query, operationName, variables, extensions}` (or `application/graphql`, the
//! document as the body), or `GET ?query=…&operationName=…`; the document is parsed
//! by [`syntax`] (the specification's grammar of an executable document, checked
//! against `apollo-parser`); the executed operation is the one `operationName` names,
//! or the only one. Its type must be in `operations` (default: `query` only), and for a
//! mutation with `mutations` listed, every top-level field — through fragment spreads
//! and inline fragments, by field name, not alias — must be one of them.
//!
//! Refused: a batch (a JSON array), a persisted-query id without a document, several
//! operations and no `operationName`, an anonymous operation beside others, an
//! `operationName` naming none of them, a
//! document with a syntax error or a type-system definition, a query both in the URL
//! and in the body, duplicate keys or parameters, other content types (multipart
//! uploads included) and other methods (405).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::{
    ConfigError, expect_object, expect_str, kind, non_empty_list, reject_unknown_keys,
};
use crate::decide::quote;
use crate::endpoint::Endpoint;
use crate::request::{Body, Headers, Request, read_all};
use crate::verdict::Verdict;
use syntax::Top;

pub mod syntax;

/// Largest GraphQL request body read for a decision.
const MAX_REQUEST_BYTES: u64 = 1024 * 1024;

const KEYS: &[&str] = &["path", "operations", "mutations"];
const FORBIDDEN: u16 = 403;
const BAD_REQUEST: u16 = 400;

pub(crate) use syntax::OperationType as Operation;

/// A route's GraphQL rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GraphqlRules {
    endpoint: Endpoint,
    operations: Vec<Operation>,
    /// Allowed top-level mutation fields; `None` = any.
    mutations: Option<Vec<String>>,
}

impl GraphqlRules {
    pub(crate) fn parse(at: &str, value: &Value) -> Result<Self, ConfigError> {
        let rules = expect_object(at, value, "such as `{path: /graphql, operations: [query]}`")?;
        reject_unknown_keys(rules, KEYS, at)?;
        let operations = match rules.get("operations") {
            None => vec![Operation::Query],
            Some(value) => parse_operations(&format!("{at}.operations"), value)?,
        };
        let mutations = match rules.get("mutations") {
            None => None,
            Some(value) => {
                if !operations.contains(&Operation::Mutation) {
                    return Err(ConfigError::new(
                        format!("{at}.mutations"),
                        "lists mutation fields, but `operations` does not allow `mutation`; add it, or remove `mutations`",
                    ));
                }
                Some(parse_fields(&format!("{at}.mutations"), value)?)
            }
        };
        Ok(Self {
            endpoint: Endpoint::parse(&format!("{at}.path"), rules.get("path"), "/graphql")?,
            operations,
            mutations,
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

    /// `None` if the request is not for the endpoint or runs an allowed operation;
    /// else the denial, or the body it needs.
    pub(crate) fn check(
        &self,
        rule: &str,
        request: &Request,
        headers: &dyn Headers,
        body: Option<&dyn Body>,
    ) -> Option<Verdict> {
        match self.endpoint.names(&request.path, rule) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(denial) => return Some(denial),
        }
        let refuse = |status: u16, why: String| {
            Some(Verdict::deny(
                status,
                format!("GraphQL request to `{rule}` refused: {why}"),
                Some(rule),
            ))
        };
        let url = match query_parameters(&request.path) {
            Ok(url) => url,
            Err(why) => return refuse(BAD_REQUEST, why),
        };
        let graphql = match request.method.as_ref() {
            "GET" => match from_url(&url) {
                Ok(graphql) => graphql,
                Err(why) => return refuse(BAD_REQUEST, why),
            },
            "POST" => {
                let Some(body) = body else {
                    return Some(Verdict::NeedBody {
                        max_bytes: MAX_REQUEST_BYTES,
                        prefix: false,
                    });
                };
                match from_post(&url, headers, body) {
                    Ok(graphql) => graphql,
                    Err(why) => return refuse(BAD_REQUEST, why),
                }
            }
            other => {
                return Some(Verdict::Deny {
                    status: 405,
                    reason: format!(
                        "method {} is not how GraphQL is sent to {} on `{rule}` (GET or POST)",
                        quote(other),
                        self.endpoint.written
                    ),
                    rule: Some(rule.to_owned()),
                    headers: vec![("allow".to_owned(), "GET, POST".to_owned())],
                });
            }
        };
        match self.decide(&graphql) {
            Ok(()) => None,
            Err(Refused::Malformed(why)) => refuse(BAD_REQUEST, why),
            Err(Refused::Forbidden(why)) => refuse(FORBIDDEN, why),
        }
    }

    fn decide(&self, request: &GraphqlRequest) -> Result<(), Refused> {
        let document = Document::parse(&request.query).map_err(Refused::Malformed)?;
        let (name, operation, fields) = document
            .executed(request.operation_name.as_deref())
            .map_err(Refused::Malformed)?;
        let shown = name.map_or_else(String::new, |name| format!(" `{}`", quote(name)));
        if !self.operations.contains(&operation) {
            return Err(Refused::Forbidden(format!(
                "{}{shown} is not allowed (allowed operations: {})",
                operation.name(),
                self.operations
                    .iter()
                    .map(|op| op.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if operation == Operation::Mutation
            && let Some(allowed) = &self.mutations
            && let Some(field) = fields
                .iter()
                .find(|field| **field != "__typename" && !allowed.iter().any(|a| a == *field))
        {
            return Err(Refused::Forbidden(format!(
                "mutation field `{}`{} is not allowed (allowed: {})",
                quote(field),
                name.map_or_else(String::new, |name| format!(" in `{}`", quote(name))),
                allowed.join(", ")
            )));
        }
        Ok(())
    }
}

enum Refused {
    Malformed(String),
    Forbidden(String),
}

/// What a GraphQL request asks a server to run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GraphqlRequest {
    query: String,
    operation_name: Option<String>,
}

/// A parsed executable document: its operations and fragments by name.
struct Document<'a> {
    operations: Vec<syntax::OperationDefinition<'a>>,
    fragments: BTreeMap<&'a str, Vec<Top<'a>>>,
}

impl<'a> Document<'a> {
    fn parse(text: &'a str) -> Result<Self, String> {
        let parsed = syntax::parse(text).map_err(|error| {
            if error.type_system {
                "the document defines types or a schema; only operations and fragments can be executed"
                    .to_owned()
            } else {
                format!(
                    "the document does not parse: {} (at byte {})",
                    quote(&error.message),
                    error.at
                )
            }
        })?;
        let mut fragments = BTreeMap::new();
        for fragment in parsed.fragments {
            if fragments
                .insert(fragment.name, fragment.selections)
                .is_some()
            {
                return Err(format!(
                    "the fragment `{}` is defined twice",
                    quote(fragment.name)
                ));
            }
        }
        if parsed.operations.len() > 1 && parsed.operations.iter().any(|op| op.name.is_none()) {
            return Err(
                "an anonymous operation beside others (a server refuses the document)".to_owned(),
            );
        }
        Ok(Self {
            operations: parsed.operations,
            fragments,
        })
    }

    /// The operation a server would execute, and its top-level field names.
    fn executed(
        &self,
        operation_name: Option<&str>,
    ) -> Result<(Option<&'a str>, Operation, Vec<&'a str>), String> {
        let chosen = match operation_name {
            Some(wanted) => {
                let mut matching = self.operations.iter().filter(|op| op.name == Some(wanted));
                let found = matching.next().ok_or_else(|| {
                    format!(
                        "`operationName` `{}` names no operation in the document",
                        quote(wanted)
                    )
                })?;
                if matching.next().is_some() {
                    return Err(format!("two operations are named `{}`", quote(wanted)));
                }
                found
            }
            None => match self.operations.as_slice() {
                [only] => only,
                [] => return Err("the document has no operation".to_owned()),
                _ => {
                    return Err(
                        "the document has several operations and no `operationName` says which to run"
                            .to_owned(),
                    );
                }
            },
        };
        let mut fields = Vec::new();
        let mut visiting = Vec::new();
        self.top_level_fields(&chosen.selections, &mut fields, &mut visiting)?;
        Ok((chosen.name, chosen.kind, fields))
    }

    /// The field names at the top of `set`, through fragment spreads and inline
    /// fragments; `visiting` guards against a fragment cycle.
    fn top_level_fields(
        &self,
        set: &[Top<'a>],
        fields: &mut Vec<&'a str>,
        visiting: &mut Vec<&'a str>,
    ) -> Result<(), String> {
        for selection in set {
            match selection {
                Top::Field(name) => fields.push(name),
                Top::Inline(inner) => self.top_level_fields(inner, fields, visiting)?,
                Top::Spread(name) => {
                    if visiting.contains(name) {
                        return Err(format!("the fragment `{}` spreads itself", quote(name)));
                    }
                    let set = self
                        .fragments
                        .get(name)
                        .ok_or_else(|| format!("the fragment `{}` is not defined", quote(name)))?;
                    visiting.push(name);
                    self.top_level_fields(set, fields, visiting)?;
                    visiting.pop();
                }
            }
        }
        Ok(())
    }
}

/// The request's query string as (name, value) pairs, form-decoded; a parameter that
/// appears twice is refused (servers disagree on which one counts).
fn query_parameters(path_and_query: &str) -> Result<BTreeMap<String, String>, String> {
    let mut parameters = BTreeMap::new();
    let Some((_, query)) = path_and_query.split_once('?') else {
        return Ok(parameters);
    };
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = form_decode(name)?;
        let value = form_decode(value)?;
        if parameters.insert(name.clone(), value).is_some() {
            return Err(format!(
                "the URL parameter `{}` appears twice",
                quote(&name)
            ));
        }
    }
    Ok(parameters)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn form_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or("a broken `%` escape in the URL")?;
                out.push(hex);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "the URL does not decode to UTF-8".to_owned())
}

fn from_url(url: &BTreeMap<String, String>) -> Result<GraphqlRequest, String> {
    let Some(query) = url.get("query") else {
        return Err(if url.contains_key("extensions") {
            "a persisted query (an id without the document) cannot be inspected".to_owned()
        } else {
            "no `query` parameter".to_owned()
        });
    };
    Ok(GraphqlRequest {
        query: query.clone(),
        operation_name: url
            .get("operationName")
            .filter(|name| !name.is_empty())
            .cloned(),
    })
}

fn from_post(
    url: &BTreeMap<String, String>,
    headers: &dyn Headers,
    body: &dyn Body,
) -> Result<GraphqlRequest, String> {
    if url.contains_key("query") {
        return Err(
            "a `query` in the URL of a POST (the server may run it instead of the body's)"
                .to_owned(),
        );
    }
    let Some(bytes) = read_all(body, MAX_REQUEST_BYTES).filter(|_| body.complete()) else {
        return Err(format!(
            "the body is over the {MAX_REQUEST_BYTES} bytes the policy reads"
        ));
    };
    let content_type = match headers.get("content-type").as_slice() {
        [one] => one
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
        [] => return Err("no content-type".to_owned()),
        _ => return Err("more than one content-type".to_owned()),
    };
    match content_type.as_str() {
        "application/json" | "application/graphql-response+json" => {}
        "application/graphql" => {
            let query =
                String::from_utf8(bytes).map_err(|_| "the document is not UTF-8".to_owned())?;
            return Ok(GraphqlRequest {
                query,
                operation_name: url.get("operationName").filter(|n| !n.is_empty()).cloned(),
            });
        }
        other => {
            return Err(format!(
                "content-type `{}` is not inspected (send application/json)",
                quote(other)
            ));
        }
    }
    let value =
        crate::json::parse(&bytes).map_err(|error| format!("the body is not JSON: {error}"))?;
    let object = match value {
        Value::Object(object) => object,
        Value::Array(_) => {
            return Err("batched operations (a JSON array) are not inspected".to_owned());
        }
        other => {
            return Err(format!(
                "the body is {}, not a GraphQL request object",
                kind(&other)
            ));
        }
    };
    let query = match object.get("query") {
        Some(Value::String(query)) => query.clone(),
        None | Some(Value::Null) => {
            return Err(if object.contains_key("extensions") {
                "a persisted query (an id without the document) cannot be inspected".to_owned()
            } else {
                "no `query` in the body".to_owned()
            });
        }
        Some(other) => return Err(format!("`query` is {}, not a string", kind(other))),
    };
    let operation_name = match object.get("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if name.is_empty() => None,
        Some(Value::String(name)) => Some(name.clone()),
        Some(other) => return Err(format!("`operationName` is {}, not a string", kind(other))),
    };
    Ok(GraphqlRequest {
        query,
        operation_name,
    })
}

fn parse_operations(at: &str, value: &Value) -> Result<Vec<Operation>, ConfigError> {
    let items = non_empty_list(
        at,
        value,
        "a list such as [query]",
        "list at least one of query, mutation, subscription",
    )?;
    let mut operations = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let at = format!("{at}[{index}]");
        let operation = match expect_str(&at, item)? {
            "query" => Operation::Query,
            "mutation" => Operation::Mutation,
            "subscription" => Operation::Subscription,
            other => {
                return Err(ConfigError::new(
                    &at,
                    format!(
                        "`{other}` is not an operation type; use query, mutation or subscription"
                    ),
                ));
            }
        };
        if !operations.contains(&operation) {
            operations.push(operation);
        }
    }
    Ok(operations)
}

fn parse_fields(at: &str, value: &Value) -> Result<Vec<String>, ConfigError> {
    let items = non_empty_list(
        at,
        value,
        "a list of field names",
        "list at least one mutation field, or omit `mutations` to allow any",
    )?;
    let mut fields: Vec<String> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let at = format!("{at}[{index}]");
        let field = expect_str(&at, item)?;
        let mut chars = field.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ConfigError::new(
                &at,
                format!("`{field}` is not a GraphQL field name"),
            ));
        }
        if !fields.iter().any(|known| known == field) {
            fields.push(field.to_owned());
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{MemoryBody, NoHeaders, Scheme};

    fn rules(json: &str) -> GraphqlRules {
        GraphqlRules::parse("routes[0].graphql", &serde_json::from_str(json).unwrap()).unwrap()
    }

    fn request(method: &'static str, path: &str) -> Request {
        Request {
            scheme: Scheme::Https,
            method: method.into(),
            host: "api.github.com".to_owned(),
            port: 443,
            path: path.to_owned(),
            client: "127.0.0.1:1".parse().unwrap(),
        }
    }

    fn json_headers(name: &str) -> Vec<String> {
        if name == "content-type" {
            vec!["application/json".to_owned()]
        } else {
            Vec::new()
        }
    }

    fn post(rules: &GraphqlRules, body: &str) -> Option<(u16, String)> {
        let verdict = rules.check(
            "api.github.com",
            &request("POST", "/graphql"),
            &json_headers,
            Some(&MemoryBody::complete(body)),
        );
        match verdict {
            None => None,
            Some(Verdict::Deny { status, reason, .. }) => Some((status, reason)),
            Some(other) => panic!("unexpected {other:?}"),
        }
    }

    fn body(query: &str, operation: Option<&str>) -> String {
        serde_json::json!({"query": query, "operationName": operation, "variables": {}}).to_string()
    }

    const GITHUB: &str = r#"{"operations": ["query", "mutation"], "mutations": ["addComment"]}"#;

    #[test]
    fn queries_and_listed_mutations_pass() {
        let rules = rules(GITHUB);
        assert_eq!(post(&rules, &body("{ viewer { login } }", None)), None);
        assert_eq!(
            post(&rules, &body("query Q { viewer { login } }", Some("Q"))),
            None
        );
        let aliased = "mutation M { c: addComment(input: {}) { clientMutationId } __typename }";
        assert_eq!(post(&rules, &body(aliased, None)), None);
        // The executed operation is the one operationName names.
        let two = "query A { viewer { login } } mutation B { mergePullRequest(input: {}) { x } }";
        assert_eq!(post(&rules, &body(two, Some("A"))), None);
    }

    #[test]
    fn unlisted_mutations_are_refused_through_fragments_and_aliases() {
        let rules = rules(GITHUB);
        let two = "query A { viewer { login } } mutation B { mergePullRequest(input: {}) { x } }";
        let (status, reason) = post(&rules, &body(two, Some("B"))).unwrap();
        assert_eq!(status, 403);
        assert!(
            reason.contains(
                "mutation field `mergePullRequest` in `B` is not allowed (allowed: addComment)"
            ),
            "{reason}"
        );
        for document in [
            "mutation { addComment: deleteRepository(input: {}) { x } }",
            "mutation { addComment(input: {}) { x } ...F } fragment F on Mutation { deleteRepository(input: {}) { x } }",
            "mutation { ... on Mutation { deleteRepository(input: {}) { x } } }",
            // "mutation" inside a string is not an operation; the real one is.
            r#"mutation { deleteRepository(input: {note: "query { a }"}) { x } }"#,
        ] {
            assert_eq!(
                post(&rules, &body(document, None)).map(|(s, _)| s),
                Some(403),
                "{document}"
            );
        }
        let queries_only = self::rules("{}");
        let (status, reason) = post(
            &queries_only,
            &body("mutation M { addComment { x } }", None),
        )
        .unwrap();
        assert_eq!(status, 403);
        assert!(
            reason.contains("mutation `M` is not allowed (allowed operations: query)"),
            "{reason}"
        );
        let subscription = "subscription { issueUpdated { id } }";
        assert_eq!(
            post(&queries_only, &body(subscription, None)).map(|(s, _)| s),
            Some(403)
        );
    }

    #[test]
    fn shapes_that_cannot_be_decided_are_refused() {
        let rules = rules(GITHUB);
        for (text, needle) in [
            (format!("[{}]", body("{ a }", None)), "batched"),
            (
                r#"{"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "ab"}}}"#
                    .to_owned(),
                "persisted query",
            ),
            (
                body("query A { a } query B { b }", None),
                "several operations",
            ),
            (body("query A { a }", Some("Z")), "names no operation"),
            (
                body("query A { a }  query A { b }", Some("A")),
                "two operations",
            ),
            (body("{ a ", None), "does not parse"),
            (
                body("{ a } query B { b }", Some("B")),
                "an anonymous operation beside others",
            ),
            (body("type Query { a: Int }", None), "defines types"),
            (body("", None), "does not parse"),
            (
                body("{ ...F } fragment F on Query { ...F }", None),
                "spreads itself",
            ),
            (body("{ ...G }", None), "not defined"),
            (
                r#"{"query": "{ a }", "query": "mutation { b }"}"#.to_owned(),
                "appears twice",
            ),
            (r#"{"query": 5}"#.to_owned(), "not a string"),
            ("not json".to_owned(), "not JSON"),
        ] {
            let (status, reason) = post(&rules, &text).unwrap_or_else(|| panic!("{text} passed"));
            assert_eq!(status, 400, "{text}");
            assert!(reason.contains(needle), "{text}: {reason}");
        }
    }

    #[test]
    fn get_queries_are_decided_from_the_url() {
        let rules = rules(GITHUB);
        let get = |path: &str| rules.check("r", &request("GET", path), &NoHeaders, None);
        assert_eq!(get("/graphql?query=%7B+viewer+%7B+login+%7D+%7D"), None);
        assert!(matches!(
            get("/graphql?query=mutation+%7B+deleteRepository+%7B+x+%7D+%7D"),
            Some(Verdict::Deny { status: 403, .. })
        ));
        assert!(matches!(
            get("/graphql?query=%7Ba%7D&query=mutation+%7Bb%7D"),
            Some(Verdict::Deny { status: 400, .. })
        ));
        assert!(matches!(
            get("/graphql?extensions=%7B%7D"),
            Some(Verdict::Deny { status: 400, .. })
        ));
        assert!(matches!(
            get("/graphql?query=%zz"),
            Some(Verdict::Deny { status: 400, .. })
        ));
        assert_eq!(get("/other?query=mutation"), None);
        assert!(matches!(
            rules.check("r", &request("PUT", "/graphql"), &NoHeaders, None),
            Some(Verdict::Deny { status: 405, .. })
        ));
        assert_eq!(
            rules.check("r", &request("POST", "/GraphQL/"), &NoHeaders, None),
            Some(Verdict::NeedBody {
                max_bytes: MAX_REQUEST_BYTES,
                prefix: false
            })
        );
    }

    #[test]
    fn content_types_and_url_queries_on_post() {
        let rules = rules(GITHUB);
        let with = |content_type: &'static str, path: &str, body: &str| {
            let headers = move |name: &str| {
                if name == "content-type" {
                    vec![content_type.to_owned()]
                } else {
                    Vec::new()
                }
            };
            rules.check(
                "r",
                &request("POST", path),
                &headers,
                Some(&MemoryBody::complete(body)),
            )
        };
        assert_eq!(
            with("application/graphql", "/graphql", "{ viewer { login } }"),
            None
        );
        assert!(matches!(
            with("application/graphql", "/graphql", "mutation { x }"),
            Some(Verdict::Deny { status: 403, .. })
        ));
        assert!(matches!(
            with("multipart/form-data; boundary=x", "/graphql", "--x"),
            Some(Verdict::Deny { status: 400, .. })
        ));
        assert!(matches!(
            with(
                "application/json",
                "/graphql?query=%7Ba%7D",
                &body("{ a }", None)
            ),
            Some(Verdict::Deny { status: 400, .. })
        ));
    }

    #[test]
    fn bad_rules_name_the_field() {
        for (json, needle) in [
            (
                r#"{"operations": []}"#,
                "routes[0].graphql.operations: is empty",
            ),
            (
                r#"{"operations": ["read"]}"#,
                "routes[0].graphql.operations[0]: `read` is not an operation type",
            ),
            (
                r#"{"mutations": ["addComment"]}"#,
                "does not allow `mutation`",
            ),
            (
                r#"{"operations": ["mutation"], "mutations": ["add-comment"]}"#,
                "not a GraphQL field name",
            ),
            (
                r#"{"operations": ["mutation"], "mutations": []}"#,
                "is empty",
            ),
            (r#"{"path": "graphql"}"#, "routes[0].graphql.path"),
            (r#"{"queries": true}"#, "unknown key `queries`"),
        ] {
            let error =
                GraphqlRules::parse("routes[0].graphql", &serde_json::from_str(json).unwrap())
                    .unwrap_err()
                    .to_string();
            assert!(error.contains(needle), "{json}: {error}");
        }
    }
}
