//! A generation: one module configured with one routes document, and a pool of
//! configured instances that `decide` checks out, calls, and returns.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use wasmtime::component::Resource;
use wasmtime::{Store, Trap};

use super::bindings::{Policy, wit};
use super::engine::{RuntimeConfig, StoreData};
use super::headers::RequestHeaders;
use super::module::PolicyModule;
use super::verdict::{Decision, Denial, DenyKind, Validator, Verdict};
use super::{PolicyError, PolicyStats, Request, convert};
use crate::secrets::{SecretSource, is_valid_name};

/// What the policy reported about the routes document it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Number of rules (routes).
    pub rules: u32,
    /// Secret names the policy may reference, sorted; the host resolves only these.
    pub secrets: BTreeSet<String>,
}

/// One configured instance: its store and the handles to its exports.
struct Instance {
    store: Store<StoreData>,
    policy: Policy,
}

impl Instance {
    /// Call `decide` under a fresh deadline. The headers are lent to the guest as a
    /// resource for the call and taken back afterwards, so the instance keeps nothing
    /// of this request; if they cannot be taken back the call counts as failed.
    fn decide(&mut self, req: &Request, timeout: Duration) -> wasmtime::Result<wit::Verdict> {
        self.store.set_epoch_deadline(RuntimeConfig::ticks(timeout));
        let table = &mut self.store.data_mut().table;
        let headers = table.push(RequestHeaders(Arc::clone(&req.headers)))?;
        let result = self.policy.egress_policy_decider().call_decide(
            &mut self.store,
            convert::request(req),
            Resource::new_borrow(headers.rep()),
        );
        self.store.data_mut().table.delete(headers)?;
        result
    }
}

/// A module configured with one routes document. Build with
/// [`PolicyModule::configure`]; share as `Arc<Generation>`.
pub struct Generation {
    module: Arc<PolicyModule>,
    routes: Arc<str>,
    summary: Summary,
    secrets: Arc<dyn SecretSource>,
    idle: Mutex<Vec<Instance>>,
    retired: AtomicBool,
    number: u64,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("module", &self.module)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl PolicyModule {
    /// Configure this module with a routes document (JSON text): instantiate it, call
    /// `configure`, and keep that instance as the first of the pool. An `Err` means the
    /// routes or the module are unusable; the message says why.
    pub fn configure(
        self: &Arc<Self>,
        routes_json: &str,
        secrets: Arc<dyn SecretSource>,
    ) -> Result<Generation, PolicyError> {
        let routes: Arc<str> = Arc::from(routes_json);
        let (instance, summary) = new_instance(self, &routes)?;
        let summary = check_summary(summary)?;
        Ok(Generation {
            module: Arc::clone(self),
            routes,
            summary,
            secrets,
            idle: Mutex::new(vec![instance]),
            retired: AtomicBool::new(false),
            number: 1,
        })
    }
}

impl Generation {
    /// This generation with its number (1 at start-up, +1 per reload); the access
    /// log records it with every decision.
    pub fn numbered(mut self, number: u64) -> Self {
        self.number = number;
        self
    }

    /// The generation's number.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The module this generation runs.
    pub fn module(&self) -> &Arc<PolicyModule> {
        &self.module
    }

    /// What `configure` reported.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The routes document (JSON) the instances were configured with.
    pub fn routes_json(&self) -> &str {
        &self.routes
    }

    /// Create instances until `count` are idle, so the first requests do not pay for
    /// instantiation. Stops at the first failure and returns it.
    pub fn prewarm(&self, count: usize) -> Result<(), PolicyError> {
        let count = count.min(self.config().max_idle_instances);
        while self.lock_idle().len() < count {
            let (instance, _) = new_instance(&self.module, &self.routes)?;
            self.lock_idle().push(instance);
        }
        Ok(())
    }

    /// Stop reusing instances: drop the idle ones now, and each busy one when it is
    /// returned. Called when a newer generation replaces this one; calls still in
    /// flight complete normally.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.lock_idle().clear();
    }

    /// Idle instances in the pool.
    pub fn idle_instances(&self) -> usize {
        self.lock_idle().len()
    }

    /// Ask the policy about one request and resolve the secrets it references: what
    /// the proxy acts on. Never fails: any fault is a deny.
    pub fn decide(&self, req: &Request) -> Decision {
        self.evaluate(req).resolve(self.secrets.as_ref())
    }

