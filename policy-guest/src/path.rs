//! Request paths: normalisation, and matching against a route's `path_allowlist`.
//!
//! The allowlist is a plain string-prefix match (like the system this replaces) on
//! the *normalised* path: `/repos/acme/` admits `/repos/acme/x` but not
//! `/repos/acme-evil/x`, while `/repos/acme` (no trailing slash) admits both. End an
//! entry with `/` to limit it to a directory. Entries are normalised by the same rules
//! as request paths.
//!
//! Normalisation, in order:
//!
//! 1. The query (from the first `?`) and any fragment (from the first `#`) are cut
//!    off: they never take part in matching.
//! 2. The path must start with `/`.
//! 3. Percent-escapes are decoded once (`%252F` stays `%252F`): unreserved characters
//!    (`A-Z a-z 0-9 - . _ ~`, so `%2E` becomes `.`) are decoded; `%2F` and `%5C`, and
//!    a literal `\`, count as `/`; every other escape stays encoded, with upper-case
//!    hex. An invalid escape (`%zz`, a truncated `%4`), `%00` or a control character
//!    makes the path malformed.
//! 4. Runs of `/` collapse into one.
//! 5. Dot-segments are resolved (RFC 3986 `remove_dot_segments`; `..` above the root
//!    stays at the root). A segment whose part before the first `;` is `.` or `..`
//!    (Tomcat's `..;foo`) counts as a dot-segment.
//!
//! Servers disagree about exactly the things above: whether `%2F`, `%2E` or `\`
//! separate or dot, whether `;` ends a segment, whether `//` collapses before `..` is
//! resolved. A path could be read one way here and another way upstream, and so leave
//! the allowlisted directory. Two rules close that gap:
//!
//! - A path with a dot-segment must be *plain*: every dot-segment written literally as
//!   `.` or `..`; no `%2F`, `%5C` or `\` anywhere in it; and no empty segment before
//!   the last one (`//`, or `/;x/`, which Tomcat reads as empty). Otherwise it is
//!   refused as ambiguous. (Clients resolve dot-segments before sending, so only a
//!   crafted path has them.)
//! - Without dot-segments, a path must match the same entry both with `%2F`/`%5C`/`\`
//!   read as `/` and with them read as part of a segment.

use std::borrow::Cow;

/// Why a path cannot be normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// It does not start with `/`.
    NotAbsolute,
    /// It cannot be decoded; the text says why.
    Malformed(&'static str),
    /// It has dot-segments that servers would resolve differently.
    Ambiguous,
}

/// A normalised path, in the two readings the allowlist checks. Borrows the request's
/// path when it is already normal (the common case: no escapes, no dot-segments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NormalPath<'a> {
    /// `%2F`, `%5C` and `\` read as `/`.
    split: Cow<'a, str>,
    /// `%2F` and `%5C` kept encoded, `\` kept as is.
    literal: Cow<'a, str>,
}

impl<'a> NormalPath<'a> {
    /// Normalises a path as sent (query and fragment are ignored).
    pub(crate) fn parse(path_and_query: &'a str) -> Result<Self, PathError> {
        let path = without_query(path_and_query);
        if !path.starts_with('/') {
            return Err(PathError::NotAbsolute);
        }
        if is_already_normal(path) {
            return Ok(Self {
                split: Cow::Borrowed(path),
                literal: Cow::Borrowed(path),
            });
        }
        let decoded = decode(path)?;
        let has_dots = segments(&decoded.split).any(is_dot_like);
        if has_dots && !is_plain(path, &decoded) {
            return Err(PathError::Ambiguous);
        }
        Ok(Self {
            split: Cow::Owned(resolve(&decoded.split)),
            literal: Cow::Owned(resolve(&decoded.literal)),
        })
    }

    /// An owned copy, for allowlist entries kept with the routes.
    pub(crate) fn into_owned(self) -> NormalPath<'static> {
        NormalPath {
            split: Cow::Owned(self.split.into_owned()),
            literal: Cow::Owned(self.literal.into_owned()),
        }
    }

    /// The path as the allowlist compares it (separators decoded).
    pub(crate) fn as_str(&self) -> &str {
        &self.split
    }

    /// Both readings: separators decoded, and kept encoded.
    pub(crate) fn readings(&self) -> [&str; 2] {
        [&self.split, &self.literal]
    }

    /// Whether this path lies under `prefix` in both readings.
    pub(crate) fn starts_with(&self, prefix: &NormalPath<'_>) -> bool {
        self.split.starts_with(prefix.split.as_ref())
            && self.literal.starts_with(prefix.literal.as_ref())
    }
}

