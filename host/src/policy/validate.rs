//! Validation of what a guest returns, against what it declared: header names must be
//! valid tokens and not hop-by-hop, `host` or framing headers; literal text must be a
//! valid header value; secret references must name a secret the policy declared in
//! `configure`; annotations and deny response headers stay within their bounds.

use std::collections::BTreeSet;

use http::{HeaderName, HeaderValue};

use super::verdict::{
    Annotation, DEFAULT_DENY_STATUS, InjectedHeader, MAX_ANNOTATION_KEY, MAX_ANNOTATION_VALUE,
    MAX_ANNOTATIONS, MAX_RESPONSE_HEADERS, MAX_TEXT, Part, Template,
};

/// Headers a policy may never set: connection-level (hop-by-hop) headers, framing, the
/// host, and proxy credentials.
const FORBIDDEN_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Validation of what a guest returned, against what it declared.
pub(crate) struct Validator<'a> {
    pub(crate) declared: &'a BTreeSet<String>,
}

impl Validator<'_> {
    pub(crate) fn status(status: u16) -> u16 {
        if (400..=599).contains(&status) {
            status
        } else {
            DEFAULT_DENY_STATUS
        }
    }

    /// Control characters become spaces; the text is cut to [`MAX_TEXT`] bytes.
    /// Clean text (the usual case) is returned as is, without copying.
    pub(crate) fn owned_text(text: String) -> String {
        if text.len() <= MAX_TEXT && !text.chars().any(char::is_control) {
            return text;
        }
        Self::text(&text)
    }

    /// Control characters become spaces; the text is cut to [`MAX_TEXT`] bytes.
    pub(crate) fn text(text: &str) -> String {
        Self::cut(text, MAX_TEXT)
    }

    pub(crate) fn header(&self, name: &str, value: Vec<Part>) -> Result<InjectedHeader, String> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{}` is not a valid header name", Self::text(name)))?;
        if FORBIDDEN_HEADERS.contains(&name.as_str()) {
            return Err(format!("the policy may not set the `{name}` header"));
        }
        for part in &value {
            match part {
                Part::Literal(text) => {
                    if !is_header_value_text(text) {
                        return Err(format!(
                            "header `{name}` has text that is not a valid header value"
                        ));
                    }
                }
                Part::Secret(secret) => {
                    if !self.declared.contains(secret) {
                        return Err(format!(
                            "header `{name}` references secret `{}` that the policy did not declare in configure",
                            Self::text(secret)
                        ));
                    }
                }
            }
        }
        Ok(InjectedHeader {
            name,
            value: Template::from_parts(value),
        })
    }
}

impl Validator<'_> {
    /// Check a verdict's annotations against the bounds; values are cleaned and cut.
    pub(crate) fn annotations(
        raw: impl ExactSizeIterator<Item = (String, String)>,
    ) -> Result<Vec<Annotation>, String> {
        if raw.len() > MAX_ANNOTATIONS {
            return Err(format!(
                "{} annotations (at most {MAX_ANNOTATIONS})",
                raw.len()
            ));
        }
        let mut out = Vec::with_capacity(raw.len());
        for (key, value) in raw {
            let valid_key = !key.is_empty()
                && key.len() <= MAX_ANNOTATION_KEY
                && key.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
                });
            if !valid_key {
                return Err(format!(
                    "annotation key `{}` is not 1-{MAX_ANNOTATION_KEY} characters of a-z, 0-9, `_`, `.`, `-`",
                    Self::text(&key)
                ));
            }
            out.push(Annotation {
                key,
                value: Self::cut(&value, MAX_ANNOTATION_VALUE),
            });
        }
        Ok(out)
    }

    /// Check a denial's response headers: valid names and values, none of the
    /// headers the host writes itself or that frame the response.
    pub(crate) fn response_headers(
        raw: impl ExactSizeIterator<Item = (String, String)>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        if raw.len() > MAX_RESPONSE_HEADERS {
            return Err(format!(
                "{} deny response headers (at most {MAX_RESPONSE_HEADERS})",
                raw.len()
            ));
        }
        let mut out = Vec::with_capacity(raw.len());
        for (name, value) in raw {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{}` is not a valid header name", Self::text(&name)))?;
            if FORBIDDEN_HEADERS.contains(&name.as_str())
                || OWN_RESPONSE_HEADERS.contains(&name.as_str())
                || name.as_str().starts_with("x-egress-proxy-")
            {
                return Err(format!(
                    "the policy may not set the `{name}` header on a deny response"
                ));
            }
            let value = HeaderValue::from_str(&value)
                .ok()
                .filter(|_| is_header_value_text(&value))
                .ok_or_else(|| {
                    format!("deny response header `{name}` has a value that is not valid")
                })?;
            out.push((name, value));
        }
        Ok(out)
    }

    /// Control characters become spaces; the text is cut to `max` bytes.
    fn cut(text: &str, max: usize) -> String {
        let mut out = String::with_capacity(text.len().min(max));
        for c in text.chars() {
            let c = if c.is_control() { ' ' } else { c };
            if out.len() + c.len_utf8() > max {
                break;
            }
            out.push(c);
        }
        out
    }
}

/// Headers of a deny response the host writes itself.
const OWN_RESPONSE_HEADERS: &[&str] = &["content-type", "cache-control", "set-cookie"];

/// What `HeaderValue` accepts: visible ASCII, space, tab and obs-text (0x80-0xFF);
/// no other control characters (so no CR, LF or NUL).
fn is_header_value_text(text: &str) -> bool {
    text.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_value_text() {
        assert!(is_header_value_text("Bearer abc\t\u{e9}"));
        assert!(!is_header_value_text("a\r\nb"));
        assert!(!is_header_value_text("a\u{0}"));
        assert!(!is_header_value_text("a\u{7f}"));
    }

    #[test]
    fn text_strips_control_characters_and_caps_length() {
        assert_eq!(Validator::text("a\r\nb"), "a  b");
        assert_eq!(Validator::text(&"x".repeat(5000)).len(), MAX_TEXT);
    }

    #[test]
    fn status_outside_4xx_5xx_becomes_403() {
        assert_eq!(Validator::status(200), 403);
        assert_eq!(Validator::status(302), 403);
        assert_eq!(Validator::status(451), 451);
    }
}
