//! The policy runtime.
//!
//! - [`Runtime`]: one wasmtime engine per process (pooling allocator, epoch ticker,
//!   WASI linked with an empty context). Cheap to clone.
//! - [`PolicyModule`]: a compiled policy component (the built-in default or a file),
//!   checked against the WIT version this host speaks. Compile once per module.
//! - [`Generation`]: a module configured with one routes document, plus a pool of
//!   configured instances. `decide` is synchronous and safe to call from many tasks
//!   at once; a trap or timeout denies that request and discards the instance.
//!   A reload builds a new `Generation` and publishes it; in-flight requests keep the
//!   `Arc` they started with.
//!
//! Data flows one way: the proxy asks a generation for a verdict; the policy never
//! calls back.

mod bindings;
mod body;
mod convert;
mod engine;
mod generation;
mod headers;
mod instance;
mod module;
mod request;
mod state;
mod validate;
mod verdict;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use bindings::{DECIDER_EXPORT, PACKAGE, VERSIONS};
pub use body::PolicyBody;
pub use engine::{
    DEFAULT_CONFIGURE_TIMEOUT, DEFAULT_DECIDE_BODY_TIMEOUT, DEFAULT_DECIDE_TIMEOUT,
    DEFAULT_INSTANCE_SLOTS, DEFAULT_MAX_IDLE, DEFAULT_MEMORY_LIMIT, EPOCH_TICK, RuntimeConfig,
};
pub use generation::{Generation, Summary};
pub use module::{BUILTIN_POLICY, PolicyModule};
pub use request::{HIDDEN_HEADERS, Request, Scheme};
pub use state::{Clock, DEFAULT_STATE_KEYS, MAX_STATE_KEY, ManualClock, StateStore};
pub use verdict::{
    Annotation, BodyNeed, DEFAULT_DENY_STATUS, Decision, Denial, DenyKind, Head, InjectedHeader,
    MAX_ANNOTATIONS, MAX_TEXT, Part, Template, Verdict,
};

/// Why a module could not be loaded or configured. Display is a message an operator
/// can act on.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The engine or linker could not be set up.
    #[error("policy engine: {0}")]
    Engine(String),
    /// The module file could not be read.
    #[error("cannot read policy module {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid WebAssembly component.
    #[error("{origin} is not a valid WebAssembly component: {message}")]
    Compile {
        /// Where the module came from.
        origin: String,
        /// The compiler's message.
        message: String,
    },
    /// The component is valid but needs more than the runtime's limits allow (for
    /// example a larger initial linear memory than `--policy-memory-mib`).
    #[error(
        "{origin} needs more than the policy limits allow: {message}; raise --policy-memory-mib (EGRESS_PROXY_POLICY_MEMORY_MIB)"
    )]
    OverLimits {
        /// Where the module came from.
        origin: String,
        /// wasmtime's message.
        message: String,
    },
    /// The component was built against another version of the WIT package.
    #[error(
        "{origin} was built against {found}, but this proxy speaks {expected}; rebuild the policy against wit/policy.wit (egress:policy@0.2.0)"
    )]
    WrongVersion {
        /// Where the module came from.
        origin: String,
        /// What the component exports, e.g. `egress:policy@0.3.0`.
        found: String,
        /// The versions this host speaks.
        expected: String,
    },
    /// The component does not export the decider interface at all.
    #[error(
        "{origin} does not export {expected} (it exports: {exports}); is it an egress-proxy policy?"
    )]
    MissingExport {
        /// Where the module came from.
        origin: String,
        /// The export name expected.
        expected: &'static str,
        /// What it does export.
        exports: String,
    },
    /// The component needs imports the host does not provide, or its exports do not
    /// have the contract's types.
    #[error("{origin} cannot be linked: {message}")]
    Link {
        /// Where the module came from.
        origin: String,
        /// Details.
        message: String,
    },
    /// Instantiation or `configure` trapped or timed out.
    #[error("{origin} failed while starting: {message}")]
    Start {
        /// Where the module came from.
        origin: String,
        /// Details.
        message: String,
    },
    /// `configure` returned an error: the routes were rejected.
    #[error("the policy rejected the routes: {0}")]
    Rejected(String),
    /// The policy's summary is unusable (e.g. an invalid secret name).
    #[error("the policy's configure summary is invalid: {0}")]
    BadSummary(String),
}

/// Hex SHA-256 of some bytes: how modules and routes files are identified.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    module::hex(&sha2::Sha256::digest(bytes))
}

/// Whether a guest call failed by hitting its epoch deadline.
fn is_timeout(err: &wasmtime::Error) -> bool {
    matches!(
        err.downcast_ref::<wasmtime::Trap>(),
        Some(wasmtime::Trap::Interrupt)
    )
}

impl PolicyError {
    fn engine(err: impl std::fmt::Display) -> Self {
        Self::Engine(format!("{err:#}"))
    }
}

/// Counters for the policy runtime, shared by all its generations.
#[derive(Debug, Default)]
pub struct PolicyStats {
    /// Calls to `decide` (including those that faulted).
    pub decisions: AtomicU64,
    /// Calls to `decide-body` (including those that faulted).
    pub body_decisions: AtomicU64,
    /// Guest traps during `decide` (panic, stack overflow, memory limit, ...),
    /// excluding timeouts.
    pub traps: AtomicU64,
    /// `decide` calls interrupted at their deadline.
    pub timeouts: AtomicU64,
    /// Verdicts the host refused (bad header, undeclared secret, ...).
    pub invalid_verdicts: AtomicU64,
    /// Instances created (instantiated and configured).
    pub instances_created: AtomicU64,
    /// Instances dropped after a fault.
    pub instances_discarded: AtomicU64,
}

impl PolicyStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The policy runtime: one engine, shared by every module and generation built from
/// it. Clone freely.
#[derive(Debug, Clone)]
pub struct Runtime {
    shared: Arc<engine::Shared>,
}

impl Runtime {
    /// Create the engine and start its epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Self, PolicyError> {
        Ok(Self {
            shared: Arc::new(engine::Shared::new(config)?),
        })
    }

    /// The limits this runtime enforces.
    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.config
    }

    /// Counters across all generations.
    pub fn stats(&self) -> &PolicyStats {
        &self.shared.stats
    }

    /// The policy state (rate limits, budgets) shared by every generation.
    pub fn state(&self) -> &StateStore {
        &self.shared.state
    }

    /// Compile the policy built into the binary.
    pub fn load_builtin(&self) -> Result<Arc<PolicyModule>, PolicyError> {
        PolicyModule::compile(&self.shared, BUILTIN_POLICY, "the built-in policy".into())
    }

    /// Compile a policy component from a file. Slow (tens of ms to seconds): call it
    /// off the async runtime.
    pub fn load_file(&self, path: &std::path::Path) -> Result<Arc<PolicyModule>, PolicyError> {
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        PolicyModule::compile(&self.shared, &bytes, path.display().to_string())
    }

    /// Compile a policy component from bytes; `origin` names it in errors.
    pub fn load_bytes(
        &self,
        bytes: &[u8],
        origin: String,
    ) -> Result<Arc<PolicyModule>, PolicyError> {
        PolicyModule::compile(&self.shared, bytes, origin)
    }
}
