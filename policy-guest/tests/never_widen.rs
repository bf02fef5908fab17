//! A differential check of the path allowlist: every path the policy lets through
//! must stay inside `/repos/acme/` however an upstream server reads it.
//!
//! The upstream readings are modelled by independent choices: whether `%2E` is a dot,
//! whether `%2F` separates, whether `\` and `%5C` separate, whether `;` parameters are
//! stripped (before or after decoding `%3B`), and whether `//` collapses before
//! dot-segments are resolved. Paths are built from tokens that mix all of these.

mod common;

use common::get;
use policy_guest::{Routes, Verdict};

/// Tokens for the exhaustive test: one spelling of each trick, to keep it fast.
const CORE_TOKENS: &[&str] = &[
    "acme", "/", "..", ".", "%2e", "%2F", "%5C", "\\", ";", "x", "%3B", "?",
];

/// Tokens for the random test: every spelling.
const TOKENS: &[&str] = &[
    "repos", "acme", "other", "/", "..", ".", "%2e", "%2E%2e", "%2F", "%2f", "%5C", "\\", ";", "x",
    ";x", "%3B", "%252F", "?", "#",
];

#[derive(Debug, Clone, Copy)]
enum Semicolon {
    Literal,
    Strip,
    DecodeThenStrip,
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    percent_dot: bool,
    encoded_slash: bool,
    backslash: bool,
    semicolon: Semicolon,
    collapse: bool,
}

fn readings() -> Vec<Reading> {
    let mut all = Vec::new();
    for bits in 0..16u8 {
        for semicolon in [
            Semicolon::Literal,
            Semicolon::Strip,
            Semicolon::DecodeThenStrip,
        ] {
            all.push(Reading {
                percent_dot: bits & 1 != 0,
                encoded_slash: bits & 2 != 0,
                backslash: bits & 4 != 0,
                collapse: bits & 8 != 0,
                semicolon,
            });
        }
    }
    all
}

/// The non-empty segments an upstream with this reading resolves the path to.
fn upstream_segments(path: &str, reading: Reading) -> Vec<String> {
    let mut path = path.split(['?', '#']).next().unwrap_or_default().to_owned();
    if matches!(reading.semicolon, Semicolon::DecodeThenStrip) {
        path = path.replace("%3B", ";").replace("%3b", ";");
    }
    if reading.percent_dot {
        path = path.replace("%2E", ".").replace("%2e", ".");
    }
    if reading.encoded_slash {
        path = path.replace("%2F", "/").replace("%2f", "/");
    }
    if reading.backslash {
        path = path
            .replace("%5C", "/")
            .replace("%5c", "/")
            .replace('\\', "/");
    }
    let mut kept: Vec<&str> = Vec::new();
    for segment in path.split('/').skip(1) {
        let segment = match reading.semicolon {
            Semicolon::Literal => segment,
            _ => segment.split(';').next().unwrap_or_default(),
        };
        match segment {
            "" if reading.collapse => {}
            "." => {}
            ".." => {
                kept.pop();
            }
            _ => kept.push(segment),
        }
    }
    // `//` on its own only adds empty segments; it cannot leave a directory.
    kept.into_iter()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn check(routes: &Routes, readings: &[Reading], path: &str) {
    if matches!(
        routes.decide(&get("api.github.com", path)),
        Verdict::Deny { .. }
    ) {
        return;
    }
    for &reading in readings {
        let segments = upstream_segments(path, reading);
        assert!(
            segments.len() >= 2 && segments[0] == "repos" && segments[1] == "acme",
            "{path:?} was allowed but {reading:?} reads it as /{}",
            segments.join("/")
        );
    }
}

/// How many random paths the second test tries (a few seconds in a debug build).
const RANDOM_PATHS: usize = 30_000;

fn acme() -> Routes {
    common::one_route(r#"{"host": "api.github.com", "path_allowlist": ["/repos/acme/"]}"#)
}

/// Calls `visit` with every sequence of up to `depth` tokens, joined.
fn sequences(prefix: &mut String, depth: usize, visit: &mut dyn FnMut(&str)) {
    visit(prefix);
    if depth == 0 {
        return;
    }
    for token in CORE_TOKENS {
        let len = prefix.len();
        prefix.push_str(token);
        sequences(prefix, depth - 1, visit);
        prefix.truncate(len);
    }
}

#[test]
fn no_short_token_sequence_escapes_the_allowlist() {
    let routes = acme();
    let readings = readings();
    for (start, depth) in [
        ("/", 3),
        ("/repos/", 3),
        ("/repos/acme/", 4),
        ("/repos/acme/x/", 3),
    ] {
        let mut prefix = start.to_owned();
        sequences(&mut prefix, depth, &mut |path| {
            check(&routes, &readings, path)
        });
    }
}

#[test]
fn no_longer_random_token_sequence_escapes_the_allowlist() {
    let routes = acme();
    let readings = readings();
    // xorshift64: deterministic, so a failure reproduces.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..RANDOM_PATHS {
        let mut path = String::from(if next() % 2 == 0 { "/repos/acme/" } else { "/" });
        for _ in 0..5 + next() % 6 {
            path.push_str(TOKENS[usize::try_from(next() % TOKENS.len() as u64).unwrap()]);
        }
        check(&routes, &readings, &path);
    }
}
