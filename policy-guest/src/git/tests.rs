use super::*;
use crate::request::{MemoryBody, Scheme};

const A: &str = "1111111111111111111111111111111111111111";
const B: &str = "2222222222222222222222222222222222222222";
const Z: &str = "0000000000000000000000000000000000000000";

fn rules(json: &str) -> GitRules {
    GitRules::parse("routes[0].git", &serde_json::from_str(json).unwrap()).unwrap()
}

fn request(method: &'static str, path: &str) -> Request {
    Request {
        scheme: Scheme::Https,
        method: method.into(),
        host: "git.example".to_owned(),
        port: 443,
        path: path.to_owned(),
        client: "127.0.0.1:1".parse().unwrap(),
    }
}

fn pkt(line: &str) -> String {
    format!("{:04x}{line}", line.len() + 4)
}

/// A receive-pack body updating `refs` (`(old, new, name)`), then a pack.
fn push_body(refs: &[(&str, &str, &str)]) -> Vec<u8> {
    let mut body = String::new();
    for (index, (old, new, name)) in refs.iter().enumerate() {
        let caps = if index == 0 {
            "\0report-status side-band-64k"
        } else {
            ""
        };
        body.push_str(&pkt(&format!("{old} {new} {name}{caps}\n")));
    }
    body.push_str("0000PACK\0\0\0\x02\0\0\0\0");
    body.into_bytes()
}

fn push(rules: &GitRules, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let request = request("POST", path);
    assert_eq!(
        rules.check("git.example", &request, None),
        Some(Verdict::NeedBody {
            max_bytes: MAX_COMMAND_BYTES,
            prefix: true
        })
    );
    denial(rules.check(
        "git.example",
        &request,
        Some(&MemoryBody::complete(body.to_vec())),
    ))
}

fn denial(verdict: Option<Verdict>) -> Option<(u16, String)> {
    match verdict {
        Some(Verdict::Deny { status, reason, .. }) => Some((status, reason)),
        None => None,
        Some(other) => panic!("unexpected {other:?}"),
    }
}

const AGENT: &str = r#"{"push": ["refs/heads/agent/*"]}"#;

