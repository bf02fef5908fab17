//! The policy's decisions, tested natively: no wasm, no proxy. `cases.yaml` checks the
//! same things through the built component with `egress-proxy policy test`.

use example_policy::{InjectedHeader, Part, Policy, Request, Scheme, Summary, Verdict};

const DOCUMENT: &str = r#"{
    "max_upload_bytes": 1000,
    "hosts": [
        {"host": "pypi.org"},
        {"host": "api.github.com", "uploads": true, "tokens": {
            "/repos/acme/": "GH_ACME_TOKEN",
            "/repos/acme/secret-project/": "GH_SECRET_TOKEN",
            "/repos/acme-labs/": "GH_LABS_TOKEN"
        }},
        {"host": "api.example.com", "uploads": true, "forbidden_fields": ["admin"]}
    ]
}"#;

fn policy() -> Policy {
    Policy::parse(DOCUMENT).unwrap_or_else(|error| panic!("{error}"))
}

fn request(method: &'static str, url_host: &str, path: &str) -> Request {
    Request {
        scheme: Scheme::Https,
        method: method.into(),
        host: url_host.to_owned(),
        port: 443,
        path: path.to_owned(),
    }
}

fn no_headers(_: &str) -> Vec<String> {
    Vec::new()
}

/// Headers holding only `content-length: <length>`.
fn content_length(length: &str) -> impl Fn(&str) -> Vec<String> {
    let length = length.to_owned();
    move |name: &str| {
        if name.eq_ignore_ascii_case("content-length") {
            vec![length.clone()]
        } else {
            Vec::new()
        }
    }
}

fn allow(rule: &str) -> Verdict {
    Verdict::Allow {
        rule: Some(rule.to_owned()),
    }
}

fn bearer(secret: &str, rule: &str) -> Verdict {
    Verdict::Inject {
        headers: vec![InjectedHeader {
            name: "authorization".to_owned(),
            value: vec![
                Part::Literal("Bearer ".to_owned()),
                Part::Secret(secret.to_owned()),
            ],
        }],
        rule: Some(rule.to_owned()),
    }
}

