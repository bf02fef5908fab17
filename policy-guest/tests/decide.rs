//! Deciding requests: host lookup, ports, CONNECT, and credential injection.

mod common;

use common::{
    assert_allowed, assert_denied, assert_injects, connect, get, get_http, one_route, request,
    routes,
};
use policy_guest::{NoState, Scheme, Verdict};

const GITHUB: &str = r#"{"host": "api.github.com", "path_allowlist": ["/repos/acme/"],
    "auth": {"scheme": "Bearer", "token_ref": "GH_PAT"}}"#;

#[test]
fn unrouted_host_is_denied() {
    let routes = one_route(r#"{"host": "api.github.com"}"#);
    let verdict = routes.decide(&get("evil.com", "/"));
    let reason = assert_denied(&verdict, 403);
    assert_eq!(
        reason,
        "no route allows host `evil.com`; the egress policy blocks it"
    );
    assert!(matches!(verdict, Verdict::Deny { rule: None, .. }));
}

#[test]
fn empty_routes_deny_everything() {
    let routes = routes(r#"{"routes": []}"#);
    assert_denied(&routes.decide(&get("api.github.com", "/")), 403);
    assert_denied(&routes.decide(&connect("api.github.com", 443)), 403);
}

#[test]
fn host_only_route_allows_any_path() {
    let routes = one_route(r#"{"host": "pypi.org"}"#);
    assert_allowed(
        &routes.decide(&get("pypi.org", "/simple/requests/")),
        "pypi.org",
    );
    assert_allowed(&routes.decide(&get("pypi.org", "")), "pypi.org");
}

#[test]
fn request_host_is_case_insensitive() {
    let routes = one_route(r#"{"host": "api.github.com"}"#);
    assert_allowed(
        &routes.decide(&get("API.GitHub.COM", "/")),
        "api.github.com",
    );
}

#[test]
fn route_host_is_case_insensitive() {
    let routes = one_route(r#"{"host": "API.GitHub.com"}"#);
    assert_allowed(
        &routes.decide(&get("api.github.com", "/")),
        "api.github.com",
    );
}

#[test]
fn trailing_dot_is_ignored() {
    let routes = one_route(r#"{"host": "api.github.com."}"#);
    assert_allowed(
        &routes.decide(&get("api.github.com", "/")),
        "api.github.com",
    );
    assert_allowed(
        &routes.decide(&get("api.github.com.", "/")),
        "api.github.com",
    );
    assert_denied(&routes.decide(&get("api.github.com..", "/")), 403);
}

#[test]
fn ipv6_hosts_match_with_or_without_brackets() {
    let routes = one_route(r#"{"host": "[2001:DB8::1]"}"#);
    assert_allowed(&routes.decide(&get("2001:db8::1", "/")), "2001:db8::1");
    assert_allowed(&routes.decide(&get("[2001:db8:0::1]", "/")), "2001:db8::1");
}

#[test]
fn wildcard_matches_one_level_subdomain() {
    let routes = one_route(r#"{"host": "*.pythonhosted.org"}"#);
    assert_allowed(
        &routes.decide(&get("files.pythonhosted.org", "/")),
        "*.pythonhosted.org",
    );
}

#[test]
fn wildcard_matches_multi_level_subdomain() {
    let routes = one_route(r#"{"host": "*.pythonhosted.org"}"#);
    assert_allowed(
        &routes.decide(&get("a.b.c.pythonhosted.org", "/")),
        "*.pythonhosted.org",
    );
}

#[test]
fn wildcard_does_not_match_apex() {
    let routes = one_route(r#"{"host": "*.pythonhosted.org"}"#);
    assert_denied(&routes.decide(&get("pythonhosted.org", "/")), 403);
    assert_denied(&routes.decide(&get("pythonhosted.org.", "/")), 403);
}

#[test]
fn wildcard_does_not_match_look_alike_suffix() {
    let routes = one_route(r#"{"host": "*.pythonhosted.org"}"#);
    for host in [
        "evilpythonhosted.org",
        "pythonhosted.org.evil.com",
        "x.pythonhosted.org.evil.com",
    ] {
        assert_denied(&routes.decide(&get(host, "/")), 403);
    }
}

#[test]
fn exact_beats_wildcard() {
    let routes = routes(
        r#"{"routes": [
            {"host": "*.github.com"},
            {"host": "api.github.com", "auth": {"scheme": "token", "token_ref": "GH_PAT"}}
        ]}"#,
    );
    assert_injects(
        &routes.decide(&get("api.github.com", "/")),
        "token ",
        "GH_PAT",
        "api.github.com",
    );
    assert_allowed(&routes.decide(&get("raw.github.com", "/")), "*.github.com");
}

#[test]
fn longest_wildcard_wins() {
    let routes = routes(
        r#"{"routes": [
            {"host": "*.example.com"},
            {"host": "*.api.example.com", "path_allowlist": ["/v1/"]},
            {"host": "*.com"}
        ]}"#,
    );
    assert_allowed(
        &routes.decide(&get("x.api.example.com", "/v1/a")),
        "*.api.example.com",
    );
    assert_denied(&routes.decide(&get("x.api.example.com", "/v2/a")), 403);
    assert_allowed(
        &routes.decide(&get("api.example.com", "/v2/a")),
        "*.example.com",
    );
    assert_allowed(&routes.decide(&get("other.com", "/")), "*.com");
}

#[test]
fn bearer_injection_template() {
    let routes = one_route(GITHUB);
    let verdict = routes.decide(&get("api.github.com", "/repos/acme/widgets"));
    assert_injects(&verdict, "Bearer ", "GH_PAT", "api.github.com");
}

#[test]
fn token_injection_template() {
    let routes =
        one_route(r#"{"host": "a.example", "auth": {"scheme": "token", "token_ref": "T"}}"#);
    assert_injects(
        &routes.decide(&get("a.example", "/")),
        "token ",
        "T",
        "a.example",
    );
}

#[test]
fn flat_form_injects_like_nested() {
    let flat =
        one_route(r#"{"host": "x.example", "auth_scheme": "token", "token_env": "X_TOKEN"}"#);
    let nested =
        one_route(r#"{"host": "x.example", "auth": {"scheme": "token", "token_ref": "X_TOKEN"}}"#);
    let request = get("x.example", "/a");
    assert_eq!(flat.decide(&request), nested.decide(&request));
    assert_injects(&flat.decide(&request), "token ", "X_TOKEN", "x.example");
}

#[test]
fn connect_to_routed_host_is_allowed() {
    let routes = one_route(GITHUB);
    // No path check and no injection for the tunnel itself.
    assert_allowed(
        &routes.decide(&connect("api.github.com", 443)),
        "api.github.com",
    );
}

#[test]
fn connect_to_unrouted_host_is_denied() {
    let routes = one_route(GITHUB);
    assert_denied(&routes.decide(&connect("evil.com", 443)), 403);
}

#[test]
fn connect_to_other_port_is_denied() {
    let routes = one_route(GITHUB);
    let verdict = routes.decide(&connect("api.github.com", 22));
    let reason = assert_denied(&verdict, 403);
    assert_eq!(
        reason,
        "port 22 is not allowed for `api.github.com` (allowed: 443)"
    );
    assert!(matches!(verdict, Verdict::Deny { rule: Some(ref r), .. } if r == "api.github.com"));
}

#[test]
fn lower_case_connect_is_not_a_tunnel() {
    let routes = one_route(GITHUB);
    let verdict = routes.decide(&request(
        Scheme::Https,
        "connect",
        "api.github.com",
        443,
        "",
    ));
    assert_denied(&verdict, 403);
}

#[test]
fn default_ports_follow_the_scheme() {
    let routes = one_route(r#"{"host": "a.example"}"#);
    assert_allowed(&routes.decide(&get("a.example", "/")), "a.example");
    assert_allowed(&routes.decide(&get_http("a.example", "/")), "a.example");
    assert_denied(
        &routes.decide(&request(Scheme::Https, "GET", "a.example", 80, "/")),
        403,
    );
    assert_denied(
        &routes.decide(&request(Scheme::Http, "GET", "a.example", 443, "/")),
        403,
    );
    assert_denied(
        &routes.decide(&request(Scheme::Https, "GET", "a.example", 8443, "/")),
        403,
    );
}

#[test]
fn explicit_ports_replace_the_default() {
    let routes = one_route(r#"{"host": "a.example", "ports": [8443, 9000, 8443]}"#);
    assert_allowed(
        &routes.decide(&request(Scheme::Https, "GET", "a.example", 8443, "/")),
        "a.example",
    );
    assert_allowed(&routes.decide(&connect("a.example", 9000)), "a.example");
    let reason = assert_denied(&routes.decide(&get("a.example", "/")), 403);
    assert_eq!(
        reason,
        "port 443 is not allowed for `a.example` (allowed: 8443, 9000)"
    );
}

#[test]
fn no_credentials_over_plain_http() {
    let routes = one_route(GITHUB);
    let verdict = routes.decide(&get_http("api.github.com", "/repos/acme/x"));
    let reason = assert_denied(&verdict, 403);
    assert!(
        reason.starts_with("route `api.github.com` injects credentials only over https"),
        "{reason}"
    );
}

#[test]
fn credentials_over_http_when_opted_in() {
    let routes = one_route(
        r#"{"host": "a.example", "inject_over_http": true,
            "auth": {"scheme": "Bearer", "token_ref": "T"}}"#,
    );
    assert_injects(
        &routes.decide(&get_http("a.example", "/")),
        "Bearer ",
        "T",
        "a.example",
    );
}

#[test]
fn plain_http_without_auth_is_allowed() {
    let routes = one_route(r#"{"host": "a.example"}"#);
    assert_allowed(&routes.decide(&get_http("a.example", "/")), "a.example");
}

#[test]
fn verdicts_do_not_depend_on_earlier_requests() {
    let routes = one_route(GITHUB);
    let allowed = get("api.github.com", "/repos/acme/x");
    let first = routes.decide(&allowed);
    routes.decide(&get("api.github.com", "/repos/evil/x"));
    routes.decide(&get("evil.com", "/"));
    assert_eq!(routes.decide(&allowed), first);
}

#[test]
fn methods_limit_requests_and_name_the_allowed_ones() {
    let routes = one_route(r#"{"host": "pypi.org", "methods": ["GET", "HEAD", "GET"]}"#);
    let req = |method: &str| request(Scheme::Https, method, "pypi.org", 443, "/simple/");
    assert_allowed(&routes.decide(&req("GET")), "pypi.org");
    assert_allowed(&routes.decide(&req("HEAD")), "pypi.org");
    for method in ["POST", "DELETE", "get", "PROPFIND"] {
        let verdict = routes.decide(&req(method));
        let reason = assert_denied(&verdict, 405);
        assert!(reason.contains("allowed: GET, HEAD"), "{reason}");
        let Verdict::Deny { headers, rule, .. } = verdict else {
            unreachable!()
        };
        assert_eq!(headers, vec![("allow".to_owned(), "GET, HEAD".to_owned())]);
        assert_eq!(rule.as_deref(), Some("pypi.org"));
    }
    // The tunnel is decided by host and port: `methods` does not apply to CONNECT.
    assert_allowed(&routes.decide(&connect("pypi.org", 443)), "pypi.org");
    // Checked before the path: a forbidden method on a forbidden path is a 405.
    let routes = one_route(
        r#"{"host": "api.github.com", "methods": ["GET"], "path_allowlist": ["/repos/acme/"]}"#,
    );
    let post = request(Scheme::Https, "POST", "api.github.com", 443, "/other");
    assert_denied(&routes.decide(&post), 405);
}

/// A body the host held: `len` bytes, whole or not.
struct Held(u64, bool);

impl policy_guest::Body for Held {
    fn len(&self) -> u64 {
        self.0
    }
    fn complete(&self) -> bool {
        self.1
    }
    fn read(&self, _offset: u64, _max: u32) -> Vec<u8> {
        Vec::new()
    }
}

#[test]
fn max_body_bytes_is_read_from_content_length_or_from_the_body() {
    let routes = one_route(r#"{"host": "uploads.example", "max_body_bytes": 100}"#);
    let post = request(Scheme::Https, "POST", "uploads.example", 443, "/u");
    let length = |value: &'static str| {
        move |name: &str| {
            if name == "content-length" {
                vec![value.to_owned()]
            } else {
                Vec::new()
            }
        }
    };
    assert_allowed(
        &routes.decide_head(&post, &length("100"), &NoState),
        "uploads.example",
    );
    let reason = assert_denied(&routes.decide_head(&post, &length("101"), &NoState), 413);
    assert!(
        reason.contains("(101 bytes) is over the 100 bytes"),
        "{reason}"
    );
    assert_denied(&routes.decide_head(&post, &length("-1"), &NoState), 400);
    let two = |name: &str| {
        if name == "content-length" {
            vec!["1".to_owned(), "1".to_owned()]
        } else {
            Vec::new()
        }
    };
    assert_denied(&routes.decide_head(&post, &two, &NoState), 400);
    // No content-length (a chunked body): one byte more than the limit is asked for.
    assert_eq!(
        routes.decide(&post),
        Verdict::NeedBody {
            max_bytes: 101,
            prefix: true
        }
    );
    let none = policy_guest::NoHeaders;
    assert_allowed(
        &routes.decide_body(&post, &none, &Held(100, true), &NoState),
        "uploads.example",
    );
    assert_denied(
        &routes.decide_body(&post, &none, &Held(101, false), &NoState),
        413,
    );
    // The host held less than the limit and not the whole body: unknown size, refused.
    let reason = assert_denied(
        &routes.decide_body(&post, &none, &Held(50, false), &NoState),
        413,
    );
    assert!(reason.contains("size is unknown"), "{reason}");
    // A tunnel has no body to check.
    assert_allowed(
        &routes.decide(&connect("uploads.example", 443)),
        "uploads.example",
    );
}
