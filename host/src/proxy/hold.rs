//! The body phase: the policy answered `need-body`, so the request is held — nothing
//! reaches the upstream, not even its headers — while up to the bytes it asked for
//! are read (within the body read timeout and the memory budget for held bodies),
//! decoded for the policy, and decided by `decide-body`. What is forwarded afterwards
//! is the held bytes as the client sent them, then the rest of the body streamed.
//!
//! HTTP/1.1 clients that sent `Expect: 100-continue` get their `100 Continue` when the
//! body is first read here (hyper sends it); the header is not forwarded, since the
//! body has already been received.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Proxy;
use super::dialect::Dialect;
use super::forward_body::ForwardBody;
use crate::inspect::{self, BodyRefusal};
use crate::policy::{BodyNeed, Decision, Generation, PolicyBody, Request};

/// Unit of the memory budget's permits, in bytes.
const PERMIT_BYTES: u64 = 1024;
/// Held beyond the limit at most by one frame of the client's body; budgeted too.
const FRAME_SLACK: u64 = 64 * 1024;

/// Settings of the body phase.
#[derive(Debug, Clone)]
pub struct InspectConfig {
    /// Cap on the bytes held for one decision (`--max-inspect-body`).
    pub max_body: u64,
    /// Bound on receiving the held part of a body (`--body-read-timeout`); over it: 408.
    pub read_timeout: std::time::Duration,
    /// Budget for all bodies held at once, in bytes (`--inspect-memory`); over it: 503.
    pub memory: u64,
}

impl Default for InspectConfig {
    fn default() -> Self {
        Self {
            max_body: inspect::DEFAULT_MAX_INSPECT_BODY,
            read_timeout: inspect::DEFAULT_BODY_READ_TIMEOUT,
            memory: inspect::DEFAULT_INSPECT_MEMORY,
        }
    }
}

/// The budget for held bodies, as permits of [`PERMIT_BYTES`].
#[derive(Debug)]
pub(crate) struct Budget(Arc<Semaphore>);

impl Budget {
    pub(crate) fn new(bytes: u64) -> Self {
        let permits = usize::try_from(bytes / PERMIT_BYTES)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self(Arc::new(Semaphore::new(permits)))
    }

    /// Reserve `bytes` now, or refuse: a full budget never makes a request wait.
    fn reserve(&self, bytes: u64) -> Result<OwnedSemaphorePermit, BodyRefusal> {
        let permits = u32::try_from(bytes.div_ceil(PERMIT_BYTES)).map_err(|_| BodyRefusal::Busy)?;
        self.0
            .clone()
            .try_acquire_many_owned(permits)
            .map_err(|_| BodyRefusal::Busy)
    }
}

/// What the body phase decided, with the body to forward.
pub(crate) struct Decided {
    pub(crate) decision: Decision,
    pub(crate) body: ForwardBody,
    /// For a denial: how to write it, chosen while the body the policy read is held.
    pub(crate) dialect: Option<Dialect>,
    /// Hex SHA-256 of the (decoded) bytes the policy read, for the access log.
    pub(crate) body_sha256: String,
    /// The body as the policy read it, for the shadow policy's body phase.
    pub(crate) view: PolicyBody,
}

/// Hold the body, ask `decide-body`, and return the decision with the body to forward.
pub(crate) async fn decide(
    proxy: &Proxy,
    generation: &Generation,
    request: &Request,
    need: BodyNeed,
    body: Incoming,
    upgrade: bool,
) -> Result<Decided, BodyRefusal> {
    if upgrade {
        // An upgrade's payload is not a request body: the policy gets an empty one.
        let view = PolicyBody::complete(Bytes::new());
        let decision = decide_body(proxy, generation, request, &view);
        let dialect = dialect_of(&decision, request, &view);
        return Ok(Decided {
            decision,
            body: ForwardBody::streamed(body),
            dialect,
            body_sha256: crate::policy::sha256_hex(&view.bytes),
            view,
        });
    }
    let config = &proxy.config.inspect;
    let codings = inspect::codings(
        request
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    )?;
    let limit = inspect::limit(need, config.max_body);
    let declared = declared_length(request);
    let raw_budget = match declared {
        Some(length) if length <= limit => length,
        _ => limit.saturating_add(1).saturating_add(FRAME_SLACK),
    };
    let decoded_budget = if codings.is_empty() { 0 } else { limit };
    let permit = proxy
        .inspect_budget
        .reserve(raw_budget.saturating_add(decoded_budget))?;
    let held = tokio::time::timeout(config.read_timeout, read(body, limit, raw_budget))
        .await
        .map_err(|_| BodyRefusal::Timeout(config.read_timeout))??;
    let view = inspect::policy_body(
        &held.raw,
        held.rest.is_none(),
        &codings,
        need,
        config.max_body,
    )?;
    let decision = decide_body(proxy, generation, request, &view);
    let dialect = dialect_of(&decision, request, &view);
    let body_sha256 = crate::policy::sha256_hex(&view.bytes);
    Ok(Decided {
        decision,
        body: ForwardBody::held(held.raw, held.rest, held.trailers, Some(permit)),
        dialect,
        body_sha256,
        view,
    })
}

fn dialect_of(decision: &Decision, request: &Request, view: &PolicyBody) -> Option<Dialect> {
    matches!(decision, Decision::Deny(_)).then(|| Dialect::of(request, Some(view)))
}

fn decide_body(
    proxy: &Proxy,
    generation: &Generation,
    request: &Request,
    body: &PolicyBody,
) -> Decision {
    let deciding = Instant::now();
    let decision = generation.decide_body(request, body);
    proxy.metrics.decided(deciding.elapsed());
    decision
}

/// `Content-Length` as the client sent it, if it is one valid number.
fn declared_length(request: &Request) -> Option<u64> {
    let mut values = request
        .headers
        .iter()
        .filter(|(name, _)| name == "content-length");
    let (_, value) = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.trim().parse().ok()
}

/// What was read: the raw bytes, and the rest of the body if it had not ended.
struct Held {
    raw: Bytes,
    rest: Option<Incoming>,
    trailers: Option<HeaderMap>,
}

/// Read until the body ends or more than `limit` bytes are held. Each frame is copied
/// into one buffer of `capacity` (the reserved size) as it arrives, so the frames'
/// own buffers (slices of hyper's read buffers, which a held slice would keep alive)
/// are freed at once and what is held is what was reserved.
async fn read(mut body: Incoming, limit: u64, capacity: u64) -> Result<Held, BodyRefusal> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
    let mut held = BytesMut::with_capacity(capacity.min(limit.saturating_add(1)));
    let mut trailers = None;
    let mut ended = false;
    while held.len() <= limit {
        match body.frame().await {
            None => {
                ended = true;
                break;
            }
            Some(Err(err)) => return Err(BodyRefusal::Read(err.to_string())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => held.extend_from_slice(&data),
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    ended = true;
                    break;
                }
            },
        }
    }
    let rest = (!ended && !body.is_end_stream()).then_some(body);
    Ok(Held {
        raw: held.freeze(),
        rest,
        trailers,
    })
}
