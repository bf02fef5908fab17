//! The request pipeline, one place for every request the proxy forwards (plain HTTP
//! and inside intercepted tunnels alike): hide credentials from the policy, ask it,
//! then deny, or inject and forward, or forward; stream the response back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::uri::{self, Authority, PathAndQuery};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::Proxy;
use super::access::{AccessRecord, Outcome};
use super::body::ProxyBody;
use super::dialect::Dialect;
use super::forward_body::ForwardBody;
use super::headers;
use super::respond::Refusal;
use crate::policy::{self, Decision, Generation, Head};
use crate::target::Target;

/// Where a request is going and who sent it, as established by the caller (the plain
/// HTTP listener or a tunnel).
#[derive(Debug, Clone)]
pub(crate) struct Exchange {
    pub(crate) start: Instant,
    pub(crate) client: SocketAddr,
    pub(crate) target: Target,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Where a redirected (transparent) connection was dialled to; `None` for the
    /// explicit listener.
    pub(crate) original: Option<SocketAddr>,
}

impl Exchange {
    pub(crate) fn record(&self, method: &str) -> AccessRecord {
        let mut record = AccessRecord::new(
            self.start,
            self.client,
            method,
            self.target.scheme,
            &self.target.host,
            self.target.port,
            &self.target.path,
        );
        record.metrics = Some(self.metrics.clone());
        record.original = self.original;
        record
    }
}

/// A refusal, logged as an error line.
pub(crate) fn refuse(mut record: AccessRecord, refusal: &Refusal) -> Response<ProxyBody> {
    let response = refusal.response();
    record.outcome = Outcome::Error;
    record.status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.logged(record))
}

/// A request the policy allowed but the upstream failed: logged with the policy's
/// decision and the error status.
fn upstream_failed(mut record: AccessRecord, refusal: &Refusal) -> Response<ProxyBody> {
    let response = refusal.response();
    record.status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.logged(record))
}

/// A policy denial, logged as a deny line.
pub(crate) fn denied(
    mut record: AccessRecord,
    denial: &policy::Denial,
    generation: &Generation,
    dialect: &Dialect,
) -> Response<ProxyBody> {
    let response = dialect.deny(denial, generation.module().sha256());
    record.outcome = Outcome::Deny;
    record.rule = denial.rule.clone();
    record.annotations.clone_from(&denial.annotations);
    record.deny_kind = Some(denial.kind.as_str());
    record.status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.logged(record))
}

/// A generation's identity in the log: its number and its module's hash prefix.
pub(crate) fn generation_id(generation: &Generation) -> (u64, String) {
    (
        generation.number(),
        generation.module().sha256().chars().take(12).collect(),
    )
}

/// Refuse an IP-literal destination the address guard does not allow, before the
/// policy is asked (host names are checked when they are resolved).
pub(crate) fn check_destination(proxy: &Proxy, target: &Target) -> Result<(), Refusal> {
    match target.ip() {
        Some(ip) => proxy
            .config
            .upstream
            .guard
            .check(SocketAddr::new(ip, target.port))
            .map_err(|e| Refusal::Upstream(super::upstream::UpstreamError::Refused(e))),
        None => Ok(()),
    }
}