/// The status of a denial, or a panic naming the verdict.
fn denied(verdict: Verdict) -> u16 {
    match verdict {
        Verdict::Deny { status, .. } => status,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn get_and_head_to_a_listed_host_are_allowed() {
    let policy = policy();
    for method in ["GET", "HEAD"] {
        let verdict = policy.decide(&request(method, "pypi.org", "/simple/"), &no_headers);
        assert_eq!(verdict, allow("pypi.org"));
    }
}

#[test]
fn an_unlisted_host_is_denied_without_a_rule() {
    let verdict = policy().decide(&request("GET", "evil.example", "/"), &no_headers);
    assert!(matches!(
        verdict,
        Verdict::Deny {
            status: 403,
            rule: None,
            ..
        }
    ));
}

#[test]
fn writes_are_denied_unless_the_host_takes_uploads() {
    let policy = policy();
    let post = request("POST", "pypi.org", "/legacy/");
    assert_eq!(denied(policy.decide(&post, &content_length("10"))), 405);
    let delete = request("DELETE", "api.github.com", "/repos/acme/widget");
    assert_eq!(denied(policy.decide(&delete, &no_headers)), 405);
    let other = request("PROPFIND", "pypi.org", "/");
    assert_eq!(denied(policy.decide(&other, &no_headers)), 405);
}

#[test]
fn uploads_are_bounded_by_content_length() {
    let policy = policy();
    let post = request("POST", "api.github.com", "/markdown");
    assert_eq!(
        policy.decide(&post, &content_length("1000")),
        allow("api.github.com")
    );
    assert_eq!(denied(policy.decide(&post, &content_length("1001"))), 413);
    assert_eq!(denied(policy.decide(&post, &no_headers)), 411);
    assert_eq!(denied(policy.decide(&post, &content_length("-1"))), 400);
    assert_eq!(denied(policy.decide(&post, &content_length("+12"))), 400);
    assert_eq!(denied(policy.decide(&post, &content_length("12abc"))), 400);
    let two = |_: &str| vec!["10".to_owned(), "10".to_owned()];
    assert_eq!(denied(policy.decide(&post, &two)), 400);
}

#[test]
fn a_large_body_is_denied_on_reads_too() {
    let get = request("GET", "pypi.org", "/");
    assert_eq!(denied(policy().decide(&get, &content_length("5000"))), 413);
}

#[test]
fn each_path_prefix_gets_its_own_token() {
    let policy = policy();
    let cases = [
        (
            "/repos/acme/widget",
            "GH_ACME_TOKEN",
            "api.github.com/repos/acme/",
        ),
        (
            "/repos/acme-labs/x?y=1",
            "GH_LABS_TOKEN",
            "api.github.com/repos/acme-labs/",
        ),
        // The longest prefix wins.
        (
            "/repos/acme/secret-project/issues",
            "GH_SECRET_TOKEN",
            "api.github.com/repos/acme/secret-project/",
        ),
    ];
    for (path, secret, rule) in cases {
        let verdict = policy.decide(&request("GET", "api.github.com", path), &no_headers);
        assert_eq!(verdict, bearer(secret, rule), "{path}");
    }
}

#[test]
fn a_path_outside_every_prefix_gets_no_token() {
    let policy = policy();
    for path in [
        "/zen",
        "/repos/acme",
        "/repos/acme-evil/x",
        "/repos/other?/repos/acme/",
    ] {
        let verdict = policy.decide(&request("GET", "api.github.com", path), &no_headers);
        assert_eq!(verdict, allow("api.github.com"), "{path}");
    }
}

#[test]
fn tokens_are_never_sent_over_plain_http() {
    let policy = policy();
    let mut plain = request("GET", "api.github.com", "/repos/acme/widget");
    plain.scheme = Scheme::Http;
    plain.port = 80;
    assert_eq!(denied(policy.decide(&plain, &no_headers)), 403);
    plain.path = "/zen".to_owned();
    assert_eq!(policy.decide(&plain, &no_headers), allow("api.github.com"));
}

#[test]
fn tunnels_are_decided_on_host_and_port() {
    let policy = policy();
    let connect = request("CONNECT", "api.github.com", "");
    assert_eq!(
        policy.decide(&connect, &no_headers),
        allow("api.github.com")
    );
    let mut other_port = connect.clone();
    other_port.port = 22;
    assert_eq!(denied(policy.decide(&other_port, &no_headers)), 403);
    let unlisted = request("CONNECT", "evil.example", "");
    assert_eq!(denied(policy.decide(&unlisted, &no_headers)), 403);
}

#[test]
fn the_summary_declares_every_secret() {
    assert_eq!(
        policy().summary(),
        Summary {
            rules: 3,
            secrets: vec![
                "GH_ACME_TOKEN".to_owned(),
                "GH_LABS_TOKEN".to_owned(),
                "GH_SECRET_TOKEN".to_owned(),
            ],
            rule_ids: [
                "api.example.com",
                "api.github.com",
                "api.github.com/repos/acme/secret-project/",
                "api.github.com/repos/acme-labs/",
                "api.github.com/repos/acme/",
                "pypi.org",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    );
}

#[test]
fn bad_documents_are_rejected_with_a_reason() {
    let cases = [
        ("", "invalid policy document"),
        (
            r#"{"hosts": [{"host": "a.example", "upload": true}]}"#,
            "unknown field `upload`",
        ),
        (
            r#"{"max_upload_bytes": -1, "hosts": []}"#,
            "invalid policy document",
        ),
        (r#"{"hosts": [{"host": "A.example"}]}"#, "lower case"),
        (
            r#"{"hosts": [{"host": "a.example"}, {"host": "a.example"}]}"#,
            "listed twice",
        ),
        (
            r#"{"hosts": [{"host": "a.example", "tokens": {"/repos/acme": "T"}}]}"#,
            "must start and end with `/`",
        ),
        (
            r#"{"hosts": [{"host": "a.example", "tokens": {"/x/": "GH-PAT"}}]}"#,
            "secret name `GH-PAT`",
        ),
        (
            r#"{"hosts": [{"host": "a.example", "forbidden_fields": ["admin"]}]}"#,
            "needs `uploads: true`",
        ),
    ];
    for (document, expected) in cases {
        let error = Policy::parse(document).unwrap_err();
        assert!(error.contains(expected), "{document}: {error}");
    }
}

#[test]
fn an_empty_host_list_denies_everything() {
    let policy = Policy::parse(r#"{"hosts": []}"#).unwrap();
    assert_eq!(
        denied(policy.decide(&request("GET", "pypi.org", "/"), &no_headers)),
        403
    );
}

#[test]
fn uploads_to_a_checked_host_need_the_body_and_reads_do_not() {
    let policy = policy();
    let post = request("POST", "api.example.com", "/v1/items");
    assert_eq!(
        policy.decide(&post, &content_length("20")),
        Verdict::NeedBody { max_bytes: 1000 }
    );
    let get = request("GET", "api.example.com", "/v1/items");
    assert_eq!(policy.decide(&get, &no_headers), allow("api.example.com"));
    // The head checks still come first: an oversized upload never gets that far.
    assert_eq!(denied(policy.decide(&post, &content_length("5000"))), 413);
}

#[test]
fn a_json_body_with_a_forbidden_field_is_refused_with_the_field_noted() {
    let policy = policy();
    let post = request("POST", "api.example.com", "/v1/items");
    let headers = content_length("40");
    let ok: &[u8] = br#"{"name": "widget", "admin_notes": "x"}"#;
    assert_eq!(
        policy.decide_body(&post, &headers, ok),
        allow("api.example.com")
    );
    let bad: &[u8] = br#"{"name": "widget", "admin": true}"#;
    match policy.decide_body(&post, &headers, bad) {
        Verdict::Deny {
            status,
            annotations,
            ..
        } => {
            assert_eq!(status, 403);
            assert_eq!(annotations, vec![("field".to_owned(), "admin".to_owned())]);
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    let not_json: &[u8] = b"admin=true";
    assert_eq!(denied(policy.decide_body(&post, &headers, not_json)), 400);
}

/// A body the proxy held only in part.
struct Partial;

impl example_policy::Body for Partial {
    fn len(&self) -> u64 {
        2
    }
    fn complete(&self) -> bool {
        false
    }
    fn read(&self, _offset: u64, _max: u32) -> Vec<u8> {
        b"{}".to_vec()
    }
}

#[test]
fn a_body_the_proxy_could_not_hold_whole_is_refused() {
    let post = request("POST", "api.example.com", "/v1/items");
    let verdict = policy().decide_body(&post, &content_length("2"), &Partial);
    assert_eq!(denied(verdict), 413);
}
