//! The policy runtime.
//!
//! - [`Runtime`]: one wasmtime engine per process (pooling allocator, epoch ticker,
//!   WASI linked with an empty context). Cheap to clone.
//! - [`PolicyModule`]: a compiled policy component (the built-in default or a file),
//!   checked against the WIT version this host speaks. Compile once per module: the
//!   built-in policy ships precompiled (loaded without compiling, see `artifact`); a
//!   `.wasm` file is compiled here or, with [`Compiler::Child`], by a child process
//!   (`child`); a `.cwasm` artifact from `policy compile` is loaded as is.
//! - [`Generation`]: a module configured with one routes document, plus a pool of
//!   configured instances. `decide` is synchronous and safe to call from many tasks
//!   at once; a trap or timeout denies that request and discards the instance.
//!   A reload builds a new `Generation` and publishes it; in-flight requests keep the
//!   `Arc` they started with.
//!
//! Data flows one way: the proxy asks a generation for a verdict; the policy never
//! calls back.

mod artifact;
mod bindings;
mod body;
mod child;
mod compiler_config;
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
pub use child::{ChildCompiler, Compiler, DEFAULT_COMPILE_TIMEOUT};
pub use engine::{
    DEFAULT_CONFIGURE_TIMEOUT, DEFAULT_DECIDE_BODY_TIMEOUT, DEFAULT_DECIDE_TIMEOUT,
    DEFAULT_INSTANCE_SLOTS, DEFAULT_MAX_IDLE, DEFAULT_MEMORY_LIMIT, EPOCH_TICK, RuntimeConfig,
};
pub use generation::{Generation, Summary};
pub use module::{BUILTIN_POLICY, Code, PolicyModule, precompile};
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
    /// A precompiled artifact that this build cannot load: written by another wasmtime
    /// or egress-proxy build, with other settings, for a CPU this host is not, or not
    /// an artifact at all.
    #[error(
        "{origin} is a precompiled artifact this proxy cannot load: {message}; compile the .wasm again with this binary (egress-proxy policy compile MODULE.wasm -o MODULE.cwasm)"
    )]
    Artifact {
        /// Where the artifact came from.
        origin: String,
        /// wasmtime's message.
        message: String,
    },
    /// The child process compiling the module failed, crashed or timed out.
    #[error("{origin} could not be compiled: {message}")]
    Compiler {
        /// The module file.
        origin: String,
        /// What the child said, or how it ended.
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

/// Hex SHA-256 of a file, read in pieces (a module can be tens of MB; reading it whole
/// would raise the process's peak memory by as much at every reload check).
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(module::hex(&hasher.finalize()))
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
    /// Modules compiled by Cranelift in this process (0 while the built-in policy
    /// loads precompiled and files are compiled by a child).
    pub compiled_in_process: AtomicU64,
    /// Modules compiled by a child process and loaded from its artifact.
    pub compiled_in_child: AtomicU64,
    /// Precompiled artifacts loaded (the built-in policy's, or a `.cwasm` file).
    pub artifacts_loaded: AtomicU64,
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

    /// Load the policy built into the binary: its precompiled artifact, or, if that
    /// does not fit this host or build (logged), the component compiled here.
    pub fn load_builtin(&self) -> Result<Arc<PolicyModule>, PolicyError> {
        PolicyModule::builtin(&self.shared, artifact::BUILTIN_ARTIFACT)
    }

    /// Load a policy from a file: a precompiled artifact (`policy compile` output) as
    /// is, a component compiled as [`RuntimeConfig::compiler`] says (in a child
    /// process, or here if no private directory can be made for one). Slow (tens of
    /// ms to seconds): call it off the async runtime.
    pub fn load_file(&self, path: &std::path::Path) -> Result<Arc<PolicyModule>, PolicyError> {
        let origin = path.display().to_string();
        let read_error = |source| PolicyError::Read {
            path: origin.clone(),
            source,
        };
        let mut prefix = [0u8; 4];
        let prefix_len = {
            use std::io::Read as _;
            let mut file = std::fs::File::open(path).map_err(read_error)?;
            file.read(&mut prefix).map_err(read_error)?
        };
        if artifact::looks_like_artifact(&prefix[..prefix_len]) {
            match child::Staged::copy_of(path) {
                Ok(staged) => {
                    return PolicyModule::from_artifact(
                        &self.shared,
                        artifact::Artifact::Staged(&staged),
                        staged.sha256.clone(),
                        origin,
                        Code::Artifact,
                    );
                }
                Err(child::ChildError::Read(source)) => return Err(read_error(source)),
                // No private directory: load it from memory (all of it resident).
                Err(_) => {
                    let bytes = std::fs::read(path).map_err(read_error)?;
                    let sha256 = sha256_hex(&bytes);
                    return PolicyModule::from_artifact(
                        &self.shared,
                        artifact::Artifact::Bytes(&bytes),
                        sha256,
                        origin,
                        Code::Artifact,
                    );
                }
            }
        }
        if let Compiler::Child(child) = &self.shared.config.compiler {
            match child.compile(path) {
                Ok(staged) => {
                    return PolicyModule::from_artifact(
                        &self.shared,
                        artifact::Artifact::Staged(&staged),
                        staged.sha256.clone(),
                        origin,
                        Code::Child,
                    );
                }
                Err(child::ChildError::Read(source)) => return Err(read_error(source)),
                Err(child::ChildError::Failed(message)) => {
                    return Err(PolicyError::Compiler { origin, message });
                }
                Err(child::ChildError::NoPrivateDir(err)) => tracing::warn!(
                    error = %err,
                    module = %origin,
                    "no private directory for the compiler process (is $TMPDIR writable?); \
                     compiling the policy module in this process"
                ),
            }
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        PolicyModule::compile(&self.shared, &bytes, origin)
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
