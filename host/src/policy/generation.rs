//! A generation: one module configured with one routes document, and a pool of
//! configured instances that `decide` checks out, calls, and returns.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::body::PolicyBody;
use super::engine::RuntimeConfig;
use super::instance::{Instance, RawSummary};
use super::module::PolicyModule;
use super::validate::Validator;
use super::verdict::{Decision, Denial, DenyKind, Head, Verdict};
use super::{PolicyError, PolicyStats, Request};
use crate::secrets::{SecretSource, is_valid_name};

/// What the policy reported about the routes document it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Number of rules (routes).
    pub rules: u32,
    /// Secret names the policy may reference, sorted; the host resolves only these.
    pub secrets: BTreeSet<String>,
    /// The rule ids the policy reported (empty for a 0.1.0 guest), in its order.
    pub rule_ids: Vec<String>,
}

/// Which guest call failed, for messages.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Head,
    Body,
}

impl Phase {
    fn export(self) -> &'static str {
        match self {
            Phase::Head => "decide()",
            Phase::Body => "decide-body()",
        }
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
        let (instance, summary) = Instance::start(self, &routes)?;
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
            let (instance, _) = Instance::start(&self.module, &self.routes)?;
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

    /// The head phase, secrets resolved: what the proxy acts on, or the body the
    /// policy needs first. Never fails: any fault is a deny.
    pub fn decide(&self, req: &Request) -> Head<Decision> {
        match self.evaluate_head(req) {
            Head::Decided(verdict) => Head::Decided(verdict.resolve(self.secrets.as_ref())),
            Head::NeedBody(need) => Head::NeedBody(need),
        }
    }

    /// The body phase, secrets resolved.
    pub fn decide_body(&self, req: &Request, body: &PolicyBody) -> Decision {
        self.evaluate_body(req, body).resolve(self.secrets.as_ref())
    }

    /// Both phases for a request without a body: the head, then — if the policy asks
    /// for the body — `decide-body` with an empty, complete one. Secret references
    /// stay unresolved. (`cases::evaluate` decides a request with a body.)
    pub fn evaluate(&self, req: &Request) -> Verdict {
        match self.evaluate_head(req) {
            Head::Decided(verdict) => verdict,
            Head::NeedBody(_) => {
                self.evaluate_body(req, &PolicyBody::complete(bytes::Bytes::new()))
            }
        }
    }

    /// Ask the policy about one request's head; secret references stay unresolved (for
    /// `policy eval` and `policy test`). A trap, a timeout or an unusable verdict
    /// denies the request; a faulted instance is discarded and counted. `need-body` for
    /// a CONNECT is refused: a tunnel has no body.
    pub fn evaluate_head(&self, req: &Request) -> Head<Verdict> {
        PolicyStats::bump(&self.stats().decisions);
        let timeout = self.config().decide_timeout;
        match self.call(req, Phase::Head, |instance, validator| {
            instance.decide(req, timeout, validator)
        }) {
            Head::NeedBody(_) if req.is_connect() => {
                Head::Decided(self.invalid(req, "it asked for the body of a CONNECT"))
            }
            head => head,
        }
    }

    /// Ask the policy about a request it wanted the body of; secret references stay
    /// unresolved. Faults deny as in [`Generation::evaluate_head`]; `need-body` here
    /// is an invalid verdict.
    pub fn evaluate_body(&self, req: &Request, body: &PolicyBody) -> Verdict {
        PolicyStats::bump(&self.stats().body_decisions);
        let timeout = self.config().decide_body_timeout;
        match self.call(req, Phase::Body, |instance, validator| {
            instance.decide_body(req, body, timeout, validator)
        }) {
            Head::Decided(verdict) => verdict,
            Head::NeedBody(_) => self.invalid(req, "decide-body answered need-body"),
        }
    }

    /// Check out an instance, make one guest call on it, and check it back in; a
    /// failed call discards the instance and denies.
    fn call(
        &self,
        req: &Request,
        phase: Phase,
        guest: impl FnOnce(&mut Instance, &Validator<'_>) -> wasmtime::Result<Head<Verdict>>,
    ) -> Head<Verdict> {
        let mut instance = match self.checkout() {
            Ok(instance) => instance,
            Err(err) => {
                tracing::error!(error = %err, "cannot create a policy instance; denying");
                return Head::Decided(fault("the egress policy could not be started"));
            }
        };
        let validator = Validator {
            declared: &self.summary.secrets,
        };
        // A host function the guest calls may panic: WASI's blocking stream calls
        // (a guest printing, or a Rust guest's panic message) need to block on tokio,
        // which a tokio worker cannot. The panic unwinds out of the guest; the
        // instance is discarded and the request denied, as for a trap.
        let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // The epoch ticks only while a guest call is in progress.
            let _call = self.module.shared.enter();
            guest(&mut instance, &validator)
        }));
        let result = called.unwrap_or_else(|_| {
            Err(wasmtime::Error::msg(
                "a host call made by the guest panicked (WASI stdio written from a request task?)",
            ))
        });
        match result {
            Ok(head) => {
                self.checkin(instance);
                if let Head::Decided(Verdict::Deny(Denial {
                    kind: DenyKind::InvalidVerdict,
                    reason,
                    ..
                })) = &head
                {
                    PolicyStats::bump(&self.stats().invalid_verdicts);
                    tracing::warn!(%reason, host = %req.host, "policy verdict refused");
                }
                head
            }
            Err(err) => Head::Decided(self.discard(instance, &err, req, phase)),
        }
    }

    /// A verdict the host refuses, counted and logged.
    fn invalid(&self, req: &Request, why: &str) -> Verdict {
        PolicyStats::bump(&self.stats().invalid_verdicts);
        tracing::warn!(reason = why, host = %req.host, "policy verdict refused");
        Verdict::Deny(Denial::host(
            DenyKind::InvalidVerdict,
            format!("the egress policy returned an invalid verdict: {why}"),
            None,
        ))
    }

    /// A call failed: drop the instance (its store is unusable after a trap) and deny.
    fn discard(
        &self,
        instance: Instance,
        err: &wasmtime::Error,
        req: &Request,
        phase: Phase,
    ) -> Verdict {
        drop(instance);
        let stats = self.stats();
        PolicyStats::bump(&stats.instances_discarded);
        let export = phase.export();
        if super::is_timeout(err) {
            PolicyStats::bump(&stats.timeouts);
            tracing::warn!(host = %req.host, "policy {export} timed out; denying");
            fault("the egress policy timed out deciding this request")
        } else {
            PolicyStats::bump(&stats.traps);
            tracing::warn!(host = %req.host, error = %format!("{err:#}"), "policy {export} failed; denying");
            fault("the egress policy failed while deciding this request")
        }
    }

    fn checkout(&self) -> Result<Instance, PolicyError> {
        if let Some(instance) = self.lock_idle().pop() {
            return Ok(instance);
        }
        Instance::start(&self.module, &self.routes).map(|(instance, _)| instance)
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

    /// The runtime limits this generation's calls run under.
    pub fn config(&self) -> &RuntimeConfig {
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

fn check_summary(raw: RawSummary) -> Result<Summary, PolicyError> {
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
    let rule_ids = raw.rule_ids.iter().map(|id| Validator::text(id)).collect();
    Ok(Summary {
        rules: raw.rules,
        secrets,
        rule_ids,
    })
}
