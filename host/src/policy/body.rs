//! The `request-body` and `state` imports (0.2.0): the held body, read in slices, and
//! the host's rate-limit state.

use bytes::Bytes;
use wasmtime::component::Resource;

use super::bindings::v2::egress::policy::{request_body, state};
use super::engine::StoreData;

/// Largest slice one `read` returns, in bytes: a guest asking for more gets this much
/// (and reads again), so one call never copies an unbounded amount.
pub const MAX_READ: u32 = 1 << 20;

/// The body a policy decides on: the held bytes, decoded from their content coding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyBody {
    /// The bytes (decoded).
    pub bytes: Bytes,
    /// Whether they are the whole body.
    pub complete: bool,
}

impl PolicyBody {
    /// A whole body.
    pub fn complete(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
            complete: true,
        }
    }
}

impl request_body::Host for StoreData {}

impl request_body::HostBody for StoreData {
    fn len(&mut self, body: Resource<PolicyBody>) -> u64 {
        self.table
            .get(&body)
            .map_or(0, |body| body.bytes.len() as u64)
    }

    fn complete(&mut self, body: Resource<PolicyBody>) -> bool {
        self.table.get(&body).is_ok_and(|body| body.complete)
    }

    fn read(&mut self, body: Resource<PolicyBody>, offset: u64, max: u32) -> Vec<u8> {
        let Ok(body) = self.table.get(&body) else {
            return Vec::new();
        };
        let len = body.bytes.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let want = usize::try_from(max.min(MAX_READ)).unwrap_or(usize::MAX);
        let end = start.saturating_add(want).min(len);
        body.bytes
            .get(start..end)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn drop(&mut self, body: Resource<PolicyBody>) -> wasmtime::Result<()> {
        self.table.delete(body)?;
        Ok(())
    }
}

impl state::Host for StoreData {
    fn take(
        &mut self,
        key: String,
        cost: u32,
        capacity: u32,
        refill_per_second: f64,
    ) -> Result<(), u64> {
        self.state.take(&key, cost, capacity, refill_per_second)
    }

    fn add(&mut self, key: String, amount: u64, window_ms: u64, limit: u64) -> Result<u64, u64> {
        self.state.add(&key, amount, window_ms, limit)
    }
}
