//! A bounded LRU of minted leaves, shared by every connection.
//!
//! Single flight: the map holds one slot (a `OnceLock`) per host, inserted under the
//! map's lock *before* minting. The first caller mints outside that lock; concurrent
//! callers for the same host block on the slot until the leaf is ready, while callers
//! for other hosts are not held up. A failed mint is shared with those waiting for
//! it, then its slot is removed so the next request tries again. A leaf close to
//! expiry ([`LEAF_RENEW_BEFORE`](super::LEAF_RENEW_BEFORE)) is replaced on its next
//! use. An evicted slot stays valid for whoever already holds it.
//!
//! Hand-written rather than the `lru` crate: recency is a `BTreeMap` from a logical
//! clock to the host (O(log n) per hit, no `unsafe`), which is all this needs.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;

use super::{CertificateAuthority, Leaf, LeafHost, TlsError};

/// Default number of hosts whose leaves are kept.
pub const DEFAULT_LEAF_CACHE_CAPACITY: usize = 1024;

/// One host's leaf: empty while it is being minted. The error is a message so that
/// every waiter can be given it.
type Slot = OnceLock<Result<Arc<Leaf>, String>>;

/// Minted leaves by host, least recently used evicted first. `Send + Sync`; share it
/// (or the [`MintingResolver`](super::MintingResolver) that owns it) behind an `Arc`.
pub struct LeafCache {
    ca: Arc<CertificateAuthority>,
    provider: Arc<CryptoProvider>,
    capacity: usize,
    lru: Mutex<Lru>,
    minted: AtomicU64,
}

impl std::fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCache")
            .field("ca", &self.ca)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .field("minted", &self.minted())
            .finish_non_exhaustive()
    }
}

impl LeafCache {
    /// A cache of at most `capacity` hosts (at least 1) whose leaves `ca` signs.
    pub fn new(ca: Arc<CertificateAuthority>, capacity: usize) -> Self {
        Self {
            ca,
            provider: super::crypto_provider(),
            capacity: capacity.max(1),
            lru: Mutex::default(),
            minted: AtomicU64::new(0),
        }
    }

