//! The one wasmtime [`Engine`] per process: pooling allocator, epoch interruption
//! driven by an owned ticker thread that runs only while a policy call is in progress
//! ([`Shared::enter`]), and the [`StoreData`] every instance carries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::child::Compiler;
use super::state::{Clock, DEFAULT_STATE_KEYS, StateStore};
use super::{PolicyError, PolicyStats};

/// How often the epoch advances while a policy call is in progress. Deadlines are
/// whole ticks, so this is their resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Default bound on one `decide` call.
pub const DEFAULT_DECIDE_TIMEOUT: Duration = Duration::from_millis(100);
/// Default bound on one `decide-body` call (the guest may parse up to a MiB of body).
pub const DEFAULT_DECIDE_BODY_TIMEOUT: Duration = Duration::from_millis(250);
/// Default bound on one `configure` call (interpreted guests start slowly).
pub const DEFAULT_CONFIGURE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default linear-memory limit per instance, in bytes (64 MiB).
pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;
/// Default number of instance slots in the pooling allocator, across all generations.
/// Each slot reserves (but does not commit) about 4 GiB of address space for its
/// linear memory, so that guest code runs without explicit bounds checks.
pub const DEFAULT_INSTANCE_SLOTS: u32 = 64;
/// Default number of idle, configured instances a generation keeps for reuse.
pub const DEFAULT_MAX_IDLE: usize = 8;

/// Limits for the policy runtime. Every field has a named default.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Wall-clock bound on one `decide` call (rounded up to whole 10 ms ticks).
    /// Default 100 ms.
    pub decide_timeout: Duration,
    /// Wall-clock bound on one `decide-body` call (rounded up to whole 10 ms ticks).
    /// Default 250 ms.
    pub decide_body_timeout: Duration,
    /// Wall-clock bound on one `configure` call. Default 10 s.
    pub configure_timeout: Duration,
    /// Maximum linear memory per instance, in bytes. Default 64 MiB.
    pub memory_limit: usize,
    /// Instance slots reserved by the pooling allocator (all generations together).
    /// Default 64.
    pub instance_slots: u32,
    /// Idle configured instances kept per generation. Default 8.
    pub max_idle_instances: usize,
    /// The clock the policy state (rate limits) reads. Default: real time.
    pub clock: Clock,
    /// Keys the policy state keeps, buckets and counters each. Default
    /// [`DEFAULT_STATE_KEYS`].
    pub state_keys: usize,
    /// Where a module given as a `.wasm` file is compiled. Default: in this process
    /// (`run` uses a child process).
    pub compiler: Compiler,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            decide_timeout: DEFAULT_DECIDE_TIMEOUT,
            decide_body_timeout: DEFAULT_DECIDE_BODY_TIMEOUT,
            configure_timeout: DEFAULT_CONFIGURE_TIMEOUT,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            instance_slots: DEFAULT_INSTANCE_SLOTS,
            max_idle_instances: DEFAULT_MAX_IDLE,
            clock: Clock::System,
            state_keys: DEFAULT_STATE_KEYS,
            compiler: Compiler::InProcess,
        }
    }
}

impl RuntimeConfig {
    /// A timeout as an epoch deadline: whole ticks, at least one, plus one so that a
    /// call that starts just before a tick still gets the full duration.
    pub(crate) fn ticks(timeout: Duration) -> u64 {
        let tick = EPOCH_TICK.as_nanos().max(1);
        let ticks = timeout.as_nanos().div_ceil(tick);
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }
}

/// What every policy [`Store`] holds: an empty WASI context, the limits, and the
/// runtime's shared policy state.
pub struct StoreData {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    limits: StoreLimits,
    pub(super) state: Arc<StateStore>,
}

