//! Path allowlists: what they admit, and tricks that must never widen them.

mod common;

use common::{assert_denied, assert_injects, assert_passes, get, one_route};
use policy_guest::{Routes, Verdict};

fn acme() -> Routes {
    one_route(
        r#"{"host": "api.github.com", "path_allowlist": ["/repos/acme/"],
            "auth": {"scheme": "Bearer", "token_ref": "GH_PAT"}}"#,
    )
}

fn decide(path: &str) -> Verdict {
    acme().decide(&get("api.github.com", path))
}

/// Asserts the path is refused (403 or 400), whatever the reason.
fn assert_refused(path: &str) {
    let verdict = decide(path);
    assert!(
        matches!(
            verdict,
            Verdict::Deny {
                status: 400 | 403,
                ..
            }
        ),
        "{path:?} got past the allowlist: {verdict:?}"
    );
}

#[test]
fn path_in_allowlist_is_allowed() {
    assert_injects(
        &decide("/repos/acme/widgets/issues"),
        "Bearer ",
        "GH_PAT",
        "api.github.com",
    );
}

#[test]
fn path_outside_allowlist_is_denied() {
    let reason = assert_denied(&decide("/repos/evil/widgets"), 403);
    assert_eq!(
        reason,
        "path `/repos/evil/widgets` is not in the allowlist for `api.github.com` \
         (allowed: `/repos/acme/`)"
    );
}

#[test]
fn trailing_slash_limits_to_a_directory() {
    assert_refused("/repos/acme-evil/x");
    assert_refused("/repos/acme");
    let loose = one_route(r#"{"host": "a.example", "path_allowlist": ["/repos/acme"]}"#);
    assert_passes(&loose.decide(&get("a.example", "/repos/acme-evil/x")));
}

#[test]
fn no_allowlist_allows_any_path() {
    let routes = one_route(r#"{"host": "a.example", "path_allowlist": []}"#);
    assert_passes(&routes.decide(&get("a.example", "/anything/../at/all%zz")));
}

#[test]
fn any_entry_may_match() {
    let routes = one_route(r#"{"host": "a.example", "path_allowlist": ["/a/", "/b/"]}"#);
    assert_passes(&routes.decide(&get("a.example", "/b/x")));
    assert_denied(&routes.decide(&get("a.example", "/c/x")), 403);
}

#[test]
fn entries_are_normalised() {
    let routes = one_route(r#"{"host": "a.example", "path_allowlist": ["/r/%61cme/x/../"]}"#);
    assert_passes(&routes.decide(&get("a.example", "/r/acme/y")));
    assert_passes(&routes.decide(&get("a.example", "/r/%61cme/y")));
}

#[test]
fn encoded_slashes_with_dots_do_not_escape() {
    assert_refused("/repos/acme/..%2F..%2Fother");
    assert_refused("/repos/acme/..%2f..%2fother");
    assert_refused("/repos/acme%2F..%2F..%2Fother");
    assert_refused("/repos/acme/x%2F..%2F..%2F..%2Fother");
}

#[test]
fn encoded_dots_do_not_escape() {
    assert_refused("/repos/acme/%2e%2e/%2e%2e/other");
    assert_refused("/repos/acme/%2E%2E/%2E%2E/other");
    assert_refused("/repos/acme/.%2e/.%2e/other");
    assert_refused("/repos/acme/%2e./%2e./other");
}

#[test]
fn encoded_backslashes_do_not_escape() {
    assert_refused("/repos/acme\\..\\..\\other");
    assert_refused("/repos/acme%5C..%5C..%5Cother");
    assert_refused("/repos/acme/..%5c..%5cother");
}

#[test]
fn double_slashes_do_not_escape() {
    assert_refused("//repos/acme/../../other");
    assert_refused("/repos/acme//../../other");
    assert_refused("/repos/acme/x//../../../other");
}

#[test]
fn plain_dot_segments_resolve() {
    assert_refused("/repos/acme/../other");
    assert_refused("/repos/acme/./../../other");
    assert_passes(&decide("/repos/acme/x/../y"));
    assert_passes(&decide("/repos/acme/./y"));
    assert_passes(&decide("/repos/other/../acme/y"));
}

#[test]
fn query_does_not_take_part() {
    assert_refused("/repos/evil?/repos/acme/");
    assert_refused("/repos/evil#/repos/acme/");
    assert_refused("/repos/evil?x=/repos/acme/../..");
    assert_passes(&decide("/repos/acme/x?path=/../../other"));
}

#[test]
fn tomcat_path_parameters_do_not_escape() {
    assert_refused("/repos/acme/..;/..;/other");
    assert_refused("/repos/acme/..;x/..;y/other");
    assert_refused("/repos/acme/.;/..;/..;/other");
    // Read as a segment (not Tomcat), `..;x` would absorb a `..` and land elsewhere.
    assert_refused("/repos/other/..;x/../acme/y");
}

#[test]
fn double_encoding_is_decoded_once() {
    // `%252F` stays `%252F`: a literal `%2F` for an upstream that decodes once.
    assert_passes(&decide("/repos/acme/..%252F..%252Fother"));
    assert_refused("/repos/acme%252F..%252F..%252Fother");
    assert_refused("/repos%252Facme/x");
}

#[test]
fn invalid_escapes_are_malformed() {
    for path in [
        "/repos/acme/%zz",
        "/repos/acme/%4",
        "/repos/acme/%",
        "/repos/acme/%00",
    ] {
        let reason = assert_denied(&decide(path), 400);
        assert!(reason.starts_with("malformed path"), "{reason}");
    }
}

#[test]
fn relative_path_is_denied() {
    assert_denied(&decide("repos/acme/x"), 403);
    assert_denied(&decide(""), 403);
    assert_denied(&decide("*"), 403);
}

#[test]
fn separators_hidden_in_the_prefix_are_refused() {
    // Upstreams that keep `%2F` inside a segment would not see `/repos/acme/` here.
    assert_refused("/repos%2Facme/x");
    assert_refused("/repos\\acme/x");
}

#[test]
fn legitimate_encoded_paths_pass() {
    for path in [
        "/repos/acme/r/git/refs/heads/feature%2Fx",
        "/repos/acme/a%20b",
        "/repos/acme/r/contents/%C3%A9t%C3%A9.md",
        "/repos/%61cme/r",
        "/repos/acme/r/issues?q=a%2Fb&x=..",
        "/repos/acme//r",
        "/repos/acme/r;v=1/x",
    ] {
        assert_passes(&decide(path));
    }
}
