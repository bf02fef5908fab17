//! The one wasmtime [`Engine`] per process: pooling allocator, epoch interruption
//! driven by an owned ticker thread, and the [`StoreData`] every instance carries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::state::{Clock, DEFAULT_STATE_KEYS, StateStore};
use super::{PolicyError, PolicyStats};

/// How often the epoch advances. Deadlines are whole ticks, so this is their
/// resolution.
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
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreData>,
    pub(crate) config: RuntimeConfig,
    pub(crate) stats: Arc<PolicyStats>,
    pub(crate) state: Arc<StateStore>,
    _ticker: EpochTicker,
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
            _ticker: ticker,
        })
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
    let mut cfg = Config::new();
    #[cfg(feature = "profiling")]
    if std::env::var_os("EGRESS_PROXY_PERFMAP").is_some() {
        cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    cfg
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a dedicated OS thread (not a
/// tokio task: a guest stuck in a loop must not be able to starve it). Stops and
/// joins when dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: &Engine) -> Result<Self, PolicyError> {
        let weak = engine.weak();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    thread::park_timeout(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PolicyError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            // A panic in the ticker has nothing left to clean up.
            let _ = thread.join();
        }
    }
}
