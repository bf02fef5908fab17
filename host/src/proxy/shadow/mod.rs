//! The shadow policy: a second generation asked about every request after the live
//! decision, whose verdict never changes what happens to the request.
//!
//! [`ask`] is called on the request path with the live decision. It clones the request
//! and queues it for the shadow's own [`SHADOW_WORKERS`] threads: the live path never
//! waits for it, a slow or looping shadow never holds an async worker, and a steady
//! stream of requests is decided in batches, so the request path pays a lock and a
//! push rather than a thread wake-up per request ([`queue`]). At most `--shadow-queue`
//! requests (default [`DEFAULT_SHADOW_QUEUE`]) and [`SHADOW_BODY_BYTES`] of held
//! bodies are queued or being decided at once; a request that finds no room is not
//! shadowed, only counted (`dropped`). Each call is bounded by the shadow runtime's
//! own epoch deadline (`--policy-timeout`), and a trap or timeout is counted
//! (`faults`), never acted on. The shadow has its own runtime — its own instances and
//! its own rate-limit state — so nothing it does can spend the live policy's budgets.
//!
//! Both phases: when the live policy read the body, the shadow gets the same held
//! body for its own `decide-body`; when it did not and the shadow asks for one, the
//! answer is `no_body` (counted as `incomplete`: the body was streamed, not held).
//!
//! A disagreement is a different verdict kind (allow, inject, deny) from the live
//! policy's; the rules are shown but not compared (two policies may name rules
//! differently). The access line carries `shadow` (`agree`, `disagree`, `fault`,
//! `no_body`, `dropped`, or `pending` if the shadow had not answered when the line was
//! written — it then writes its own `shadow` line on the same target when it does),
//! `shadow_decision` and `shadow_rule`.

mod queue;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use self::queue::{Bounds, Pool};

use super::access::ACCESS_TARGET;
use crate::policy::{Decision, DenyKind, Generation, Head, PolicyBody, Request, Verdict};
use crate::reload::ReloadStatus;

/// Default of `--shadow-queue`: requests queued for the shadow or being decided by
/// it, at most; more are dropped and counted.
pub const DEFAULT_SHADOW_QUEUE: u32 = 256;
/// Body bytes held for the shadow at most (one request alone may hold more).
pub const SHADOW_BODY_BYTES: usize = 16 << 20;
/// Threads that run shadow calls.
pub const SHADOW_WORKERS: usize = 2;

/// One request for the shadow to decide.
struct Job {
    generation: Arc<Generation>,
    request: Request,
    body: Option<PolicyBody>,
    live: &'static str,
    live_rule: Option<String>,
    slot: Slot,
}

/// The shadow generation and what it has done.
#[derive(Debug)]
pub struct Shadow {
    generation: watch::Receiver<Arc<Generation>>,
    /// The workers and their queue; closed when the shadow is dropped.
    jobs: Arc<Pool<Job>>,
    /// The shadow reloader's status (identity, reload counts), for `/policy`.
    pub reload: Arc<ReloadStatus>,
    /// Counters, for `/policy` and `/metrics`.
    pub stats: Arc<ShadowStats>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// Disagreement counts by (live, shadow) verdict kind.
pub type Counts = BTreeMap<(&'static str, &'static str), u64>;

/// What the shadow did.
#[derive(Debug, Default)]
pub struct ShadowStats {
    /// Requests the shadow decided.
    pub decided: AtomicU64,
    /// Requests not shadowed because the queue was full.
    pub dropped: AtomicU64,
    /// Shadow calls that trapped or timed out.
    pub faults: AtomicU64,
    /// Requests whose body the shadow asked for but the live policy had not held.
    pub incomplete: AtomicU64,
    /// Disagreements by (live, shadow) verdict kind, since start.
    disagreements: Mutex<Counts>,
    /// The same, since the serving shadow generation (its number) was loaded.
    since_loaded: Mutex<(u64, Counts)>,
}

impl ShadowStats {
    /// Disagreements by (live, shadow), since start.
    pub fn disagreements(&self) -> Counts {
        lock(&self.disagreements).clone()
    }

    /// The shadow generation's number and its disagreements since it was loaded.
    pub fn since_loaded(&self) -> (u64, Counts) {
        lock(&self.since_loaded).clone()
    }

