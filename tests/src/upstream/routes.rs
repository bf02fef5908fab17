//! The upstream's endpoints: one function per route, dispatched by path.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{Seen, Shared};

/// Every response body the upstream sends.
pub(super) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// `/sse` sends this many events when `events` is not given.
const DEFAULT_SSE_EVENTS: u32 = 3;
/// `/bytes` sends its body in chunks of this size.
const BYTES_CHUNK: usize = 64 * 1024;
/// `/bytes` byte `i` is `(i % BYTES_PERIOD) as u8`.
pub const BYTES_PERIOD: u64 = 251;

/// Records `req`, then answers it.
pub(super) async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    let seen = Seen::of(&req);
    if shared.record_requests {
        shared.record(seen.clone());
    }

    let path = req.uri().path();
    if path == "/echo" || path.starts_with("/echo/") {
        return echo(req, seen).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return status(code);
    }
    if let Some(rest) = path.strip_prefix("/smart/") {
        let path_info = format!("/{rest}");
        return smart_git(req, shared.files_root.clone(), path_info).await;
    }
    if path.starts_with("/git/") {
        return git_file(&req, shared.files_root.as_deref());
    }
    match path {
        "/sse" => sse(&req, &shared),
        "/ws" => websocket(req, &shared),
        "/bytes" => bytes(&req),
        "/redirect" => redirect(&req),
        // A stand-in for a package index (the README's quick start fetches one).
        "/simple/" => with_headers(
            StatusCode::OK,
            &[(header::CONTENT_TYPE, HeaderValue::from_static("text/html"))],
            Full::new(Bytes::from_static(
                b"<html><body>simple index</body></html>\n",
            ))
            .boxed_unsync(),
        ),
        _ => empty(StatusCode::NOT_FOUND),
    }
}

/// `/echo`: the request as JSON, with the body's length.
async fn echo(req: Request<Incoming>, seen: Seen) -> Response<Body> {
    use sha2::Digest as _;
    let mut body = req.into_body();
    let mut body_bytes: u64 = 0;
    let mut digest = sha2::Sha256::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return empty(StatusCode::BAD_REQUEST);
        };
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len() as u64;
            digest.update(data);
        }
    }
    let body_sha256: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let json = serde_json::json!({
        "method": seen.method,
        "path": seen.path,
        "version": format!("{:?}", seen.version),
        "headers": seen.headers,
        "body_bytes": body_bytes,
        "body_sha256": body_sha256,
    });
    with_headers(
        StatusCode::OK,
        &[(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        full(json.to_string()),
    )
}

/// `/sse?events=N`: event 0 at once, each further event after one permit of the gate.
fn sse(req: &Request<Incoming>, shared: &Arc<Shared>) -> Response<Body> {
    let events = match query_param(req.uri().query(), "events") {
        None => DEFAULT_SSE_EVENTS,
        Some(n) => match n.parse() {
            Ok(n) => n,
            Err(_) => return empty(StatusCode::BAD_REQUEST),
        },
    };
    let shared = Arc::clone(shared);
    let events = stream::unfold(0_u32, move |i| {
        let shared = Arc::clone(&shared);
        async move {
            if i >= events {
                return None;
            }
            if i > 0 {
                // Closed only when the upstream shuts down: end the stream then.
                shared.sse_gate.acquire().await.ok()?.forget();
            }
            let event = Bytes::from(format!("data: event {i}\n\n"));
            Some((Ok(Frame::data(event)), i + 1))
        }
    });
    with_headers(
        StatusCode::OK,
        &[
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        StreamBody::new(events).boxed_unsync(),
    )
}

/// `/ws`: a WebSocket echo over an HTTP/1.1 Upgrade.
fn websocket(mut req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let wants_websocket = req
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("websocket"));
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY);
    let (true, Some(key), Version::HTTP_11) = (wants_websocket, key, req.version()) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };

    let upgrade = hyper::upgrade::on(&mut req);
    shared.tasks.spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // Reading also sends tungstenite's queued replies (pong, and close once the
        // client closes), so keep reading until the stream ends.
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
        // End TLS with close_notify rather than a bare EOF; the peer may be gone.
        let _ = ws.into_inner().shutdown().await;
    });

    with_headers(
        StatusCode::SWITCHING_PROTOCOLS,
        &[
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
        Empty::new().boxed_unsync(),
    )
}