/// The path without its query and fragment.
pub(crate) fn without_query(path_and_query: &str) -> &str {
    match path_and_query.bytes().position(|b| b == b'?' || b == b'#') {
        // `?` and `#` are ASCII, so `end` is a character boundary.
        Some(end) => path_and_query.get(..end).unwrap_or(path_and_query),
        None => path_and_query,
    }
}

/// Whether normalisation would leave `path` unchanged, so both readings are the path
/// itself: only bytes that decode to themselves (no `%`, `\`, `;` or control
/// characters), no empty segment but a trailing one, no `.` or `..` segment.
fn is_already_normal(path: &str) -> bool {
    // One pass over the bytes (this runs on every request: no iterator adaptors).
    let bytes = path.as_bytes();
    let mut segment_start = 1;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        if matches!(b, b'%' | b'\\' | b';') || b.is_ascii_control() {
            return false;
        }
        if b == b'/' {
            if is_dot_or_empty(&bytes[segment_start..i]) {
                return false;
            }
            segment_start = i + 1;
        }
    }
    // The last segment may be empty (a trailing slash), not a dot-segment.
    !matches!(&bytes[segment_start.min(bytes.len())..], b"." | b"..")
}

fn is_dot_or_empty(segment: &[u8]) -> bool {
    matches!(segment, b"" | b"." | b"..")
}

/// The two readings of a decoded (but not yet resolved) path.
struct Decoded {
    split: String,
    literal: String,
}

/// Step 3 of the module docs: decode once, building both readings.
fn decode(path: &str) -> Result<Decoded, PathError> {
    let bytes = path.as_bytes();
    let mut split = Vec::with_capacity(bytes.len());
    let mut literal = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'%' => {
                let (Some(high), Some(low)) =
                    (hex_digit(bytes.get(i + 1)), hex_digit(bytes.get(i + 2)))
                else {
                    return Err(PathError::Malformed("invalid percent-encoding"));
                };
                let value = high << 4 | low;
                match value {
                    0 => return Err(PathError::Malformed("`%00` (a NUL byte)")),
                    b'/' | b'\\' => {
                        split.push(b'/');
                        literal.extend_from_slice(if value == b'/' { b"%2F" } else { b"%5C" });
                    }
                    _ if is_unreserved(value) => {
                        split.push(value);
                        literal.push(value);
                    }
                    _ => {
                        let escape = [
                            b'%',
                            HEX_UPPER[usize::from(high)],
                            HEX_UPPER[usize::from(low)],
                        ];
                        split.extend_from_slice(&escape);
                        literal.extend_from_slice(&escape);
                    }
                }
                i += 3;
            }
            b'\\' => {
                split.push(b'/');
                literal.push(b'\\');
                i += 1;
            }
            _ if byte.is_ascii_control() => {
                return Err(PathError::Malformed("a control character"));
            }
            _ => {
                split.push(byte);
                literal.push(byte);
                i += 1;
            }
        }
    }
    // Only ASCII bytes were decoded and the rest copied whole, so both stay UTF-8.
    match (String::from_utf8(split), String::from_utf8(literal)) {
        (Ok(split), Ok(literal)) => Ok(Decoded { split, literal }),
        _ => Err(PathError::Malformed("not UTF-8")),
    }
}

const HEX_UPPER: [u8; 16] = *b"0123456789ABCDEF";

fn hex_digit(byte: Option<&u8>) -> Option<u8> {
    let digit = char::from(*byte?).to_digit(16)?;
    u8::try_from(digit).ok()
}

/// RFC 3986 unreserved characters.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// The segments of an absolute path (the text after each `/`).
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').skip(1)
}

/// A segment without its `;parameters` (also written `%3B`), as Tomcat reads it.
fn base(segment: &str) -> &str {
    let base = segment.split(';').next().unwrap_or(segment);
    base.split("%3B").next().unwrap_or(base)
}

/// `.` or `..`, possibly followed by `;parameters`.
fn is_dot_like(segment: &str) -> bool {
    matches!(base(segment), "." | "..")
}

/// Whether every reading of a path with dot-segments resolves it the same way: no
/// separator other than a literal `/`; no empty segment before the last (`//`, or
/// `/;x/`, which is empty once `;x` is stripped), since servers differ on whether
/// `..` then removes it; and each dot-segment written literally as `.` or `..`.
fn is_plain(raw: &str, decoded: &Decoded) -> bool {
    if decoded.split != decoded.literal {
        return false;
    }
    let decoded: Vec<&str> = segments(&decoded.split).collect();
    let inner = decoded.len().saturating_sub(1);
    if decoded
        .iter()
        .take(inner)
        .any(|segment| base(segment).is_empty())
    {
        return false;
    }
    // With no encoded separators, raw and decoded segments correspond one to one.
    segments(raw)
        .zip(decoded)
        .all(|(raw, decoded)| !is_dot_like(decoded) || raw == "." || raw == "..")
}