    /// The leaf for `host` (normalised first), minted if it is not cached.
    pub fn get(&self, host: &str) -> Result<Arc<Leaf>, TlsError> {
        let host = LeafHost::parse(host)?;
        let slot = self.slot_for(&host);
        let outcome = slot.get_or_init(|| {
            self.minted.fetch_add(1, Ordering::Relaxed);
            Leaf::new(&self.ca, host.clone(), &self.provider)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        match outcome {
            Ok(leaf) => Ok(leaf.clone()),
            Err(reason) => {
                self.lock().remove_slot(&host, &slot);
                Err(TlsError::Mint {
                    host: host.to_string(),
                    reason: reason.clone(),
                })
            }
        }
    }

    /// Leaves minted so far (each host once, plus renewals and evicted re-mints).
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    /// Hosts currently cached (including any being minted).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most hosts kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The CA that signs the leaves.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// The slot to wait on for `host`: the cached one, or a new empty one.
    fn slot_for(&self, host: &LeafHost) -> Arc<Slot> {
        let now = SystemTime::now();
        let mut lru = self.lock();
        if let Some(slot) = lru.touch(host) {
            let stale = matches!(slot.get(), Some(Ok(leaf)) if leaf.needs_renewal(now));
            if !stale {
                return slot;
            }
        }
        let slot = Arc::new(Slot::new());
        lru.insert(host.clone(), slot.clone(), self.capacity);
        slot
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        // Nothing panics while the lock is held, so a poisoned map is still consistent.
        self.lru.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The map and its recency order.
#[derive(Debug, Default)]
struct Lru {
    entries: HashMap<LeafHost, Entry>,
    /// Logical time of last use → host; the first entry is the least recently used.
    recency: BTreeMap<u64, LeafHost>,
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    slot: Arc<Slot>,
    used: u64,
}

impl Lru {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Mark `host` used and return its slot, if cached.
    fn touch(&mut self, host: &LeafHost) -> Option<Arc<Slot>> {
        let now = self.tick();
        let entry = self.entries.get_mut(host)?;
        let host = self.recency.remove(&entry.used)?;
        entry.used = now;
        self.recency.insert(now, host);
        Some(entry.slot.clone())
    }

    /// Insert or replace `host`'s slot, evicting the least recently used hosts to
    /// stay within `capacity`.
    fn insert(&mut self, host: LeafHost, slot: Arc<Slot>, capacity: usize) {
        if let Some(old) = self.entries.remove(&host) {
            self.recency.remove(&old.used);
        }
        while self.entries.len() >= capacity {
            let Some((_, oldest)) = self.recency.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let used = self.tick();
        self.recency.insert(used, host.clone());
        self.entries.insert(host, Entry { slot, used });
    }

    /// Remove `host` if its slot is still `slot` (a failed mint).
    fn remove_slot(&mut self, host: &LeafHost, slot: &Arc<Slot>) {
        let same = |entry: &Entry| Arc::ptr_eq(&entry.slot, slot);
        if self.entries.get(host).is_some_and(same)
            && let Some(entry) = self.entries.remove(host)
        {
            self.recency.remove(&entry.used);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;

    fn cache(capacity: usize) -> LeafCache {
        LeafCache::new(
            Arc::new(CertificateAuthority::generate().unwrap()),
            capacity,
        )
    }

    #[test]
    fn is_shareable_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<LeafCache>();
        send_sync::<super::super::MintingResolver>();
    }

    #[test]
    fn hits_reuse_the_leaf() {
        let cache = cache(DEFAULT_LEAF_CACHE_CAPACITY);
        let a = cache.get("api.example.com").unwrap();
        let b = cache.get("API.EXAMPLE.COM.").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!((cache.minted(), cache.len()), (1, 1));
        assert_eq!(a.host().to_string(), "api.example.com");
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let cache = cache(2);
        cache.get("a.example").unwrap();
        cache.get("b.example").unwrap();
        cache.get("a.example").unwrap(); // b is now the least recently used
        cache.get("c.example").unwrap();
        assert_eq!((cache.len(), cache.minted()), (2, 3));
        cache.get("a.example").unwrap();
        assert_eq!(cache.minted(), 3, "a stayed cached");
        cache.get("b.example").unwrap();
        assert_eq!(cache.minted(), 4, "b was evicted and minted again");
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn concurrent_requests_for_one_host_mint_once() {
        const THREADS: usize = 16;
        let cache = Arc::new(cache(8));
        let barrier = Arc::new(Barrier::new(THREADS));
        let leaves: Vec<Arc<Leaf>> = (0..THREADS)
            .map(|_| {
                let (cache, barrier) = (cache.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    cache.get("new.example.com").unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(cache.minted(), 1);
        assert_eq!(cache.len(), 1);
        assert!(leaves.iter().all(|l| Arc::ptr_eq(l, &leaves[0])));
    }

    #[test]
    fn invalid_hosts_are_errors_not_entries() {
        let cache = cache(4);
        assert!(matches!(
            cache.get("*.example.com"),
            Err(TlsError::InvalidHost { .. })
        ));
        assert!(cache.get("").is_err());
        assert!(cache.is_empty());
        assert_eq!(cache.minted(), 0);
    }

    #[test]
    fn a_failed_slot_is_removed_and_a_stale_one_replaced() {
        let mut lru = Lru::default();
        let host = LeafHost::parse("x.example").unwrap();
        let failed: Arc<Slot> = Arc::new(OnceLock::from(Err("boom".to_owned())));
        lru.insert(host.clone(), failed.clone(), 4);
        let other = Arc::new(Slot::new());
        lru.remove_slot(&host, &other);
        assert_eq!(lru.entries.len(), 1, "only the same slot is removed");
        lru.remove_slot(&host, &failed);
        assert!(lru.entries.is_empty() && lru.recency.is_empty());

        lru.insert(host.clone(), failed, 4);
        lru.insert(host.clone(), other.clone(), 4);
        assert_eq!((lru.entries.len(), lru.recency.len()), (1, 1));
        assert!(Arc::ptr_eq(&lru.touch(&host).unwrap(), &other));
    }
}
