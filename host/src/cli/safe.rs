//! `run` flags for changing a policy safely: report mode and the shadow policy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::LimitArgs;
use crate::policy::{Generation, Runtime};
use crate::proxy::{DEFAULT_SHADOW_QUEUE, Enforcement, Proxy, Shadow};
use crate::reload::{self, Reloader, Sources};
use crate::secrets::SecretSource;

/// Instance slots of the shadow's own runtime: enough for its concurrent calls, its
/// idle instances and a reload's overlap, without reserving as much address space as
/// the live pool.
const SHADOW_INSTANCE_SLOTS: u32 = 32;

/// Report mode and the shadow policy.
#[derive(Debug, Args)]
pub struct SafeArgs {
    /// `enforce` (deny what the policy denies) or `report` (forward it and log it as
    /// `would_deny`; faults, the address guard, framing checks and limits still
    /// refuse).
    #[arg(long, env = "EGRESS_PROXY_ENFORCEMENT", value_enum, default_value_t)]
    pub enforcement: Enforcement,
    /// Routes file of a shadow policy: asked about every request after the live one,
    /// its verdicts only recorded (disagreements in the access log, metrics and
    /// `/policy`). Reloaded like the live routes.
    #[arg(long, env = "EGRESS_PROXY_SHADOW_ROUTES")]
    pub shadow_routes: Option<PathBuf>,
    /// Policy component of the shadow; default: the built-in policy.
    #[arg(long, env = "EGRESS_PROXY_SHADOW_POLICY", requires = "shadow_routes")]
    pub shadow_policy: Option<PathBuf>,
    /// Requests queued for the shadow or being decided by it, at most; a request that
    /// finds the queue full is not shadowed (counted as dropped).
    #[arg(long, env = "EGRESS_PROXY_SHADOW_QUEUE", default_value_t = DEFAULT_SHADOW_QUEUE,
          value_parser = clap::value_parser!(u32).range(1..=65_536),
          requires = "shadow_routes")]
    pub shadow_queue: u32,
}

/// A shadow generation loaded at start-up, not yet serving.
pub(super) struct ShadowStart {
    reloader: Reloader,
    generations: watch::Receiver<Arc<Generation>>,
}

/// Load the shadow's first generation (blocking; before anything binds), in a runtime
/// of its own: its own instances and its own rate-limit state, so nothing it does
/// spends the live policy's budgets. A bad shadow is a start-up error like a bad live
/// policy.
pub(super) fn load_shadow(
    args: &SafeArgs,
    limits: &LimitArgs,
    secrets: Arc<dyn SecretSource>,
) -> Result<Option<ShadowStart>> {
    let Some(routes) = &args.shadow_routes else {
        return Ok(None);
    };
    let mut config = limits.runtime_config();
    config.instance_slots = config.instance_slots.min(SHADOW_INSTANCE_SLOTS);
    let runtime = Runtime::new(config).context("shadow policy")?;
    let sources = Sources {
        routes: routes.clone(),
        policy: args.shadow_policy.clone(),
    };
    let (reloader, generations) =
        Reloader::start(runtime, sources, secrets).context("shadow policy")?;
    Ok(Some(ShadowStart {
        reloader,
        generations,
    }))
}

/// Attach the shadow to `proxy` and keep it reloaded like the live policy (file
/// events, the periodic check, SIGHUP) until `stop`. Keep the returned watcher alive.
pub(super) fn serve_shadow(
    start: ShadowStart,
    queue: u32,
    proxy: &Proxy,
    interval: Duration,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Option<notify::RecommendedWatcher>> {
    let ShadowStart {
        reloader,
        generations,
    } = start;
    let generation = generations.borrow().clone();
    let shadow = Shadow::new(generations, reloader.status().clone(), queue as usize)
        .context("cannot start the shadow policy's threads")?;
    proxy.set_shadow(Arc::new(shadow));
    tracing::info!(
        policy = %generation.module().origin(),
        policy_sha256 = %generation.module().sha256(),
        routes = %reloader.sources().routes.display(),
        rules = generation.summary().rules,
        "shadow policy loaded: its verdicts are recorded, never acted on"
    );
    let (triggers, receiver) = tokio::sync::mpsc::unbounded_channel();
    tasks.spawn(super::run::forward_sighup(triggers.clone(), stop.clone())?);
    let watcher = match reload::watch_sources(reloader.sources(), triggers.clone()) {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch the shadow policy files; reloading on SIGHUP and every poll interval only");
            None
        }
    };
    tasks.spawn(reload::poll(interval, triggers));
    tasks.spawn(reloader.run(receiver, stop.clone()));
    Ok(watcher)
}

/// The warning report mode gives at start-up and on every reload.
const REPORT_WARNING: &str = "REPORT MODE: the policy's denials are logged as would_deny and the requests FORWARDED; run with --enforcement enforce to enforce the policy";

/// Warn at start-up in report mode.
pub(super) fn warn_at_start(enforcement: Enforcement) {
    if enforcement == Enforcement::Report {
        tracing::warn!(enforcement = enforcement.as_str(), "{REPORT_WARNING}");
    }
}

/// In report mode, warn again each time a new generation is published, until `stop`.
pub(super) async fn warn_on_reload(
    enforcement: Enforcement,
    mut generations: watch::Receiver<Arc<Generation>>,
    stop: CancellationToken,
) {
    if enforcement != Enforcement::Report {
        return;
    }
    loop {
        tokio::select! {
            changed = generations.changed() => {
                if changed.is_err() {
                    return;
                }
                let number = generations.borrow_and_update().number();
                tracing::warn!(enforcement = enforcement.as_str(), generation = number, "{REPORT_WARNING}");
            }
            () = stop.cancelled() => return,
        }
    }
}
