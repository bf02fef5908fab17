//! The transparent plain-HTTP path: an HTTP/1.x request line, then each request
//! named by its `Host` on the original port and sent down the one pipeline.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::{Redirected, Refused, refused};
use crate::policy::Scheme;
use crate::proxy::body::ProxyBody;
use crate::proxy::framing::{Ambiguity, FramingWatch};
use crate::proxy::idle::Idle;
use crate::proxy::pipeline::{self, Exchange};
use crate::proxy::prefixed::Prefixed;
use crate::proxy::respond::Refusal;
use crate::proxy::{Proxy, server};
use crate::target::Target;

/// How much of a plain connection is read looking for an HTTP/1.x request line.
const MAX_REQUEST_LINE: usize = 8 * 1024;
/// The plain path: an HTTP/1.x request line, or a refusal.
pub(super) async fn serve(
    proxy: &Arc<Proxy>,
    mut io: Idle<TcpStream>,
    first: u8,
    redirected: Redirected,
) {
    let mut head = vec![first];
    let deadline = tokio::time::Instant::now() + proxy.config.handshake_timeout;
    let mut chunk = [0u8; 1024];
    while !head.contains(&b'\n') && head.len() < MAX_REQUEST_LINE {
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => head.extend_from_slice(&chunk[..n]),
        }
    }
    if !is_request_line(&head) {
        let shown: String = String::from_utf8_lossy(&head[..head.len().min(32)])
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '.'
                }
            })
            .collect();
        let reason = format!("neither TLS nor an HTTP/1.x request (first bytes: `{shown}`)");
        return refused(proxy, redirected, Refused::NotTlsOrHttp, &reason);
    }
    let limits = &proxy.config.limits;
    let (io, ambiguity) = FramingWatch::new(
        Prefixed::new(head, io),
        limits.max_header_bytes,
        limits.max_headers,
    );
    let service_proxy = proxy.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let proxy = service_proxy.clone();
        let ambiguity = ambiguity.clone();
        async move { Ok::<_, Infallible>(plain_request(&proxy, req, redirected, &ambiguity).await) }
    });
    server::serve_http1(proxy, TokioIo::new(io), service).await;
}

/// Whether `head` starts with a complete HTTP/1.x request line (checked by httparse,
/// the parser hyper uses).
fn is_request_line(head: &[u8]) -> bool {
    let Some(end) = head.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let mut probe = head[..=end].to_vec();
    probe.extend_from_slice(b"\r\n");
    let mut no_headers = [];
    matches!(
        httparse::Request::new(&mut no_headers).parse(&probe),
        Ok(httparse::Status::Complete(_))
    )
}

/// One plain-HTTP request on a redirected connection: `Host` names the target, the
/// original destination gives the port.
async fn plain_request(
    proxy: &Arc<Proxy>,
    req: Request<Incoming>,
    redirected: Redirected,
    ambiguity: &Ambiguity,
) -> Response<ProxyBody> {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let mut exchange = Exchange {
        start: Instant::now(),
        client: redirected.client,
        target: Target {
            scheme: Scheme::Http,
            host: "-".to_owned(),
            port: redirected.original.port(),
            path: path.clone(),
        },
        metrics: proxy.metrics.clone(),
        original: Some(redirected.original),
    };
    if ambiguity.seen() {
        return pipeline::refuse(
            exchange.record(req.method().as_str()),
            &Refusal::AmbiguousFraming,
        );
    }
    exchange.target = match host_target(&req, redirected.original.port(), &path) {
        Ok(target) => target,
        Err(refusal) => return pipeline::refuse(exchange.record(req.method().as_str()), &refusal),
    };
    pipeline::forward(proxy, req, exchange).await
}

/// The target a redirected plain request names: its `Host` (required), on `port`
/// (a port in `Host` must be that one). An absolute-form URI must agree with it.
fn host_target(req: &Request<Incoming>, port: u16, path: &str) -> Result<Target, Refusal> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .ok_or_else(|| {
            Refusal::BadRequest(
                "a redirected plain-HTTP request needs a Host header: it is the only thing that names where it is going".into(),
            )
        })?
        .to_str()
        .map_err(|_| Refusal::BadRequest("the Host header is not valid text".into()))?;
    let authority: http::uri::Authority = host
        .parse()
        .map_err(|_| Refusal::BadRequest(format!("the Host header `{host}` is not host[:port]")))?;
    if authority.as_str().contains('@') {
        return Err(Refusal::BadRequest(format!(
            "the Host header `{host}` carries user information"
        )));
    }
    if let Some(named) = authority.port_u16()
        && named != port
    {
        return Err(Refusal::Misdirected(format!(
            "the Host header names port {named}, but the connection was made to port {port}"
        )));
    }
    let mut target = Target::from_url(&format!("http://{}{path}", authority.host()))?;
    target.port = port;
    if let Some(uri_authority) = req.uri().authority()
        && !target.same_authority(uri_authority.as_str())
    {
        return Err(Refusal::Misdirected(format!(
            "the request URI names `{uri_authority}`, but its Host header `{host}`"
        )));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_told_from_other_protocols() {
        assert!(is_request_line(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(is_request_line(b"POST /x?y HTTP/1.0\r\n"));
        assert!(is_request_line(b"GET / HTTP/1.1\n"));
        assert!(!is_request_line(b"SSH-2.0-OpenSSH_9.6\r\n"));
        assert!(!is_request_line(b"PRI * HTTP/2.0\r\n"));
        assert!(!is_request_line(b"GET / HTTP/1.1"));
        assert!(!is_request_line(b"\x00\x01\x02\n"));
        assert!(!is_request_line(b"EHLO mail.example\r\n"));
    }
}
