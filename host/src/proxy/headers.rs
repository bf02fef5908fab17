//! Header hygiene, the same for every request and response the proxy forwards.
//!
//! Removed from every forwarded request: the agent's credentials (`Authorization`,
//! `Proxy-Authorization`), the hop-by-hop headers of RFC 9110 §7.6.1 (`Connection`
//! and every header it names, `Keep-Alive`, `Proxy-Connection`, `TE` other than
//! `trailers`, `Transfer-Encoding`, `Upgrade`, `Trailer`) and `Host` (the upstream
//! client writes it from the target). An upgrade the policy allowed keeps
//! `Connection: upgrade` and its `Upgrade` header. Responses lose the same hop-by-hop
//! headers unless they are a `101 Switching Protocols`.

use http::HeaderMap;
use http::header::{
    AUTHORIZATION, CONNECTION, HOST, HeaderName, HeaderValue, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

const KEEP_ALIVE: &str = "keep-alive";
const PROXY_CONNECTION: &str = "proxy-connection";

/// Whether a request asks for a protocol upgrade (e.g. WebSocket): `Connection`
/// lists `upgrade` and an `Upgrade` header is present.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade")
}

/// The lower-case tokens listed in `Connection` headers.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Whether `name` is removed from every forwarded message (hop-by-hop, RFC 9110
/// §7.6.1, `TE` included: a request's `TE: trailers` is put back by the caller).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == CONNECTION
        || *name == TRANSFER_ENCODING
        || *name == UPGRADE
        || *name == TRAILER
        || *name == TE
        || name.as_str() == KEEP_ALIVE
        || name.as_str() == PROXY_CONNECTION
}

/// Remove hop-by-hop headers (and those `Connection` names), `TE`, and with
/// `credentials` also `Authorization`, `Proxy-Authorization` and `Host`, in place.
/// One pass over the names present finds what to remove (usually nothing beyond
/// `Host`), rather than a lookup per listed name.
fn strip(headers: &mut HeaderMap, credentials: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let credential = *name == AUTHORIZATION || *name == PROXY_AUTHORIZATION || *name == HOST;
        if is_hop_by_hop(name) || (credentials && credential) {
            doomed.push(name.clone());
        }
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<String> = connection_tokens(headers).collect();
        for name in named {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                doomed.push(name);
            }
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Prepare a request's headers for the upstream: credentials, hop-by-hop headers and
/// `Host` removed; for an allowed upgrade, `Connection: upgrade` + `Upgrade` kept.
pub fn sanitize_request(headers: &mut HeaderMap, upgrade: bool) {
    let upgrade_value = if upgrade {
        headers.get(UPGRADE).cloned()
    } else {
        None
    };
    let te_trailers = headers
        .get_all(TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip(headers, true);
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(value) = upgrade_value {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, value);
    }
}

/// Prepare a response's headers for the client (a 101 keeps its upgrade headers).
pub fn sanitize_response(headers: &mut HeaderMap, switching_protocols: bool) {
    if !switching_protocols {
        strip(headers, false);
    }
}

/// Headers as the policy sees them: lower-case names and UTF-8 values. A value that
/// is not UTF-8 refuses the request (the policy could not see what would be sent).
pub fn for_policy(headers: &HeaderMap) -> Result<Vec<(String, String)>, String> {
    headers
        .iter()
        .map(|(name, value)| match value.to_str() {
            Ok(text) => Ok((name.as_str().to_owned(), text.to_owned())),
            Err(_) => std::str::from_utf8(value.as_bytes())
                .map(|text| (name.as_str().to_owned(), text.to_owned()))
                .map_err(|_| format!("the value of header `{name}` is not valid UTF-8")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn request_loses_credentials_and_hop_by_hop() {
        let mut headers = map(&[
            ("host", "a.example"),
            ("authorization", "Bearer agent"),
            ("proxy-authorization", "Basic x"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        sanitize_request(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["accept"]);
    }

    #[test]
    fn response_loses_hop_by_hop_only() {
        let mut headers = map(&[
            ("connection", "close, X-Hop"),
            ("x-hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("content-type", "text/plain"),
            ("www-authenticate", "Bearer"),
            ("authorization", "kept: a response header"),
        ]);
        sanitize_response(&mut headers, false);
        let mut names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "content-type", "www-authenticate"]);
        let mut switching = map(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        sanitize_response(&mut switching, true);
        assert_eq!(switching.len(), 2);
    }

    #[test]
    fn upgrade_and_te_trailers_survive_when_allowed() {
        let mut headers = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(&headers));
        sanitize_request(&mut headers, true);
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["te"], "trailers");
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn policy_headers_must_be_utf8() {
        let mut headers = map(&[("accept", "*/*")]);
        assert_eq!(
            for_policy(&headers).unwrap(),
            [("accept".to_owned(), "*/*".to_owned())]
        );
        headers.insert(
            "x-name",
            HeaderValue::from_bytes("café".as_bytes()).unwrap(),
        );
        assert_eq!(for_policy(&headers).unwrap()[1].1, "café");
        headers.insert("x-bad", HeaderValue::from_bytes(b"\xff").unwrap());
        assert!(for_policy(&headers).is_err());
    }
}