impl std::fmt::Debug for StoreData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreData").finish_non_exhaustive()
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Shared by the runtime and every module and generation built from it; the epoch
/// ticker stops when the last of them is dropped.
///
/// Guest code runs only under a [`CallGuard`] from [`Shared::enter`]: the epoch
/// advances only while one is alive.
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreData>,
    pub(crate) config: RuntimeConfig,
    pub(crate) stats: Arc<PolicyStats>,
    pub(crate) state: Arc<StateStore>,
    ticker: EpochTicker,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(config: RuntimeConfig) -> Result<Self, PolicyError> {
        let engine = Engine::new(&engine_config(&config)).map_err(PolicyError::engine)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(PolicyError::engine)?;
        type Data = wasmtime::component::HasSelf<StoreData>;
        super::bindings::v2::Policy::add_to_linker::<StoreData, Data>(&mut linker, |data| data)
            .map_err(PolicyError::engine)?;
        super::bindings::v1::Policy::add_to_linker::<StoreData, Data>(&mut linker, |data| data)
            .map_err(PolicyError::engine)?;
        let ticker = EpochTicker::start(&engine)?;
        let state = Arc::new(StateStore::new(config.clock.clone(), config.state_keys));
        Ok(Self {
            engine,
            linker,
            config,
            stats: Arc::default(),
            state,
            ticker,
        })
    }

    /// Mark a policy call as in progress until the returned guard is dropped; the
    /// epoch ticker runs while any guard is alive, and parks (no timer at all) while
    /// none is. Hold one around **every** call into guest code — instantiation,
    /// `configure`, `decide`, `decide-body` — and set the store's epoch deadline while
    /// holding it (or immediately before: a deadline counts from the epoch current
    /// when it is set):
    ///
    /// ```text
    /// let _call = shared.enter();
    /// store.set_epoch_deadline(RuntimeConfig::ticks(timeout));
    /// let result = policy.egress_policy_decider().call_decide(&mut store, ...);
    /// ```
    ///
    /// Guards nest and may be held on any number of threads at once. Cheap: an atomic
    /// add and subtract, an atomic swap when the count goes 0 → 1, and a system call
    /// to wake the ticker thread only if it had parked (at most once per tick).
    pub(crate) fn enter(&self) -> CallGuard<'_> {
        self.ticker.enter()
    }

    /// A fresh store: empty WASI context (no env, args, files, sockets; stdio closed),
    /// memory limits, and an epoch deadline of `timeout` (instantiation runs code).
    pub(crate) fn new_store(&self, timeout: Duration) -> Store<StoreData> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.config.memory_limit)
            .trap_on_grow_failure(true)
            .build();
        let data = StoreData {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits,
            state: Arc::clone(&self.state),
        };
        let mut store = Store::new(&self.engine, data);
        store.limiter(|data| &mut data.limits);
        store.set_epoch_deadline(RuntimeConfig::ticks(timeout));
        store
    }
}

