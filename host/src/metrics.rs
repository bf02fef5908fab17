//! Prometheus metrics, in the OpenMetrics text format (`prometheus-client`, the
//! Prometheus project's Rust client).
//!
//! The data plane records into [`Metrics`] (one per proxy): requests by decision and
//! status, request duration, `decide()` duration, open client connections. The rest
//! is read at scrape time ([`Status`]): policy traps and timeouts, reloads,
//! the serving generation, cached leaf certificates.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::policy::{PolicyStats, Runtime};
use crate::proxy::Proxy;
use crate::reload::ReloadStatus;

/// Labels of `egress_proxy_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    decision: &'static str,
    status: u16,
}

/// Labels of `egress_proxy_dns_queries_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    decision: &'static str,
}

/// Labels of `egress_proxy_transparent_refused_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

/// What the data plane records.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    dns_queries: Family<DnsLabels, Counter>,
    transparent_refused: Family<RefusedLabels, Counter>,
    request_duration: Histogram,
    decide_duration: Histogram,
    open_connections: Gauge,
    shed_connections: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            dns_queries: Family::default(),
            transparent_refused: Family::default(),
            // 100 µs .. ~105 s
            request_duration: Histogram::new(exponential_buckets(0.0001, 4.0, 11)),
            // 1 µs .. ~4 ms
            decide_duration: Histogram::new(exponential_buckets(0.000_001, 4.0, 7)),
            open_connections: Gauge::default(),
            shed_connections: Counter::default(),
        }
    }
}

impl Metrics {
    /// One finished request.
    pub fn request(&self, decision: &'static str, status: u16, duration: Duration) {
        self.requests
            .get_or_create(&RequestLabels { decision, status })
            .inc();
        self.request_duration.observe(duration.as_secs_f64());
    }

    /// One `decide()` call.
    pub fn decided(&self, duration: Duration) {
        self.decide_duration.observe(duration.as_secs_f64());
    }

    /// One DNS query answered, by decision (`answer`, `nxdomain`, `empty`, ...).
    pub fn dns_query(&self, decision: &'static str) {
        self.dns_queries
            .get_or_create(&DnsLabels { decision })
            .inc();
    }

    /// A redirected connection the transparent listener refused before any request
    /// (`no-sni`, `not-http`, `handshake`, ...).
    pub fn transparent_refused(&self, reason: &'static str) {
        self.transparent_refused
            .get_or_create(&RefusedLabels { reason })
            .inc();
    }

    /// A client connection refused because the proxy was at its connection limit.
    pub fn shed(&self) {
        self.shed_connections.inc();
    }

    /// A client connection opened; it counts until the guard is dropped.
    pub fn connection(self: &Arc<Self>) -> ConnectionGuard {
        self.open_connections.inc();
        ConnectionGuard(self.clone())
    }
}

/// Decrements the open-connection gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
}

/// Values read at scrape time from the runtime, the reloader and the proxy.
#[derive(Debug)]
struct Status {
    runtime: Runtime,
    reload: Arc<ReloadStatus>,
    proxy: Arc<Proxy>,
}