/// Decide and forward one request.
pub(crate) async fn forward(
    proxy: &Arc<Proxy>,
    mut req: Request<Incoming>,
    exchange: Exchange,
) -> Response<ProxyBody> {
    let mut record = exchange.record(req.method().as_str());
    let upgrade = headers::is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    if let Err(refusal) = check_destination(proxy, &exchange.target) {
        return refuse(record, &refusal);
    }

    let policy_headers = match headers::for_policy(req.headers()) {
        Ok(h) => h,
        Err(reason) => return refuse(record, &Refusal::BadRequest(reason)),
    };
    let request = policy::Request::new(
        req.method().as_str(),
        exchange.target.clone(),
        policy_headers,
        exchange.client,
    );
    let generation = proxy.generation();
    record.generation = Some(generation_id(&generation));
    let deciding = Instant::now();
    let head = generation.decide(&request);
    proxy.metrics.decided(deciding.elapsed());
    let (mut parts, body) = req.into_parts();
    let (decision, body, dialect, view) = match head {
        Head::Decided(decision) => (decision, ForwardBody::streamed(body), None, None),
        Head::NeedBody(need) => {
            match super::hold::decide(proxy, &generation, &request, need, body, upgrade).await {
                Ok(decided) => {
                    parts.headers.remove(http::header::EXPECT);
                    record.body_sha256 = Some(decided.body_sha256);
                    let view = proxy.shadow().is_some().then_some(decided.view);
                    (decided.decision, decided.body, decided.dialect, view)
                }
                Err(refusal) => return refuse(record, &Refusal::Body(refusal)),
            }
        }
    };
    // How a denial is phrased, worked out before the request goes to the shadow
    // (report mode may forward a denial, but never denies what was allowed).
    let dialect = match &decision {
        Decision::Deny(_) => dialect.unwrap_or_else(|| Dialect::of(&request, None)),
        _ => Dialect::Http,
    };
    record.shadow = super::shadow::ask(proxy.shadow(), request, &decision, view);
    let (decision, would_deny) = super::report::apply(proxy.config.enforcement, decision);
    let injected = match decision {
        Decision::Deny(denial) => {
            return denied(record, &denial, &generation, &dialect);
        }
        Decision::Allow { rule, annotations } => {
            record.outcome = Outcome::Allow;
            record.rule = rule;
            record.annotations = annotations;
            Vec::new()
        }
        Decision::Inject {
            headers,
            rule,
            annotations,
        } => {
            record.outcome = Outcome::Inject;
            record.rule = rule;
            record.annotations = annotations;
            headers
        }
    };
    super::report::mark(&mut record, would_deny);

    headers::sanitize_request(&mut parts.headers, upgrade);
    for (name, value) in injected {
        parts.headers.insert(name, value);
    }
    parts.uri = match upstream_uri(&exchange.target, &parts.uri) {
        Ok(uri) => uri,
        Err(reason) => return refuse(record, &Refusal::Internal(reason)),
    };
    parts.version = http::Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, body);

    let mut response = match proxy.upstream.send(upstream_req, upgrade).await {
        Ok(response) => response,
        Err(err) => {
            tracing::warn!(host = %exchange.target.host, port = exchange.target.port, %err, "upstream request failed");
            return upstream_failed(record, &Refusal::Upstream(err));
        }
    };
    let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        match client_upgrade {
            Some(client_upgrade) => {
                bridge(proxy, client_upgrade, hyper::upgrade::on(&mut response))
            }
            None => {
                return upstream_failed(
                    record,
                    &Refusal::Upstream(super::upstream::UpstreamError::Protocol(
                        "101 Switching Protocols to a request that did not ask to upgrade".into(),
                    )),
                );
            }
        }
    }
    record.status = response.status().as_u16();
    let (mut parts, body) = response.into_parts();
    headers::sanitize_response(&mut parts.headers, switching);
    parts.version = http::Version::default();
    Response::from_parts(parts, ProxyBody::upstream(body).logged(record))
}

/// The URI the upstream client is given: `scheme://host:port/path`. The explicit
/// port keeps a proxy tunnel on the right port; the client leaves a default port out
/// of `Host`. The path is the one the policy decided on; when normalisation left it as
/// `sent` had it, `sent`'s is reused rather than parsed again.
fn upstream_uri(target: &Target, sent: &Uri) -> Result<Uri, String> {
    let authority = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let authority = Authority::try_from(authority)
        .map_err(|e| format!("cannot build the upstream authority: {e}"))?;
    let path = if target.path.is_empty() {
        "/"
    } else {
        &target.path
    };
    let path_and_query = match sent.path_and_query() {
        Some(sent) if sent.as_str() == path => sent.clone(),
        _ => PathAndQuery::try_from(path)
            .map_err(|e| format!("cannot build the upstream path `{path}`: {e}"))?,
    };
    let mut parts = uri::Parts::default();
    parts.scheme = Some(match target.scheme {
        policy::Scheme::Http => uri::Scheme::HTTP,
        policy::Scheme::Https => uri::Scheme::HTTPS,
    });
    parts.authority = Some(authority);
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).map_err(|e| format!("cannot build the upstream URI: {e}"))
}

/// After a `101`, splice the client's and the upstream's upgraded connections.
fn bridge(proxy: &Arc<Proxy>, client: OnUpgrade, upstream: OnUpgrade) {
    let halt = proxy.halt.clone();
    proxy.tasks.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(%err, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                if let Err(err) = result {
                    tracing::debug!(%err, "upgraded connection ended");
                }
            }
            () = halt.cancelled() => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Scheme;

    #[test]
    fn upstream_uris_are_absolute_with_port() {
        let target = Target {
            scheme: Scheme::Https,
            host: "::1".into(),
            port: 8443,
            path: "/a?b=c".into(),
        };
        let sent: Uri = "/a?b=c".parse().unwrap();
        assert_eq!(
            upstream_uri(&target, &sent).unwrap(),
            "https://[::1]:8443/a?b=c"
        );
        let target = Target {
            scheme: Scheme::Http,
            host: "example.com".into(),
            port: 80,
            path: String::new(),
        };
        assert_eq!(
            upstream_uri(&target, &sent).unwrap(),
            "http://example.com:80/"
        );
        // The normalised path, not the one sent, goes upstream.
        let target = Target {
            scheme: Scheme::Https,
            host: "example.com".into(),
            port: 443,
            path: "/b?x".into(),
        };
        let sent: Uri = "http://example.com/a/../b?x".parse().unwrap();
        assert_eq!(
            upstream_uri(&target, &sent).unwrap(),
            "https://example.com:443/b?x"
        );
    }
}