fn engine_config(config: &RuntimeConfig) -> Config {
    let slots = config.instance_slots.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        // A Rust wasip2 component has a handful of core instances (program, WASI
        // adapter, shims); interpreted guests (Python, JS) have more.
        .total_core_instances(slots.saturating_mul(8))
        .total_memories(slots)
        .total_tables(slots.saturating_mul(2))
        .max_memory_size(config.memory_limit)
        .max_core_instance_size(4 << 20)
        .max_component_instance_size(4 << 20)
        .max_tables_per_module(8)
        .table_elements(100_000)
        .linear_memory_keep_resident(1 << 20)
        .pagemap_scan(Enabled::Auto);
    let mut cfg = super::compiler_config::compiler_config();
    #[cfg(feature = "profiling")]
    if std::env::var_os("EGRESS_PROXY_PERFMAP").is_some() {
        cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    cfg
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a dedicated OS thread (not a
/// tokio task: a guest stuck in a loop must not be able to starve it), but only while
/// a policy call is in progress: with no [`CallGuard`] alive the thread parks without
/// a timeout, so an idle proxy is not woken a hundred times a second.
///
/// The epoch then stands still, which keeps every deadline exact: a deadline is a
/// number of ticks from the epoch current when it is set, and ticks resume as soon as
/// a call enters. A call that enters while the ticker is parked wakes it; the first
/// tick comes one full [`EPOCH_TICK`] later, so that call gets the whole of
/// [`RuntimeConfig::ticks`] (the upper end of the range a call that starts between
/// two ticks of a running ticker gets). Ticks are at least [`EPOCH_TICK`] apart either
/// way, so no call is ever interrupted before its timeout.
///
/// The protocol, and why no wake-up is lost: a guard increments `calls` and, on
/// 0 → 1, unparks the thread. The thread, before every tick, reads `calls`; on 0 it
/// parks. An unpark that lands between that read and the park leaves a token, and the
/// park returns at once. After any wake-up the thread ticks once before it looks at
/// `calls` again, so under steady traffic (a call entering in every tick) it keeps
/// ticking like a plain timer and no request pays for waking it; it parks at most two
/// ticks after the last call ends. Stops and joins (within one tick) when dropped.
struct EpochTicker {
    state: Arc<TickerState>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct TickerState {
    /// Live [`CallGuard`]s.
    calls: AtomicUsize,
    /// Ticks so far (for tests and diagnostics).
    ticks: AtomicU64,
    stop: AtomicBool,
}

/// A policy call in progress: the epoch ticker runs while any guard is alive. Made by
/// [`Shared::enter`]; dropping it ends the call.
#[must_use = "the call counts as in progress only while the guard is alive"]
pub(crate) struct CallGuard<'a> {
    ticker: &'a EpochTicker,
}

impl std::fmt::Debug for CallGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallGuard").finish_non_exhaustive()
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.ticker.state.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EpochTicker {
    fn start(engine: &Engine) -> Result<Self, PolicyError> {
        let weak = engine.weak();
        let state = Arc::new(TickerState::default());
        let shared = Arc::clone(&state);
        let thread = thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while !shared.stop.load(Ordering::SeqCst) {
                    if shared.calls.load(Ordering::SeqCst) == 0 {
                        // No call in progress: sleep until a guard's unpark (or a stale
                        // token, or a spurious wake-up: then one tick and look again).
                        // Tick once after any wake-up, even if the call that woke us
                        // has ended by now: otherwise every call would wake us anew.
                        thread::park();
                        if shared.stop.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    // Not `park_timeout`: a guard's unpark must not end a tick early
                    // (or wake this thread at all while it is ticking).
                    thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                    shared.ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
            .map_err(|e| PolicyError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            state,
            thread: Some(thread),
        })
    }

    fn enter(&self) -> CallGuard<'_> {
        if self.state.calls.fetch_add(1, Ordering::SeqCst) == 0
            && let Some(thread) = &self.thread
        {
            thread.thread().unpark();
        }
        CallGuard { ticker: self }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            // A panic in the ticker has nothing left to clean up.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn ticks(shared: &Shared) -> u64 {
        shared.ticker.state.ticks.load(Ordering::Relaxed)
    }

    /// Wait until the ticker has parked: no tick for 100 ms (ten ticks' time). Fails
    /// if it keeps ticking for 5 s.
    fn until_parked(shared: &Shared) {
        let start = Instant::now();
        let mut last = ticks(shared);
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_millis(100) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the epoch ticker is still ticking with no call in progress"
            );
            thread::sleep(Duration::from_millis(5));
            let now = ticks(shared);
            if now != last {
                (last, quiet_since) = (now, Instant::now());
            }
        }
    }

    /// Wait until `n` more ticks than `from` have happened; fails after 5 s.
    fn until_ticked(shared: &Shared, from: u64, n: u64) -> Duration {
        let start = Instant::now();
        while ticks(shared) < from + n {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no epoch tick while a call is in progress"
            );
            thread::sleep(Duration::from_millis(1));
        }
        start.elapsed()
    }

    #[test]
    fn the_epoch_advances_only_while_a_call_is_in_progress() {
        let shared = Shared::new(RuntimeConfig::default()).unwrap();
        until_parked(&shared);
        let idle = ticks(&shared);
        thread::sleep(Duration::from_millis(300));
        assert_eq!(ticks(&shared), idle, "ticked while idle");

        let call = shared.enter();
        let nested = shared.enter();
        thread::sleep(Duration::from_millis(100));
        drop(nested);
        let busy = ticks(&shared) - idle;
        // Ticks are at least EPOCH_TICK apart: at most 10 in 100 ms (+1 for the
        // sleep's own overshoot); at least one even on a busy machine.
        assert!((1..=11).contains(&busy), "{busy} ticks in 100 ms");
        // Still ticking for the outer guard.
        until_ticked(&shared, ticks(&shared), 2);
        drop(call);

        until_parked(&shared);
        let after = ticks(&shared);
        thread::sleep(Duration::from_millis(300));
        assert_eq!(ticks(&shared), after, "ticked after the last call ended");
    }

    /// A call entering at any moment relative to the ticker's decision to park (just
    /// before, during, just after) gets ticks: no lost wake-up.
    #[test]
    fn a_call_entering_as_the_ticker_parks_still_gets_ticks() {
        let shared = Shared::new(RuntimeConfig::default()).unwrap();
        for i in 0..60u64 {
            let call = shared.enter();
            until_ticked(&shared, ticks(&shared), 2);
            drop(call);
            // 0–29 ms: lands before, at and after the tick on which it parks.
            thread::sleep(Duration::from_micros((i * 7_919) % 30_000));
        }
        // Many short calls from several threads, then one that must see ticks.
        thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for _ in 0..20_000 {
                        let _call = shared.enter();
                        std::hint::spin_loop();
                    }
                });
            }
        });
        let call = shared.enter();
        until_ticked(&shared, ticks(&shared), 2);
        drop(call);
        until_parked(&shared);
    }
}
