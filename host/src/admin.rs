//! The admin listener: read-only status for operators and orchestrators. It exposes
//! nothing that could weaken the policy or leak a secret (secret *names* only).
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when a policy generation is loaded and the proxy listener is
//!   accepting; 503 otherwise (before start, and while draining at shutdown).
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text), see [`crate::metrics`].
//! - `GET /policy`: JSON: module and routes sha256, generation number, load time,
//!   declared secret names, reload counts and the last reload error, the enforcement
//!   mode, and the shadow generation (if any) with its disagreements since it loaded.
//!
//! Anything else is 404; methods other than GET/HEAD are 405.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::proxy::{Proxy, ProxyBody};
use crate::reload::ReloadStatus;

/// Default admin listen address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The proxy (readiness).
    pub proxy: Arc<Proxy>,
    /// The reloader's status (policy identity, reload counts).
    pub reload: Arc<ReloadStatus>,
    /// What `/metrics` encodes.
    pub registry: Arc<prometheus_client::registry::Registry>,
}

impl Admin {
    /// Serve until `shutdown` resolves.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let tasks = TaskTracker::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(%err, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let admin = self.clone();
            tasks.spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.respond(&req)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .http1_only()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        tasks.close();
    }

    /// Answer one admin request.
    pub fn respond(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "read-only: GET or HEAD\n");
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.proxy.is_accepting() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not accepting connections\n",
                    )
                }
            }
            "/policy" => self.policy(),
            "/metrics" => {
                let mut response =
                    Response::new(ProxyBody::full(crate::metrics::encode(&self.registry)));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: /healthz, /readyz, /policy, /metrics\n",
            ),
        }
    }

    fn policy(&self) -> Response<ProxyBody> {
        let loaded = self.reload.current();
        let body = json!({
            "module_sha256": loaded.module_sha256,
            "routes_sha256": loaded.routes_sha256,
            "generation": self.reload.generation.load(Ordering::Relaxed),
            "loaded_at": loaded.loaded_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            "secrets": loaded.secrets,
            "reloads": {
                "succeeded": self.reload.succeeded.load(Ordering::Relaxed),
                "failed": self.reload.failed.load(Ordering::Relaxed),
            },
            "last_reload_error": self.reload.last_error(),
            "enforcement": self.proxy.enforcement().as_str(),
            "shadow": self.proxy.shadow().map(|shadow| shadow_json(shadow)),
        });
        let mut response = Response::new(ProxyBody::full(format!("{body}\n")));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// The shadow generation in `/policy`: its identity, reloads and what it found.
fn shadow_json(shadow: &crate::proxy::Shadow) -> serde_json::Value {
    let loaded = shadow.reload.current();
    let (generation, since) = shadow.stats.since_loaded();
    let current = shadow.reload.generation.load(Ordering::Relaxed);
    let since: Vec<serde_json::Value> = if generation == current {
        since
            .into_iter()
            .map(
                |((live, shadow), count)| json!({ "live": live, "shadow": shadow, "count": count }),
            )
            .collect()
    } else {
        Vec::new()
    };
    json!({
        "module_sha256": loaded.module_sha256,
        "routes_sha256": loaded.routes_sha256,
        "generation": current,
        "loaded_at": loaded.loaded_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        "reloads": {
            "succeeded": shadow.reload.succeeded.load(Ordering::Relaxed),
            "failed": shadow.reload.failed.load(Ordering::Relaxed),
        },
        "last_reload_error": shadow.reload.last_error(),
        "disagreements_since_loaded": since,
        "decided": shadow.stats.decided.load(Ordering::Relaxed),
        "dropped": shadow.stats.dropped.load(Ordering::Relaxed),
        "faults": shadow.stats.faults.load(Ordering::Relaxed),
        "incomplete": shadow.stats.incomplete.load(Ordering::Relaxed),
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
