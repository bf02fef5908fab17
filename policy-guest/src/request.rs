//! The request a policy decides on: the crate's own mirror of the WIT `request`.

use std::borrow::Cow;
use std::net::SocketAddr;

/// The scheme the client used to reach the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (an absolute-form request sent to the proxy).
    Http,
    /// HTTPS: a request inside an intercepted CONNECT tunnel, or the CONNECT itself.
    Https,
}

/// One request, as the host describes it. Headers are not part of it: the WIT passes
/// them as a resource read on demand, and the default policy never reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// The method, upper-case as sent (`GET`, ... or `CONNECT` for a tunnel). Common
    /// methods are static text (the WIT passes them as a variant, not a string).
    pub method: Cow<'static, str>,
    /// The target host (the host sends it lower-case without a trailing dot; the
    /// policy normalises it again anyway).
    pub host: String,
    /// The target port.
    pub port: u16,
    /// Path and query exactly as sent (`/a/b?x=1`); empty for a CONNECT.
    pub path: String,
    /// The client's socket address.
    pub client: SocketAddr,
}

impl Request {
    /// Whether this is the CONNECT that opens a tunnel (method matched as sent).
    pub(crate) fn is_connect(&self) -> bool {
        self.method == "CONNECT"
    }
}

/// The request's headers, read on demand (in the component, a call to the host).
/// The default policy reads only `content-length`, and only on routes with
/// `max_body_bytes`.
pub trait Headers {
    /// Every value of header `name` (case-insensitive), in the order sent.
    fn get(&self, name: &str) -> Vec<String>;
}

/// No headers at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeaders;

impl Headers for NoHeaders {
    fn get(&self, _name: &str) -> Vec<String> {
        Vec::new()
    }
}

impl<F: Fn(&str) -> Vec<String>> Headers for F {
    fn get(&self, name: &str) -> Vec<String> {
        self(name)
    }
}

/// What the default policy needs to know of a held body: how much the host held, and
/// whether that is all of it.
pub trait Body {
    /// Bytes held.
    fn len(&self) -> u64;
    /// Whether no byte is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether they are the whole body.
    fn complete(&self) -> bool;
    /// Up to `max` bytes starting at `offset`; empty at or past the end.
    fn read(&self, offset: u64, max: u32) -> Vec<u8>;
}

/// Largest slice read from the host in one call.
const READ_SLICE: u32 = 64 * 1024;

/// Every held byte of `body`, or `None` when more than `limit` bytes are held.
pub(crate) fn read_all(body: &dyn Body, limit: u64) -> Option<Vec<u8>> {
    let len = body.len();
    if len > limit {
        return None;
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).ok()?);
    while (bytes.len() as u64) < len {
        let slice = body.read(bytes.len() as u64, READ_SLICE);
        if slice.is_empty() {
            break;
        }
        bytes.extend_from_slice(&slice);
    }
    Some(bytes)
}

/// A body held in memory (native tests, benchmarks, fuzzing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryBody {
    /// The held bytes.
    pub bytes: Vec<u8>,
    /// Whether they are the whole body.
    pub complete: bool,
}

impl MemoryBody {
    /// A whole body.
    pub fn complete(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            bytes: bytes.into(),
            complete: true,
        }
    }
}

impl Body for MemoryBody {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn complete(&self) -> bool {
        self.complete
    }

    fn read(&self, offset: u64, max: u32) -> Vec<u8> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len());
        let end = start.saturating_add(max as usize).min(self.bytes.len());
        self.bytes.get(start..end).unwrap_or_default().to_vec()
    }
}

/// Token buckets in memory whose clock never moves (native tests): tokens are only
/// ever taken, so a test sees exactly a bucket's capacity pass.
#[derive(Debug, Default)]
pub struct MemoryState {
    buckets: std::sync::Mutex<std::collections::BTreeMap<String, f64>>,
}

impl State for MemoryState {
    fn take(&self, key: &str, cost: u32, capacity: u32, refill_per_second: f64) -> Result<(), u64> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tokens = buckets.entry(key.to_owned()).or_insert(f64::from(capacity));
        *tokens = tokens.min(f64::from(capacity));
        let cost = f64::from(cost);
        if *tokens >= cost {
            *tokens -= cost;
            return Ok(());
        }
        if cost > f64::from(capacity) || refill_per_second <= 0.0 {
            return Err(u64::MAX);
        }
        Err(((cost - *tokens) / refill_per_second * 1000.0).ceil() as u64)
    }
}

/// The host's shared rate-limit state (the WIT `state` interface).
pub trait State {
    /// Take `cost` tokens from the bucket `key` (capacity `capacity`, refilled at
    /// `refill_per_second`); `Err` holds the milliseconds until it would succeed.
    fn take(&self, key: &str, cost: u32, capacity: u32, refill_per_second: f64) -> Result<(), u64>;
}

/// No state: every take fails (a rate-limited route then refuses, fail closed).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoState;

impl State for NoState {
    fn take(&self, _: &str, _: u32, _: u32, _: f64) -> Result<(), u64> {
        Err(u64::MAX)
    }
}