    /// Ask the policy about one request; secret references stay unresolved (for
    /// `policy eval` and `policy test`). A trap, a timeout or an unusable verdict
    /// denies the request; a faulted instance is discarded and counted.
    pub fn evaluate(&self, req: &Request) -> Verdict {
        PolicyStats::bump(&self.stats().decisions);
        let mut instance = match self.checkout() {
            Ok(instance) => instance,
            Err(err) => {
                tracing::error!(error = %err, "cannot create a policy instance; denying");
                return fault("the egress policy could not be started");
            }
        };
        let outcome = {
            let _call = self.module.shared.enter();
            instance.decide(req, self.config().decide_timeout)
        };
        match outcome {
            Ok(raw) => {
                let verdict = self.validate(raw, req);
                self.checkin(instance);
                verdict
            }
            Err(err) => self.discard(instance, &err, req),
        }
    }

    /// Map the guest's verdict to the domain, refusing what the host will not act on.
    fn validate(&self, raw: wit::Verdict, req: &Request) -> Verdict {
        let validator = Validator {
            declared: &self.summary.secrets,
        };
        let verdict = convert::verdict(raw, &validator);
        if let Verdict::Deny(Denial {
            kind: DenyKind::InvalidVerdict,
            reason,
            ..
        }) = &verdict
        {
            PolicyStats::bump(&self.stats().invalid_verdicts);
            tracing::warn!(%reason, host = %req.host, "policy verdict refused");
        }
        verdict
    }

    /// A call failed: drop the instance (its store is unusable after a trap) and deny.
    fn discard(&self, instance: Instance, err: &wasmtime::Error, req: &Request) -> Verdict {
        drop(instance);
        let stats = self.stats();
        PolicyStats::bump(&stats.instances_discarded);
        if matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            PolicyStats::bump(&stats.timeouts);
            tracing::warn!(host = %req.host, "policy decide() timed out; denying");
            fault("the egress policy timed out deciding this request")
        } else {
            PolicyStats::bump(&stats.traps);
            tracing::warn!(host = %req.host, error = %format!("{err:#}"), "policy decide() failed; denying");
            fault("the egress policy failed while deciding this request")
        }
    }

    fn checkout(&self) -> Result<Instance, PolicyError> {
        if let Some(instance) = self.lock_idle().pop() {
            return Ok(instance);
        }
        new_instance(&self.module, &self.routes).map(|(instance, _)| instance)
    }

    fn checkin(&self, instance: Instance) {
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() < self.config().max_idle_instances {
            idle.push(instance);
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Instance>> {
        // The pool holds no invariant a panic could break: take it even if poisoned.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn config(&self) -> &RuntimeConfig {
        &self.module.shared.config
    }

    fn stats(&self) -> &PolicyStats {
        &self.module.shared.stats
    }
}

fn fault(reason: &str) -> Verdict {
    Verdict::Deny(Denial::host(
        DenyKind::PolicyFault,
        format!("{reason}; request denied (fail closed)"),
        None,
    ))
}

/// Instantiate and configure one instance. Runs guest code under the configure
/// deadline and memory limit.
fn new_instance(
    module: &Arc<PolicyModule>,
    routes: &str,
) -> Result<(Instance, wit::Summary), PolicyError> {
    let shared = &module.shared;
    let start_error = |e: wasmtime::Error| PolicyError::Start {
        origin: module.origin().to_owned(),
        message: if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            format!(
                "timed out after {:?} (configure timeout)",
                shared.config.configure_timeout
            )
        } else {
            format!("{e:#}")
        },
    };
    let _call = shared.enter();
    let mut store = shared.new_store(shared.config.configure_timeout);
    let policy = module.pre.instantiate(&mut store).map_err(start_error)?;
    let summary = policy
        .egress_policy_decider()
        .call_configure(&mut store, routes)
        .map_err(start_error)?
        .map_err(|msg| PolicyError::Rejected(Validator::text(&msg)))?;
    PolicyStats::bump(&shared.stats.instances_created);
    Ok((Instance { store, policy }, summary))
}

fn check_summary(raw: wit::Summary) -> Result<Summary, PolicyError> {
    let mut secrets = BTreeSet::new();
    for name in raw.secrets {
        if !is_valid_name(&name) {
            return Err(PolicyError::BadSummary(format!(
                "`{}` is not a valid secret name (expected [A-Za-z_][A-Za-z0-9_]*)",
                Validator::text(&name)
            )));
        }
        secrets.insert(name);
    }
    Ok(Summary {
        rules: raw.rules,
        secrets,
    })
}