    fn disagreed(&self, generation: u64, live: &'static str, shadow: &'static str) {
        *lock(&self.disagreements).entry((live, shadow)).or_default() += 1;
        let mut since = lock(&self.since_loaded);
        if since.0 != generation {
            *since = (generation, BTreeMap::new());
        }
        *since.1.entry((live, shadow)).or_default() += 1;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shadow {
    /// A shadow deciding with the generations published on `generation`, queueing at
    /// most `queue` requests. Starts its [`SHADOW_WORKERS`] threads.
    pub fn new(
        generation: watch::Receiver<Arc<Generation>>,
        reload: Arc<ReloadStatus>,
        queue: usize,
    ) -> std::io::Result<Self> {
        let stats = Arc::new(ShadowStats::default());
        let bounds = Bounds {
            jobs: queue,
            bytes: SHADOW_BODY_BYTES,
        };
        let worker_stats = stats.clone();
        let jobs = Pool::start("shadow-policy", SHADOW_WORKERS, bounds, move |job| {
            run(job, &worker_stats);
        })?;
        Ok(Self {
            generation,
            jobs,
            reload,
            stats,
        })
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.jobs.close();
    }
}

/// The shadow's answer for one request, as the access line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Same verdict kind as the live policy.
    Agree(&'static str, Option<String>),
    /// Another verdict kind.
    Disagree(&'static str, Option<String>),
    /// The shadow trapped or timed out.
    Fault,
    /// The shadow asked for a body the live policy had not held.
    NoBody,
    /// Not shadowed: all shadow calls were busy.
    Dropped,
}

/// Where the shadow's answer lands; the access record reads it when it is written.
/// One lock around both halves, so exactly one of them reports a late answer: the
/// access line marks the slot `logged` when it shows `pending`, and an answer that
/// finds it so writes its own `shadow` line.
pub(crate) type Slot = Arc<Mutex<SlotState>>;

/// A [`Slot`]'s content.
#[derive(Debug, Default)]
pub(crate) struct SlotState {
    answer: Option<Answer>,
    /// The access line was written before the answer.
    logged: bool,
}

fn new_slot() -> Slot {
    Arc::new(Mutex::new(SlotState::default()))
}

/// Record the first answer; `true` if the access line was already written without it.
fn answer(slot: &Slot, answer: Answer) -> bool {
    let mut state = lock(slot);
    if state.answer.is_some() {
        return false;
    }
    state.answer = Some(answer);
    state.logged
}

/// The `shadow`, `shadow_decision` and `shadow_rule` fields of an access line
/// (`None` for a rule shows as `-`); no allocation without a shadow.
pub(crate) fn fields(slot: Option<&Slot>) -> (&'static str, &'static str, Option<String>) {
    let Some(slot) = slot else {
        return ("-", "-", None);
    };
    let mut state = lock(slot);
    match &state.answer {
        None => {
            state.logged = true;
            ("pending", "-", None)
        }
        Some(Answer::Agree(kind, rule)) => ("agree", kind, rule.clone()),
        Some(Answer::Disagree(kind, rule)) => ("disagree", kind, rule.clone()),
        Some(Answer::Fault) => ("fault", "-", None),
        Some(Answer::NoBody) => ("no_body", "-", None),
        Some(Answer::Dropped) => ("dropped", "-", None),
    }
}

/// The verdict kind of the live decision, as the policy gave it (an unavailable
/// credential was an inject).
fn live_kind(decision: &Decision) -> &'static str {
    match decision {
        Decision::Allow { .. } => "allow",
        Decision::Inject { .. } => "inject",
        Decision::Deny(denial) if denial.kind == DenyKind::CredentialUnavailable => "inject",
        Decision::Deny(_) => "deny",
    }
}

/// Ask the shadow, if there is one, about `request`, which the live policy decided
/// as `decision` (with `body` held, if it read one); the request is the shadow's
/// from here on. Returns at once.
pub(crate) fn ask(
    shadow: Option<&Arc<Shadow>>,
    request: Request,
    decision: &Decision,
    body: Option<PolicyBody>,
) -> Option<Slot> {
    let shadow = shadow?;
    let slot = new_slot();
    let live = live_kind(decision);
    let live_rule = match decision {
        Decision::Allow { rule, .. } | Decision::Inject { rule, .. } => rule.clone(),
        Decision::Deny(denial) => denial.rule.clone(),
    };
    let bytes = body.as_ref().map_or(0, |body| body.bytes.len());
    let job = Job {
        generation: shadow.generation.borrow().clone(),
        request,
        body,
        live,
        live_rule,
        slot: slot.clone(),
    };
    if shadow.jobs.push(job, bytes).is_err() {
        shadow.stats.dropped.fetch_add(1, Ordering::Relaxed);
        answer(&slot, Answer::Dropped);
    }
    Some(slot)
}

/// Decide one job; record the answer where the access line reads it, or — if the line
/// was already written — in a line of its own.
fn run(job: Job, stats: &ShadowStats) {
    let Job {
        generation,
        request,
        body,
        live,
        live_rule,
        slot,
    } = job;
    let answer = decide(stats, &generation, &request, body.as_ref(), live);
    let late = self::answer(&slot, answer.clone());
    if late && let Answer::Disagree(kind, rule) = &answer {
        tracing::info!(
            target: ACCESS_TARGET,
            method = %request.method,
            scheme = request.scheme.as_str(),
            host = %request.host,
            port = request.port,
            path = %request.path,
            decision = live,
            rule = live_rule.as_deref().unwrap_or("-"),
            shadow = "disagree",
            shadow_decision = *kind,
            shadow_rule = rule.as_deref().unwrap_or("-"),
            "shadow"
        );
    }
}

fn decide(
    stats: &ShadowStats,
    generation: &Generation,
    request: &Request,
    body: Option<&PolicyBody>,
    live: &'static str,
) -> Answer {
    let verdict = match (generation.evaluate_head(request), body) {
        (Head::Decided(verdict), _) => verdict,
        (Head::NeedBody(_), Some(body)) => generation.evaluate_body(request, body),
        (Head::NeedBody(_), None) => {
            stats.incomplete.fetch_add(1, Ordering::Relaxed);
            return Answer::NoBody;
        }
    };
    stats.decided.fetch_add(1, Ordering::Relaxed);
    if let Verdict::Deny(denial) = &verdict
        && denial.kind == DenyKind::PolicyFault
    {
        stats.faults.fetch_add(1, Ordering::Relaxed);
        return Answer::Fault;
    }
    let kind = verdict.kind();
    let rule = verdict.rule().map(str::to_owned);
    if kind == live {
        Answer::Agree(kind, rule)
    } else {
        stats.disagreed(generation.number(), live, kind);
        Answer::Disagree(kind, rule)
    }
}