/// Steps 4 and 5 of the module docs: collapse `//` and remove dot-segments.
fn resolve(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = segments(path).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "" | "." => trailing_slash = last,
            ".." => {
                kept.pop();
                trailing_slash = last;
            }
            _ => {
                kept.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> String {
        NormalPath::parse(path).unwrap().split.into_owned()
    }

    fn literal(path: &str) -> String {
        NormalPath::parse(path).unwrap().literal.into_owned()
    }

    #[test]
    fn fast_path_agrees_with_full_normalisation() {
        for path in [
            "/",
            "/a",
            "/a/",
            "/a/b/c",
            "/repos/acme/x.y/..z/.a",
            "/a-b_c~d/e",
        ] {
            assert!(is_already_normal(path), "{path}");
            let decoded = decode(path).unwrap();
            assert_eq!(resolve(&decoded.split), path);
            assert_eq!(resolve(&decoded.literal), path);
        }
        for path in [
            "//a", "/a//b", "/a/./b", "/a/../b", "/a/..", "/a/.", "/%61", "/a;b", "/a\\b",
        ] {
            assert!(!is_already_normal(path), "{path}");
        }
    }

    #[test]
    fn plain_paths_are_unchanged() {
        assert_eq!(norm("/"), "/");
        assert_eq!(norm("/repos/acme/"), "/repos/acme/");
        assert_eq!(norm("/repos/acme/x"), "/repos/acme/x");
    }

    #[test]
    fn query_and_fragment_are_cut() {
        assert_eq!(norm("/a/b?x=/c/../d"), "/a/b");
        assert_eq!(norm("/a/b#frag"), "/a/b");
        assert_eq!(without_query("/a?b#c"), "/a");
    }

    #[test]
    fn dot_segments_resolve() {
        assert_eq!(norm("/a/b/../c"), "/a/c");
        assert_eq!(norm("/a/./b/."), "/a/b/");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/../../a"), "/a");
        assert_eq!(norm("/.."), "/");
    }

    #[test]
    fn slashes_collapse() {
        assert_eq!(norm("//a///b//"), "/a/b/");
        assert_eq!(literal("//a///b//"), "/a/b/");
    }

    #[test]
    fn unreserved_escapes_decode_and_others_upper_case() {
        assert_eq!(norm("/%61%7e%2e%5F/a%20b/%c3%a9"), "/a~._/a%20b/%C3%A9");
    }

    #[test]
    fn encoded_separators_split_in_one_reading_only() {
        assert_eq!(norm("/a%2fb%5Cc\\d"), "/a/b/c/d");
        assert_eq!(literal("/a%2fb%5Cc\\d"), "/a%2Fb%5Cc\\d");
    }

    #[test]
    fn decoding_happens_once() {
        assert_eq!(norm("/a%252Fb"), "/a%252Fb");
        assert_eq!(norm("/a%252e%252e/b"), "/a%252e%252e/b");
    }

    #[test]
    fn malformed_paths_are_rejected() {
        for bad in [
            "/a%zz", "/a%4", "/a%", "/a%00b", "/a\u{0}b", "/a\tb", "/a%g0",
        ] {
            assert!(
                matches!(NormalPath::parse(bad), Err(PathError::Malformed(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn relative_paths_are_rejected() {
        for bad in ["", "a/b", "*", "?/a", "http://x/a"] {
            assert_eq!(
                NormalPath::parse(bad),
                Err(PathError::NotAbsolute),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ambiguous_dot_segments_are_rejected() {
        for bad in [
            "/a/..%2F..%2Fb",
            "/a/%2e%2e/b",
            "/a/.%2E/b",
            "/a/%2e/b",
            "//a/../b",
            "/a//../b",
            "/a\\..\\b",
            "/a/..;/b",
            "/a/..;x/b",
            "/a/.;x/b",
            "/a/..%3bx/b",
            "/b/x%2F..%2F../a/",
            "/a%2F..%2Fb/..;x/../a/",
        ] {
            assert_eq!(NormalPath::parse(bad), Err(PathError::Ambiguous), "{bad:?}");
        }
    }

    #[test]
    fn semicolons_elsewhere_are_ordinary() {
        assert_eq!(norm("/a;v=1/b..;/c.;"), "/a;v=1/b..;/c.;");
    }

    #[test]
    fn prefix_needs_both_readings() {
        let entry = NormalPath::parse("/repos/acme/").unwrap();
        let inside = NormalPath::parse("/repos/acme/git/refs/heads/feature%2Fx").unwrap();
        let smuggled = NormalPath::parse("/repos%2Facme/x").unwrap();
        assert!(inside.starts_with(&entry));
        assert!(!smuggled.starts_with(&entry));
    }
}
