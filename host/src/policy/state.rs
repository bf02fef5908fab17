//! The `state` import: token buckets and windowed counters the host keeps for
//! policies (rate limits, budgets).
//!
//! One [`StateStore`] per runtime: every instance of every generation shares it, so a
//! reload (a new generation) keeps the limits, and each operation is atomic (one lock
//! around check-and-update; Istio's wasm rate limiter failed exactly because get/set
//! across instances cannot be). Keys are bounded in length and number: a store at its
//! key limit first forgets idle entries (a bucket that has refilled, a window that has
//! ended — indistinguishable from a fresh one), and refuses new keys while none is idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Longest state key, in bytes; a longer one is refused.
pub const MAX_STATE_KEY: usize = 256;
/// Default number of keys kept (buckets and counters each).
pub const DEFAULT_STATE_KEYS: usize = 100_000;
/// After a sweep that freed nothing, new keys are refused without sweeping again for
/// this long (a full store under a flood of new keys must not sweep per request).
const SWEEP_BACKOFF_MS: u64 = 1000;
/// Tolerance when comparing a bucket's tokens with a cost.
const TOKEN_EPSILON: f64 = 1e-9;
/// What a refused operation reports as "retry after", in milliseconds, when the store
/// cannot track the key (too long, or the store is full).
const REFUSED_RETRY_MS: u64 = 1000;

/// Where the store reads the time: the monotonic clock, or a clock that moves only
/// when told to (`policy test`, whose cases advance it with `after:`).
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// Real time.
    #[default]
    System,
    /// Frozen time, advanced by [`ManualClock::advance`].
    Manual(Arc<ManualClock>),
}

/// A clock for tests: milliseconds that move only when advanced.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Move the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
    capacity: f64,
    rate: f64,
}

impl Bucket {
    fn refilled(&self, now_ms: u64) -> f64 {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        (self.tokens + elapsed * self.rate).min(self.capacity)
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: u64,
    total: u64,
    length_ms: u64,
}

#[derive(Debug)]
struct Table<T> {
    entries: HashMap<String, T>,
    /// No sweep before this time (ms) after one that freed nothing.
    next_sweep_ms: u64,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            next_sweep_ms: 0,
        }
    }
}

impl<T: Copy> Table<T> {
    /// The entry for `key`, made with `new` if there is room. `None`: the store is full
    /// of live entries.
    fn entry(
        &mut self,
        key: &str,
        now_ms: u64,
        max_keys: usize,
        idle: impl Fn(&T) -> bool,
        new: impl FnOnce() -> T,
    ) -> Option<&mut T> {
        if !self.entries.contains_key(key) {
            if self.entries.len() >= max_keys {
                if now_ms < self.next_sweep_ms {
                    return None;
                }
                self.entries.retain(|_, entry| !idle(entry));
                if self.entries.len() >= max_keys {
                    self.next_sweep_ms = now_ms.saturating_add(SWEEP_BACKOFF_MS);
                    tracing::warn!(
                        keys = self.entries.len(),
                        "policy state is full of live keys; refusing new ones"
                    );
                    return None;
                }
            }
            self.entries.insert(key.to_owned(), new());
        }
        self.entries.get_mut(key)
    }
}

/// Token buckets and windowed counters shared by every policy instance.
#[derive(Debug)]
pub struct StateStore {
    clock: Clock,
    origin: Instant,
    max_keys: usize,
    buckets: Mutex<Table<Bucket>>,
    windows: Mutex<Table<Window>>,
}

impl Default for StateStore {
    fn default() -> Self {
        Self::new(Clock::System, DEFAULT_STATE_KEYS)
    }
}

impl StateStore {
    /// An empty store reading `clock`, keeping at most `max_keys` keys of each kind.
    pub fn new(clock: Clock, max_keys: usize) -> Self {
        Self {
            clock,
            origin: Instant::now(),
            max_keys: max_keys.max(1),
            buckets: Mutex::default(),
            windows: Mutex::default(),
        }
    }

    /// Forget every bucket and counter (`policy test` starts each case file afresh).
    pub fn clear(&self) {
        *lock(&self.buckets) = Table::default();
        *lock(&self.windows) = Table::default();
    }

    /// Keys held now (buckets + counters).
    pub fn len(&self) -> usize {
        lock(&self.buckets).entries.len() + lock(&self.windows).entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now_ms(&self) -> u64 {
        match &self.clock {
            Clock::System => u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX),
            Clock::Manual(clock) => clock.0.load(Ordering::Relaxed),
        }
    }

