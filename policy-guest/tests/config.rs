//! Reading the routes document: what is accepted, what is rejected and with what
//! message.

mod common;

use common::{one_route, one_route_rejected, rejected, routes};
use policy_guest::Summary;

#[test]
fn host_only_route_is_accepted() {
    let routes = one_route(r#"{"host": "api.github.com"}"#);
    assert_eq!(
        routes.summary(),
        Summary {
            rules: 1,
            secrets: vec![],
            rule_ids: vec!["api.github.com".to_owned()],
        }
    );
}

#[test]
fn full_route_is_accepted() {
    let routes = one_route(
        r#"{"host": "api.github.com", "path_allowlist": ["/repos/acme/"],
            "auth": {"scheme": "Bearer", "token_ref": "GH_PAT"},
            "ports": [443, 8443], "inject_over_http": false}"#,
    );
    assert_eq!(
        routes.summary(),
        Summary {
            rules: 1,
            secrets: vec!["GH_PAT".to_owned()],
            rule_ids: vec!["api.github.com".to_owned()],
        }
    );
}

#[test]
fn empty_routes_list_is_valid() {
    assert_eq!(routes(r#"{"routes": []}"#).summary().rules, 0);
}

#[test]
fn nested_auth_with_scheme_only_is_rejected() {
    let message = one_route_rejected(r#"{"host": "a.example", "auth": {"scheme": "Bearer"}}"#);
    assert_eq!(
        message,
        "routes[0].auth: missing `token_ref` (the secret's name)"
    );
}

#[test]
fn nested_auth_with_token_ref_only_is_rejected() {
    let message = one_route_rejected(r#"{"host": "a.example", "auth": {"token_ref": "T"}}"#);
    assert_eq!(
        message,
        "routes[0].auth: missing `scheme` (`Bearer` or `token`)"
    );
}

#[test]
fn flat_auth_with_scheme_only_is_rejected() {
    let message = one_route_rejected(r#"{"host": "a.example", "auth_scheme": "token"}"#);
    assert!(
        message.starts_with("routes[0]: `auth_scheme` without `token_env`"),
        "{message}"
    );
}

#[test]
fn flat_auth_with_token_env_only_is_rejected() {
    let message = one_route_rejected(r#"{"host": "a.example", "token_env": "T"}"#);
    assert!(
        message.starts_with("routes[0]: `token_env` without `auth_scheme`"),
        "{message}"
    );
}

#[test]
fn empty_auth_is_rejected() {
    let message = one_route_rejected(r#"{"host": "a.example", "auth": {}}"#);
    assert!(message.starts_with("routes[0].auth: is empty"), "{message}");
}

#[test]
fn null_auth_is_rejected() {
    let message = one_route_rejected(r#"{"host": "a.example", "auth": null}"#);
    assert!(
        message.starts_with("routes[0].auth: expected an object"),
        "{message}"
    );
}

#[test]
fn nested_and_flat_auth_together_are_rejected() {
    let message = one_route_rejected(
        r#"{"host": "a.example", "auth": {"scheme": "Bearer", "token_ref": "T"},
            "auth_scheme": "Bearer", "token_env": "T"}"#,
    );
    assert!(
        message.contains("both `auth` and `auth_scheme`/`token_env`"),
        "{message}"
    );
}

#[test]
fn unknown_route_key_is_rejected() {
    let message = one_route_rejected(r#"{"host": "a.example", "path_allow": ["/x"]}"#);
    assert!(
        message.starts_with("routes[0]: unknown key `path_allow`"),
        "{message}"
    );
}

#[test]
fn unknown_auth_key_is_rejected() {
    let message = one_route_rejected(
        r#"{"host": "a.example", "auth": {"scheme": "Bearer", "token_ref": "T", "token": "x"}}"#,
    );
    assert!(
        message.starts_with("routes[0].auth: unknown key `token`"),
        "{message}"
    );
}

#[test]
fn unknown_top_level_key_is_rejected() {
    let message = rejected(r#"{"routes": [], "default": "allow"}"#);
    assert!(
        message.starts_with("routes document: unknown key `default`"),
        "{message}"
    );
}

#[test]
fn missing_host_is_rejected() {
    let message = one_route_rejected(r#"{"path_allowlist": ["/x"]}"#);
    assert_eq!(
        message,
        "routes[0].host: missing; every route needs a `host`"
    );
}

#[test]
fn empty_host_is_rejected() {
    let message = one_route_rejected(r#"{"host": ""}"#);
    assert_eq!(message, "routes[0].host: must not be empty");
}

#[test]
fn non_string_host_is_rejected() {
    let message = one_route_rejected(r#"{"host": 42}"#);
    assert_eq!(message, "routes[0].host: expected a string, found a number");
}

#[test]
fn invalid_host_patterns_are_rejected() {
    for host in [
        "a*.example.com",
        "*",
        "a.*.example",
        "exa mple.com",
        "a..b",
        "*.",
        "1.2.3",
    ] {
        let message = one_route_rejected(&format!(r#"{{"host": "{host}"}}"#));
        assert!(message.starts_with("routes[0].host: "), "{message}");
    }
}

#[test]
fn ip_literal_hosts_are_accepted() {
    for host in ["10.1.2.3", "::1", "[2001:db8::1]"] {
        one_route(&format!(r#"{{"host": "{host}"}}"#));
    }
}

#[test]
fn missing_routes_is_rejected() {
    let message = rejected("{}");
    assert!(
        message.starts_with("routes document: missing `routes`"),
        "{message}"
    );
}

#[test]
fn routes_not_a_list_is_rejected() {
    let message = rejected(r#"{"routes": {"host": "a.example"}}"#);
    assert_eq!(
        message,
        "routes: expected a list of routes, found an object"
    );
}

#[test]
fn top_level_not_an_object_is_rejected() {
    assert!(rejected("[]").starts_with("routes document: expected an object"));
    assert!(rejected("not json").starts_with("routes document: not valid JSON"));
}

#[test]
fn route_not_an_object_is_rejected() {
    let message = rejected(r#"{"routes": [{"host": "a.example"}, "b.example"]}"#);
    assert!(
        message.starts_with("routes[1]: expected a route"),
        "{message}"
    );
}

#[test]
fn duplicate_host_is_rejected() {
    let message = rejected(
        r#"{"routes": [{"host": "a.example"}, {"host": "b.example"}, {"host": "A.Example."}]}"#,
    );
    assert_eq!(
        message,
        "routes[2].host: `a.example` is the same host as routes[0]; merge the two routes into one"
    );
}

#[test]
fn duplicate_wildcard_is_rejected() {
    let message = rejected(r#"{"routes": [{"host": "*.a.example"}, {"host": "*.A.example"}]}"#);
    assert!(
        message.starts_with("routes[1].host: `*.a.example` is the same host"),
        "{message}"
    );
}

#[test]
fn wildcard_and_its_apex_are_distinct() {
    routes(r#"{"routes": [{"host": "*.a.example"}, {"host": "a.example"}]}"#);
}

#[test]
fn secret_names_are_validated() {
    for good in ["GH_PAT", "_x", "a1", "X"] {
        one_route(&format!(
            r#"{{"host": "a.example", "auth": {{"scheme": "Bearer", "token_ref": "{good}"}}}}"#
        ));
    }
    for bad in ["", "1X", "GH-PAT", "GH PAT", "GH.PAT", "GH_PAT\n", "ÄX"] {
        let route =
            serde_json::json!({"host": "a.example", "token_env": bad, "auth_scheme": "token"});
        let message = one_route_rejected(&route.to_string());
        assert!(
            message.starts_with("routes[0].token_env: "),
            "{bad:?}: {message}"
        );
    }
    let message =
        one_route_rejected(r#"{"host": "a.example", "auth": {"scheme": "token", "token_ref": 7}}"#);
    assert_eq!(
        message,
        "routes[0].auth.token_ref: expected a string, found a number"
    );
}

#[test]
fn auth_scheme_must_be_exact() {
    for bad in ["bearer", "Token", "Basic", ""] {
        let route =
            serde_json::json!({"host": "a.example", "auth": {"scheme": bad, "token_ref": "T"}});
        let message = one_route_rejected(&route.to_string());
        assert!(message.starts_with("routes[0].auth.scheme: "), "{message}");
    }
}

#[test]
fn summary_secrets_are_sorted_and_deduplicated() {
    let routes = routes(
        r#"{"routes": [
            {"host": "c.example", "auth": {"scheme": "Bearer", "token_ref": "ZED"}},
            {"host": "a.example", "auth_scheme": "token", "token_env": "ALPHA"},
            {"host": "b.example", "auth": {"scheme": "token", "token_ref": "ZED"}},
            {"host": "d.example"}
        ]}"#,
    );
    assert_eq!(
        routes.summary(),
        Summary {
            rules: 4,
            secrets: vec!["ALPHA".to_owned(), "ZED".to_owned()],
            rule_ids: routes.summary().rule_ids,
        }
    );
}

#[test]
fn bad_ports_are_rejected() {
    for (ports, at) in [
        ("[0]", "routes[0].ports[0]"),
        ("[443, 65536]", "routes[0].ports[1]"),
        ("[-1]", "routes[0].ports[0]"),
        ("[443.5]", "routes[0].ports[0]"),
        (r#"["443"]"#, "routes[0].ports[0]"),
        ("[]", "routes[0].ports"),
        ("443", "routes[0].ports"),
    ] {
        let message = one_route_rejected(&format!(r#"{{"host": "a.example", "ports": {ports}}}"#));
        assert!(
            message.starts_with(&format!("{at}: ")),
            "{ports}: {message}"
        );
    }
}

#[test]
fn bad_path_allowlist_entries_are_rejected() {
    for (list, at) in [
        (r#"["repos/"]"#, "routes[0].path_allowlist[0]"),
        (r#"["/ok/", ""]"#, "routes[0].path_allowlist[1]"),
        (r#"["/a%zz/"]"#, "routes[0].path_allowlist[0]"),
        (r#"["/a/?x=1"]"#, "routes[0].path_allowlist[0]"),
        (r#"["/a/..%2F"]"#, "routes[0].path_allowlist[0]"),
        (r#"[7]"#, "routes[0].path_allowlist[0]"),
        (r#""/a/""#, "routes[0].path_allowlist"),
    ] {
        let message = one_route_rejected(&format!(
            r#"{{"host": "a.example", "path_allowlist": {list}}}"#
        ));
        assert!(message.starts_with(&format!("{at}: ")), "{list}: {message}");
    }
}

#[test]
fn wrong_types_are_rejected() {
    let message = one_route_rejected(r#"{"host": "a.example", "inject_over_http": "yes"}"#);
    assert_eq!(
        message,
        "routes[0].inject_over_http: expected `true` or `false`, found a string"
    );
    let message = one_route_rejected(r#"{"host": "a.example", "path_allowlist": null}"#);
    assert!(
        message.starts_with("routes[0].path_allowlist: expected a list"),
        "{message}"
    );
}

#[test]
fn bad_methods_are_rejected() {
    for (methods, message) in [
        ("[]", "routes[0].methods: is empty"),
        ("\"GET\"", "routes[0].methods: expected a list of methods"),
        (
            "[\"get\"]",
            "routes[0].methods[0]: `get`: methods are case-sensitive; write `GET`",
        ),
        ("[\"GET\", 1]", "routes[0].methods[1]: expected a string"),
        (
            "[\"GE T\"]",
            "routes[0].methods[0]: `GE T` is not an HTTP method",
        ),
        (
            "[\"CONNECT\"]",
            "routes[0].methods[0]: CONNECT is decided by the route's host and ports",
        ),
    ] {
        let message_got =
            one_route_rejected(&format!(r#"{{"host": "a.example", "methods": {methods}}}"#));
        assert!(message_got.starts_with(message), "{methods}: {message_got}");
    }
}

#[test]
fn max_body_bytes_must_be_a_whole_number() {
    for bad in ["-1", "1.5", "\"1MiB\"", "null"] {
        let message = one_route_rejected(&format!(
            r#"{{"host": "a.example", "max_body_bytes": {bad}}}"#
        ));
        assert!(
            message.starts_with("routes[0].max_body_bytes: expected a whole number of bytes"),
            "{bad}: {message}"
        );
    }
}