impl Collector for Status {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats: &PolicyStats = self.runtime.stats();
        let counters = [
            (
                "egress_proxy_policy_decisions",
                "decide() calls",
                &stats.decisions,
            ),
            (
                "egress_proxy_policy_body_decisions",
                "decide-body() calls",
                &stats.body_decisions,
            ),
            (
                "egress_proxy_policy_traps",
                "policy guest traps during decide() or decide-body() (each denied the request)",
                &stats.traps,
            ),
            (
                "egress_proxy_policy_timeouts",
                "decide() or decide-body() calls interrupted at their deadline (each denied the request)",
                &stats.timeouts,
            ),
            (
                "egress_proxy_policy_invalid_verdicts",
                "verdicts the proxy refused to act on (each denied the request)",
                &stats.invalid_verdicts,
            ),
            (
                "egress_proxy_policy_compiled_in_process",
                "policy modules compiled by Cranelift inside the proxy process (0 while the built-in policy loads precompiled and module files compile in a child)",
                &stats.compiled_in_process,
            ),
            (
                "egress_proxy_policy_compiled_in_child",
                "policy modules compiled by a child process (policy compile) and loaded from its artifact",
                &stats.compiled_in_child,
            ),
            (
                "egress_proxy_policy_artifacts_loaded",
                "precompiled policy artifacts loaded (the built-in policy's, or a .cwasm file)",
                &stats.artifacts_loaded,
            ),
            (
                "egress_proxy_reloads_succeeded",
                "reloads that published a new generation",
                &self.reload.succeeded,
            ),
            (
                "egress_proxy_reloads_failed",
                "reloads that failed (the previous generation kept serving)",
                &self.reload.failed,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "egress_proxy_policy_generation",
                "the serving policy generation (1 at start-up, +1 per successful reload)",
                i64::try_from(self.reload.generation.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
            ),
            (
                "egress_proxy_leaf_certificates_cached",
                "leaf certificates in the cache",
                i64::try_from(self.proxy.leaf_cache().len()).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        if let Some(shadow) = self.proxy.shadow() {
            encode_shadow(&mut encoder, &shadow.stats)?;
        }
        Ok(())
    }
}

/// Labels of `egress_proxy_shadow_disagreements_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabels {
    live: &'static str,
    shadow: &'static str,
}

/// The shadow policy's counters (present only when one is loaded).
fn encode_shadow(
    encoder: &mut DescriptorEncoder,
    stats: &crate::proxy::ShadowStats,
) -> Result<(), std::fmt::Error> {
    let counters = [
        (
            "egress_proxy_shadow_decisions",
            "requests the shadow policy decided",
            &stats.decided,
        ),
        (
            "egress_proxy_shadow_dropped",
            "requests not shadowed because every shadow call slot was busy",
            &stats.dropped,
        ),
        (
            "egress_proxy_shadow_faults",
            "shadow policy calls that trapped or timed out (never acted on)",
            &stats.faults,
        ),
        (
            "egress_proxy_shadow_incomplete",
            "requests whose body the shadow asked for but the live policy had not held",
            &stats.incomplete,
        ),
    ];
    for (name, help, value) in counters {
        let counter = ConstCounter::new(value.load(Ordering::Relaxed));
        counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
    }
    let disagreements = stats.disagreements();
    let mut family = encoder.encode_descriptor(
        "egress_proxy_shadow_disagreements",
        "requests the shadow policy decided differently from the live one, by verdict kind",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for ((live, shadow), count) in disagreements {
        let labels = ShadowLabels { live, shadow };
        ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The registry the admin listener's `/metrics` encodes.
pub fn registry(
    metrics: &Metrics,
    runtime: Runtime,
    reload: Arc<ReloadStatus>,
    proxy: Arc<Proxy>,
) -> Registry {
    // Report mode is loud: every metric carries `enforcement="report"`.
    let mut registry = match proxy.enforcement() {
        crate::proxy::Enforcement::Enforce => Registry::default(),
        crate::proxy::Enforcement::Report => Registry::with_labels(std::iter::once((
            std::borrow::Cow::Borrowed("enforcement"),
            std::borrow::Cow::Borrowed("report"),
        ))),
    };
    registry.register(
        "egress_proxy_requests",
        "requests answered, by decision (allow, inject, deny, would_deny, error) and status",
        metrics.requests.clone(),
    );
    registry.register(
        "egress_proxy_request_duration_seconds",
        "time from a request's arrival to the end of its response",
        metrics.request_duration.clone(),
    );
    registry.register(
        "egress_proxy_policy_decide_duration_seconds",
        "time spent in decide(), secrets resolved included",
        metrics.decide_duration.clone(),
    );
    registry.register(
        "egress_proxy_open_connections",
        "client connections open",
        metrics.open_connections.clone(),
    );
    registry.register(
        "egress_proxy_connections_shed",
        "client connections answered 503 because --max-connections were open",
        metrics.shed_connections.clone(),
    );
    registry.register(
        "egress_proxy_dns_queries",
        "DNS queries answered, by decision (answer, nxdomain, empty, guard_refused, servfail, refused)",
        metrics.dns_queries.clone(),
    );
    registry.register(
        "egress_proxy_transparent_refused",
        "redirected connections refused before any request, by reason (no_sni, not_http, not_tls_or_http, handshake, no_bytes)",
        metrics.transparent_refused.clone(),
    );
    registry.register_collector(Box::new(Status {
        runtime,
        reload,
        proxy,
    }));
    registry
}

/// Encode `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(%err, "cannot encode metrics");
    }
    text
}