    /// Take `cost` tokens from bucket `key` (see the WIT `state.take`).
    pub fn take(
        &self,
        key: &str,
        cost: u32,
        capacity: u32,
        refill_per_second: f64,
    ) -> Result<(), u64> {
        if key.len() > MAX_STATE_KEY {
            return Err(REFUSED_RETRY_MS);
        }
        let rate = if refill_per_second.is_finite() && refill_per_second > 0.0 {
            refill_per_second
        } else {
            0.0
        };
        let capacity = f64::from(capacity);
        let cost = f64::from(cost);
        let now = self.now_ms();
        let mut table = lock(&self.buckets);
        let idle = |b: &Bucket| b.refilled(now) >= b.capacity;
        let new = || Bucket {
            tokens: capacity,
            at_ms: now,
            capacity,
            rate,
        };
        let Some(bucket) = table.entry(key, now, self.max_keys, idle, new) else {
            return Err(REFUSED_RETRY_MS);
        };
        bucket.capacity = capacity;
        bucket.rate = rate;
        bucket.tokens = bucket.refilled(now);
        bucket.at_ms = now;
        if cost > capacity {
            return Err(u64::MAX);
        }
        // Refills accumulate in floating point; a nanotoken short is a whole token.
        if bucket.tokens + TOKEN_EPSILON >= cost {
            bucket.tokens = (bucket.tokens - cost).max(0.0);
            return Ok(());
        }
        if rate == 0.0 {
            return Err(u64::MAX);
        }
        let wait_ms = ((cost - bucket.tokens) / rate * 1000.0).ceil();
        // A finite, non-negative float below u64::MAX: the cast cannot wrap.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "clamped to 1..=u64::MAX first"
        )]
        let wait = wait_ms.clamp(1.0, u64::MAX as f64) as u64;
        Err(wait)
    }

    /// Add `amount` to counter `key` within its window (see the WIT `state.add`).
    pub fn add(&self, key: &str, amount: u64, window_ms: u64, limit: u64) -> Result<u64, u64> {
        if key.len() > MAX_STATE_KEY {
            return Err(REFUSED_RETRY_MS);
        }
        let now = self.now_ms();
        let mut table = lock(&self.windows);
        let idle = |w: &Window| now.saturating_sub(w.start_ms) >= w.length_ms;
        let new = || Window {
            start_ms: now,
            total: 0,
            length_ms: window_ms,
        };
        let Some(window) = table.entry(key, now, self.max_keys, idle, new) else {
            return Err(REFUSED_RETRY_MS);
        };
        window.length_ms = window_ms;
        if now.saturating_sub(window.start_ms) >= window_ms {
            window.start_ms = now;
            window.total = 0;
        }
        match window.total.checked_add(amount) {
            Some(total) if total <= limit => {
                window.total = total;
                Ok(total)
            }
            _ => Err(window_ms
                .saturating_sub(now.saturating_sub(window.start_ms))
                .max(1)),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each operation leaves the tables consistent before it can panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn manual() -> (StateStore, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (StateStore::new(Clock::Manual(clock.clone()), 4), clock)
    }

    #[test]
    fn bucket_starts_full_and_refills() {
        let (store, clock) = manual();
        for _ in 0..5 {
            assert_eq!(store.take("k", 1, 5, 1.0), Ok(()));
        }
        assert_eq!(store.take("k", 1, 5, 1.0), Err(1000));
        clock.advance(Duration::from_millis(500));
        assert_eq!(store.take("k", 1, 5, 1.0), Err(500));
        clock.advance(Duration::from_millis(500));
        assert_eq!(store.take("k", 1, 5, 1.0), Ok(()));
        assert_eq!(store.take("k", 6, 5, 1.0), Err(u64::MAX));
        assert_eq!(store.take("none", 1, 1, 0.0), Ok(()));
        assert_eq!(store.take("none", 1, 1, f64::NAN), Err(u64::MAX));
    }

    #[test]
    fn window_counts_up_to_the_limit_then_restarts() {
        let (store, clock) = manual();
        assert_eq!(store.add("w", 60, 1000, 100), Ok(60));
        assert_eq!(store.add("w", 50, 1000, 100), Err(1000));
        clock.advance(Duration::from_millis(300));
        assert_eq!(store.add("w", 40, 1000, 100), Ok(100));
        assert_eq!(store.add("w", 1, 1000, 100), Err(700));
        clock.advance(Duration::from_millis(700));
        assert_eq!(store.add("w", 1, 1000, 100), Ok(1));
        assert_eq!(store.add("w", u64::MAX, 1000, u64::MAX), Err(1000));
    }

    #[test]
    fn keys_are_bounded_and_idle_ones_forgotten() {
        let (store, clock) = manual();
        for key in ["a", "b", "c", "d"] {
            assert_eq!(store.take(key, 1, 1, 1.0), Ok(()));
        }
        assert!(store.take("e", 1, 1, 1.0).is_err(), "full of live buckets");
        assert_eq!(store.len(), 4);
        clock.advance(Duration::from_secs(2));
        assert_eq!(
            store.take("e", 1, 1, 1.0),
            Ok(()),
            "idle buckets were swept"
        );
        assert_eq!(store.len(), 1);
        assert!(
            store
                .take(&"k".repeat(MAX_STATE_KEY + 1), 1, 1, 1.0)
                .is_err()
        );
        store.clear();
        assert!(store.is_empty());
    }

    #[test]
    fn concurrent_takes_are_atomic() {
        let store = Arc::new(StateStore::default());
        let passed = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        if store.take("shared", 1, 250, 0.0).is_ok() {
                            passed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(passed.load(Ordering::Relaxed), 250);
    }
}