#[test]
fn fetch_is_allowed_by_default_and_can_be_turned_off() {
    let open = rules("{}");
    for (method, path) in [
        ("GET", "/acme/w.git/info/refs?service=git-upload-pack"),
        ("GET", "/acme/w/info/refs"),
        ("POST", "/acme/w.git/git-upload-pack"),
        ("GET", "/acme/w.git/HEAD"),
        ("GET", "/api/other"),
    ] {
        assert_eq!(
            open.check("r", &request(method, path), None),
            None,
            "{path}"
        );
    }
    let closed = rules(r#"{"fetch": false}"#);
    let (status, reason) =
        denial(closed.check("r", &request("POST", "/acme/w.git/GIT-UPLOAD-PACK/"), None)).unwrap();
    assert_eq!(status, 403);
    assert!(reason.contains("`git.fetch` is false on `r`"), "{reason}");
}

#[test]
fn push_discovery_needs_a_push_pattern() {
    let discovery = request("GET", "/acme/w.git/info/refs?service=git-receive-pack");
    let (_, reason) = denial(rules("{}").check("r", &discovery, None)).unwrap();
    assert!(reason.contains("no `git.push` ref patterns"), "{reason}");
    // An encoded spelling of the service is still push discovery.
    let encoded = request("GET", "/acme/w/info/refs?service=git-receive%2Dpack");
    assert!(denial(rules("{}").check("r", &encoded, None)).is_some());
    assert_eq!(rules(AGENT).check("r", &discovery, None), None);
    // No push rights: refused before the body is read.
    assert!(
        denial(rules("{}").check("r", &request("POST", "/w/git-receive-pack"), None)).is_some()
    );
}

#[test]
fn pushes_are_decided_ref_by_ref() {
    let rules = rules(AGENT);
    let path = "/acme/w.git/git-receive-pack";
    assert_eq!(
        push(&rules, path, &push_body(&[(A, B, "refs/heads/agent/x")])),
        None
    );
    let (status, reason) = push(&rules, path, &push_body(&[(A, B, "refs/heads/main")])).unwrap();
    assert_eq!(status, 403);
    assert!(
        reason.contains("push to refs/heads/main refused")
            && reason.contains("`git.example`")
            && reason.contains("refs/heads/agent/*"),
        "{reason}"
    );
    // One forbidden ref refuses the whole push.
    let two = push_body(&[(A, B, "refs/heads/agent/x"), (A, B, "refs/heads/main")]);
    assert!(
        push(&rules, path, &two)
            .unwrap()
            .1
            .contains("refs/heads/main")
    );
    // `*` stays within a component.
    assert!(push(&rules, path, &push_body(&[(A, B, "refs/heads/agent/x/y")])).is_some());
    // The probe and a bare flush update nothing.
    assert_eq!(push(&rules, path, b"0000"), None);
}

#[test]
fn deletes_need_delete_true() {
    let path = "/w/git-receive-pack";
    let body = push_body(&[(A, Z, "refs/heads/agent/x")]);
    let (_, reason) = push(&rules(AGENT), path, &body).unwrap();
    assert!(
        reason.contains("deleting refs/heads/agent/x refused"),
        "{reason}"
    );
    let with_delete = rules(r#"{"push": ["refs/heads/agent/**"], "delete": true}"#);
    assert_eq!(push(&with_delete, path, &body), None);
    let main = push_body(&[(A, Z, "refs/heads/main")]);
    assert!(push(&with_delete, path, &main).is_some());
}

#[test]
fn malformed_and_truncated_pushes_are_refused() {
    let rules = rules(AGENT);
    let path = "/w/git-receive-pack";
    let good = push_body(&[(A, B, "refs/heads/agent/x")]);
    let (status, _) = push(&rules, path, &good[..20]).unwrap();
    assert_eq!(status, 400);
    // A prefix that stops before the flush.
    let flush = good.windows(4).position(|w| w == b"0000").unwrap();
    let partial = MemoryBody {
        bytes: good[..flush].to_vec(),
        complete: false,
    };
    let verdict = rules.check("r", &request("POST", path), Some(&partial));
    assert!(matches!(verdict, Some(Verdict::Deny { status: 400, .. })));
    // A prefix holding the commands is enough.
    let prefix = MemoryBody {
        bytes: good[..flush + 8].to_vec(),
        complete: false,
    };
    assert_eq!(
        rules.check("r", &request("POST", path), Some(&prefix)),
        None
    );
    assert!(push(&rules, path, b"not a push").is_some());
}

#[test]
fn repos_limit_every_git_request() {
    let rules = rules(r#"{"push": ["refs/heads/**"], "repos": ["/acme/*.git", "/tools/cli"]}"#);
    for path in [
        "/acme/widgets/info/refs?service=git-upload-pack",
        "/acme/widgets.git/git-upload-pack",
        "/tools/cli.git/info/refs?service=git-receive-pack",
    ] {
        let method = if path.ends_with("pack") {
            "POST"
        } else {
            "GET"
        };
        assert_eq!(
            rules.check("r", &request(method, path), None),
            None,
            "{path}"
        );
    }
    for path in [
        "/other/x.git/info/refs?service=git-upload-pack",
        "/acme/a/b.git/info/refs",
        "/tools/cli2/info/refs",
    ] {
        let (_, reason) = denial(rules.check("r", &request("GET", path), None)).unwrap();
        assert!(reason.contains("is not in `git.repos`"), "{reason}");
    }
    // An encoded separator does not hide the repository.
    assert!(denial(rules.check("r", &request("GET", "/other%2Fx/info/refs"), None)).is_some());
}

#[test]
fn dumb_http_writing_is_refused() {
    let rules = rules(r#"{"repos": ["/acme/w"]}"#);
    for method in [
        "PROPFIND",
        "MKCOL",
        "MOVE",
        "COPY",
        "LOCK",
        "UNLOCK",
        "PROPPATCH",
    ] {
        assert!(
            denial(rules.check("r", &request(method, "/x"), None)).is_some(),
            "{method}"
        );
    }
    for (method, path) in [
        ("PUT", "/acme/w/objects/ab/cdef"),
        ("PUT", "/any/repo.git/refs/heads/main"),
        ("DELETE", "/acme/w.git/info/refs"),
    ] {
        assert!(
            denial(rules.check("r", &request(method, path), None)).is_some(),
            "{path}"
        );
    }
    assert_eq!(rules.check("r", &request("PUT", "/api/x"), None), None);
}

#[test]
fn patterns_match_within_and_across_components() {
    assert!(glob("refs/heads/agent/*", "refs/heads/agent/x"));
    assert!(!glob("refs/heads/agent/*", "refs/heads/agent/x/y"));
    assert!(glob("refs/heads/agent/**", "refs/heads/agent/x/y"));
    assert!(glob("refs/heads/*-wip", "refs/heads/a-wip"));
    assert!(!glob("refs/heads/*-wip", "refs/heads/a/b-wip"));
    assert!(glob("refs/**/x", "refs/a/b/x"));
    assert!(!glob("refs/heads/main", "refs/heads/main2"));
}

#[test]
fn bad_rules_name_the_field() {
    for (json, needle) in [
        (r#"{"push": []}"#, "routes[0].git.push: is empty"),
        (
            r#"{"push": "refs/heads/x"}"#,
            "routes[0].git.push: expected a list",
        ),
        (
            r#"{"push": ["heads/x"]}"#,
            "routes[0].git.push[0]: `heads/x` must start with `refs/`",
        ),
        (r#"{"push": ["refs/heads/a b"]}"#, "routes[0].git.push[0]"),
        (r#"{"delete": true}"#, "routes[0].git.delete"),
        (
            r#"{"fetch": "yes"}"#,
            "routes[0].git.fetch: expected true or false",
        ),
        (r#"{"repos": ["acme/x"]}"#, "routes[0].git.repos[0]"),
        (r#"{"pushes": []}"#, "unknown key `pushes`"),
        ("[]", "routes[0].git: expected an object"),
    ] {
        let error = GitRules::parse("routes[0].git", &serde_json::from_str(json).unwrap())
            .unwrap_err()
            .to_string();
        assert!(error.contains(needle), "{json}: {error}");
    }
}

#[test]
fn a_large_pack_after_the_commands_is_not_read_whole() {
    let rules = rules(AGENT);
    let mut body = push_body(&[(A, B, "refs/heads/agent/x")]);
    body.resize(1024 * 1024, 0x5a);
    let partial = MemoryBody {
        bytes: body,
        complete: false,
    };
    let request = request("POST", "/w/git-receive-pack");
    assert_eq!(rules.check("r", &request, Some(&partial)), None);
    // Commands that never end within the bytes held: refused.
    let endless = MemoryBody {
        bytes: pkt(&format!("{A} {B} refs/heads/agent/x\0report-status\n")).into_bytes(),
        complete: false,
    };
    assert!(matches!(
        rules.check("r", &request, Some(&endless)),
        Some(Verdict::Deny { status: 400, .. })
    ));
}