/// `/bytes?n=N`: exactly N pattern bytes, streamed.
fn bytes(req: &Request<Incoming>) -> Response<Body> {
    let Some(total) = query_param(req.uri().query(), "n").and_then(|n| n.parse::<u64>().ok())
    else {
        return empty(StatusCode::BAD_REQUEST);
    };
    // One chunk (or the whole body, if smaller) plus one period of the pattern: every
    // chunk is a zero-copy slice.
    let pattern: Bytes = (0..total.min(BYTES_CHUNK as u64) + BYTES_PERIOD)
        .map(|i| (i % BYTES_PERIOD) as u8)
        .collect();
    let chunks = stream::unfold(0_u64, move |offset| {
        let pattern = pattern.clone();
        async move {
            let left = total.checked_sub(offset).filter(|left| *left > 0)?;
            let len = usize::try_from(left).map_or(BYTES_CHUNK, |left| left.min(BYTES_CHUNK));
            let start = (offset % BYTES_PERIOD) as usize;
            let chunk = pattern.slice(start..start + len);
            Some((Ok(Frame::data(chunk)), offset + len as u64))
        }
    });
    with_headers(
        StatusCode::OK,
        &[
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(total)),
        ],
        StreamBody::new(chunks).boxed_unsync(),
    )
}

/// `/status/CODE`: an empty response with that status.
fn status(code: &str) -> Response<Body> {
    match code.parse::<u16>().map(StatusCode::from_u16) {
        Ok(Ok(status)) => empty(status),
        _ => empty(StatusCode::BAD_REQUEST),
    }
}

/// `/redirect?to=URL`: 302 to URL.
fn redirect(req: &Request<Incoming>) -> Response<Body> {
    let Some(Ok(location)) =
        query_param(req.uri().query(), "to").map(|to| HeaderValue::from_str(&to))
    else {
        return empty(StatusCode::BAD_REQUEST);
    };
    with_headers(
        StatusCode::FOUND,
        &[(header::LOCATION, location)],
        Empty::new().boxed_unsync(),
    )
}

/// `/smart/<rest>`: git's smart HTTP protocol for the repositories under
/// [`super::UpstreamOptions::files_root`], answered by `git http-backend`.
async fn smart_git(
    req: Request<Incoming>,
    files_root: Option<std::path::PathBuf>,
    path_info: String,
) -> Response<Body> {
    let Some(root) = files_root else {
        return empty(StatusCode::NOT_FOUND);
    };
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let body = body.to_bytes();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let method = parts.method.as_str().to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        super::git::http_backend(&root, &path_info, &query, &method, &parts.headers, &body)
    })
    .await;
    let Ok((status, headers, body)) = answer else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// `/git/<rest>`: the file `files_root/<rest>`, for git's dumb HTTP protocol.
fn git_file(req: &Request<Incoming>, files_root: Option<&Path>) -> Response<Body> {
    let Some(root) = files_root else {
        return empty(StatusCode::NOT_FOUND);
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return empty(StatusCode::METHOD_NOT_ALLOWED);
    }
    let rest = req.uri().path().trim_start_matches("/git/");
    let mut file = root.to_path_buf();
    for raw in rest.split('/') {
        let Some(segment) = percent_decode(raw) else {
            return empty(StatusCode::BAD_REQUEST);
        };
        if segment == ".." || segment.contains(['/', '\\', '\0']) {
            return empty(StatusCode::BAD_REQUEST);
        }
        if !segment.is_empty() && segment != "." {
            file.push(segment);
        }
    }
    // The files are small fixtures; reading them inline keeps every task owned.
    let Ok(content) = std::fs::read(&file) else {
        return empty(StatusCode::NOT_FOUND);
    };
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        ),
        (header::CONTENT_LENGTH, HeaderValue::from(content.len())),
    ];
    let body = if req.method() == Method::HEAD {
        Empty::new().boxed_unsync()
    } else {
        full(content)
    };
    with_headers(StatusCode::OK, &headers, body)
}

/// The percent-decoded value of the first `name=` parameter in `query`.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == name {
            percent_decode(value)
        } else {
            None
        }
    })
}

/// `%XX` escapes decoded; `None` if the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn full(content: impl Into<Bytes>) -> Body {
    Full::new(content.into()).boxed_unsync()
}

fn empty(status: StatusCode) -> Response<Body> {
    with_headers(status, &[], Empty::new().boxed_unsync())
}

fn with_headers(
    status: StatusCode,
    headers: &[(HeaderName, HeaderValue)],
    body: Body,
) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let query = Some("a=1&to=https%3A%2F%2Fexample.com%2Fx&n");
        assert_eq!(query_param(query, "a").as_deref(), Some("1"));
        assert_eq!(
            query_param(query, "to").as_deref(),
            Some("https://example.com/x")
        );
        assert_eq!(query_param(query, "n").as_deref(), Some(""));
        assert_eq!(query_param(query, "missing"), None);
        assert_eq!(percent_decode("%2e%2E").as_deref(), Some(".."));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
    }
}
