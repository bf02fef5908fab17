//! Hot reload: the policy module and the routes file, swapped together.
//!
//! A [`Reloader`] owns the sources (routes file, optional module file) and the
//! sending side of the watch channel the proxy reads generations from. A reload
//! reads both files, and only if a content hash changed (or on SIGHUP) builds a
//! complete new generation on a blocking thread — load the module (reused when only
//! the routes changed; compiled by a child process when the runtime says so, while
//! the current generation keeps serving), instantiate, `configure`, prewarm — then
//! publishes it in one step and retires the old one. Requests in flight keep the
//! `Arc` they started with, so no request ever sees module A with routes B. A failed reload keeps the
//! current generation, is logged at error level and counted.
//!
//! Triggers ([`Trigger`]): file-system events in the *directories* holding the
//! sources (so in-place writes, editor rename-into-place and the Kubernetes
//! ConfigMap `..data` symlink swap are all seen), SIGHUP (forces a rebuild), and a
//! periodic hash check as a safety net. [`Reloader::run`] handles triggers one at a
//! time and coalesces bursts (file events for [`DEBOUNCE`]): reloads never run
//! concurrently. Nothing here wakes the process on a timer except the periodic
//! check, every `--reload-interval`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::policy::{Generation, PolicyError, PolicyModule, Runtime, sha256_file, sha256_hex};
use crate::routes::{MAX_ROUTES_BYTES, RoutesDocument, RoutesError};
use crate::secrets::SecretSource;

/// How often the sources are hashed even without a file-system event.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// How long file-system events are gathered before one check: from the first event
/// of a burst (an editor's write and rename, a ConfigMap's symlink swap), so a
/// steady stream of events still gets a check every 50 ms.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// Configured instances created before a new generation is published.
const PREWARM: usize = 2;

/// Where the policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// The routes file.
    pub routes: PathBuf,
    /// The policy module; `None` is the built-in policy.
    pub policy: Option<PathBuf>,
}

/// Why a (re)load failed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The routes file is unreadable or invalid.
    #[error(transparent)]
    Routes(#[from] RoutesError),
    /// The module file cannot be read.
    #[error("cannot read policy module {}: {source}", path.display())]
    ReadModule {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The module or the routes were refused by the runtime or the policy.
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// The build thread failed.
    #[error("reload task failed: {0}")]
    Task(String),
}

/// What caused a reload check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A file-system event in a watched directory; [`Reloader::run`] waits
    /// [`DEBOUNCE`] for the rest of its burst before the check.
    FileEvent,
    /// SIGHUP: rebuild even if nothing changed.
    Signal,
    /// The periodic safety-net check.
    Periodic,
}

/// The result of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Hashes unchanged and not forced: nothing done.
    Unchanged,
    /// A new generation (its number) is serving.
    Reloaded(u64),
}

/// What is loaded now and how reloads went; shared with the admin endpoints.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    /// Reloads that published a new generation.
    pub succeeded: AtomicU64,
    /// Reloads that failed (the previous generation kept serving).
    pub failed: AtomicU64,
    /// The serving generation's number (1 at start-up).
    pub generation: AtomicU64,
    current: Mutex<Loaded>,
    last_error: Mutex<Option<String>>,
}

/// Identity of the serving generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// sha256 of the module (the built-in one's included).
    pub module_sha256: String,
    /// sha256 of the routes file.
    pub routes_sha256: String,
    /// When it was published.
    pub loaded_at: Option<SystemTime>,
    /// Secret names it declared.
    pub secrets: Vec<String>,
}

impl ReloadStatus {
    /// The serving generation's identity.
    pub fn current(&self) -> Loaded {
        lock(&self.current).clone()
    }

    /// The last reload error, if the last reload failed.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Owns the sources and publishes generations.
#[derive(Debug)]
pub struct Reloader {
    runtime: Runtime,
    sources: Sources,
    secrets: Arc<dyn SecretSource>,
    publish: watch::Sender<Arc<Generation>>,
    module: Arc<PolicyModule>,
    module_file_sha: Option<String>,
    routes_sha: String,
    /// The (module, routes) hashes of the last failed attempt: the same bad content is
    /// not retried (and re-reported) until it changes or SIGHUP forces it.
    failed_hashes: Option<(Option<String>, String)>,
    status: Arc<ReloadStatus>,
}

/// The files as read for one check.
/// Raw bytes and hashes only: parsing and compiling come after the hash gate, so the
/// same bad content is neither rebuilt nor re-reported.
struct Snapshot {
    routes_path: PathBuf,
    routes_bytes: Vec<u8>,
    routes_sha: String,
    module: Option<ModuleFile>,
}

/// The module file as hashed for one check (read in pieces, never whole: it is loaded
/// from its path only if the hash gate passes).
struct ModuleFile {
    path: PathBuf,
    sha256: String,
}

impl Sources {
    fn read(&self) -> Result<Snapshot, ReloadError> {
        let read_error = |source| RoutesError::Read {
            path: self.routes.clone(),
            source,
        };
        let size = std::fs::metadata(&self.routes).map_err(read_error)?.len();
        if size > MAX_ROUTES_BYTES {
            return Err(RoutesError::TooLarge {
                path: self.routes.clone(),
                size,
            }
            .into());
        }
        let routes_bytes = std::fs::read(&self.routes).map_err(read_error)?;
        let routes_sha = sha256_hex(&routes_bytes);
        let module = match &self.policy {
            None => None,
            Some(path) => {
                let sha256 = sha256_file(path).map_err(|source| ReloadError::ReadModule {
                    path: path.clone(),
                    source,
                })?;
                Some(ModuleFile {
                    path: path.clone(),
                    sha256,
                })
            }
        };
        Ok(Snapshot {
            routes_path: self.routes.clone(),
            routes_bytes,
            routes_sha,
            module,
        })
    }

    /// The directories to watch (each once).
    pub fn directories(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for file in std::iter::once(&self.routes).chain(self.policy.as_ref()) {
            let dir = match file.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
                _ => PathBuf::from("."),
            };
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }
}

impl Reloader {
    /// Load the first generation (blocking: call before serving). An error here is a
    /// start-up failure.
    pub fn start(
        runtime: Runtime,
        sources: Sources,
        secrets: Arc<dyn SecretSource>,
    ) -> Result<(Self, watch::Receiver<Arc<Generation>>), ReloadError> {
        let snapshot = sources.read()?;
        let (module, generation) = build(&runtime, None, &snapshot, &secrets)?;
        let status = Arc::new(ReloadStatus::default());
        let generation = Arc::new(generation);
        record_loaded(&status, &generation, &snapshot.routes_sha, 1);
        let (publish, receiver) = watch::channel(generation);
        let reloader = Self {
            runtime,
            secrets,
            publish,
            module,
            module_file_sha: snapshot.module.map(|m| m.sha256),
            routes_sha: snapshot.routes_sha,
            failed_hashes: None,
            status,
            sources,
        };
        Ok((reloader, receiver))
    }

    /// The shared status (for the admin endpoints and tests).
    pub fn status(&self) -> &Arc<ReloadStatus> {
        &self.status
    }

    /// The sources.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// Check the sources and rebuild if a hash changed (or `force`). On failure the
    /// current generation stays, the error is recorded and counted.
    pub async fn reload(&mut self, force: bool) -> Result<Outcome, ReloadError> {
        let result = self.try_reload(force).await;
        match &result {
            Ok(Outcome::Reloaded(_)) => {
                self.status.succeeded.fetch_add(1, Ordering::Relaxed);
                *lock(&self.status.last_error) = None;
            }
            Ok(Outcome::Unchanged) => {}
            Err(err) => {
                self.status.failed.fetch_add(1, Ordering::Relaxed);
                *lock(&self.status.last_error) = Some(err.to_string());
            }
        }
        result
    }

    async fn try_reload(&mut self, force: bool) -> Result<Outcome, ReloadError> {
        let started = Instant::now();
        let sources = self.sources.clone();
        let snapshot = tokio::task::spawn_blocking(move || sources.read())
            .await
            .map_err(|e| ReloadError::Task(e.to_string()))??;
        let module_sha = snapshot.module.as_ref().map(|m| m.sha256.clone());
        let module_changed = module_sha != self.module_file_sha;
        let hashes = (module_sha.clone(), snapshot.routes_sha.clone());
        let unchanged = !module_changed && snapshot.routes_sha == self.routes_sha;
        if !force && (unchanged || self.failed_hashes.as_ref() == Some(&hashes)) {
            return Ok(Outcome::Unchanged);
        }
        self.failed_hashes = Some(hashes);
        let runtime = self.runtime.clone();
        let reuse = (!module_changed).then(|| self.module.clone());
        let secrets = self.secrets.clone();
        let (module, generation, snapshot) = tokio::task::spawn_blocking(move || {
            build(&runtime, reuse, &snapshot, &secrets).map(|(m, g)| (m, g, snapshot))
        })
        .await
        .map_err(|e| ReloadError::Task(e.to_string()))??;
        let number = self.status.generation.load(Ordering::Relaxed) + 1;
        let generation = Arc::new(generation.numbered(number));
        record_loaded(&self.status, &generation, &snapshot.routes_sha, number);
        let previous = self.publish.send_replace(generation);
        previous.retire();
        self.failed_hashes = None;
        self.module = module;
        self.module_file_sha = module_sha;
        self.routes_sha = snapshot.routes_sha;
        tracing::info!(
            generation = number,
            module_sha256 = %self.module.sha256(),
            routes_sha256 = %self.routes_sha,
            module_changed,
            policy_compiled = self.module.code().as_str(),
            took_ms = started.elapsed().as_millis() as u64,
            "policy reloaded"
        );
        Ok(Outcome::Reloaded(number))
    }

    /// Handle triggers until `shutdown`: one check at a time, bursts coalesced (a
    /// file event waits [`DEBOUNCE`] for the rest of its burst; triggers that arrive
    /// while a check runs make one more check).
    pub async fn run(
        mut self,
        mut triggers: mpsc::UnboundedReceiver<Trigger>,
        shutdown: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                trigger = triggers.recv() => match trigger {
                    Some(trigger) => trigger,
                    None => return,
                },
                () = shutdown.cancelled() => return,
            };
            // A one-shot timer per burst, not a debouncer thread ticking forever.
            if first == Trigger::FileEvent {
                tokio::select! {
                    () = tokio::time::sleep(DEBOUNCE) => {}
                    () = shutdown.cancelled() => return,
                }
            }
            let mut force = first == Trigger::Signal;
            while let Ok(more) = triggers.try_recv() {
                force |= more == Trigger::Signal;
            }
            match self.reload(force).await {
                Ok(Outcome::Unchanged) => {
                    tracing::debug!(trigger = ?first, "policy sources unchanged")
                }
                Ok(Outcome::Reloaded(_)) => {}
                Err(err) => tracing::error!(
                    error = %err,
                    trigger = ?first,
                    "policy reload failed; the previous generation keeps serving"
                ),
            }
        }
    }
}

fn build(
    runtime: &Runtime,
    reuse: Option<Arc<PolicyModule>>,
    snapshot: &Snapshot,
    secrets: &Arc<dyn SecretSource>,
) -> Result<(Arc<PolicyModule>, Generation), ReloadError> {
    let module = match (reuse, &snapshot.module) {
        (Some(module), _) => module,
        (None, None) => runtime.load_builtin()?,
        (None, Some(file)) => runtime.load_file(&file.path)?,
    };
    let routes = RoutesDocument::from_bytes(&snapshot.routes_bytes, &snapshot.routes_path)?;
    let generation = module.configure(&routes.json, secrets.clone())?;
    generation.prewarm(PREWARM)?;
    Ok((module, generation))
}

fn record_loaded(status: &ReloadStatus, generation: &Generation, routes_sha: &str, number: u64) {
    *lock(&status.current) = Loaded {
        module_sha256: generation.module().sha256().to_owned(),
        routes_sha256: routes_sha.to_owned(),
        loaded_at: Some(SystemTime::now()),
        secrets: generation.summary().secrets.iter().cloned().collect(),
    };
    status.generation.store(number, Ordering::Relaxed);
}

/// Watch the sources' directories: every file-system event but an access (each
/// check reads the files, which raises those) sends one [`Trigger::FileEvent`], and
/// [`Reloader::run`] gathers a burst of them into one check. Keep the returned
/// watcher alive for as long as events are wanted. Its one thread (notify's inotify
/// loop) blocks until the kernel has an event: no timer.
pub fn watch_sources(
    sources: &Sources,
    triggers: mpsc::UnboundedSender<Trigger>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    use notify::{RecursiveMode, Watcher};
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if event.kind.is_access() => {}
            Ok(_) => {
                let _ = triggers.send(Trigger::FileEvent);
            }
            Err(err) => {
                tracing::warn!(error = %err, "file watch error; the periodic check still runs");
                let _ = triggers.send(Trigger::FileEvent);
            }
        })?;
    for dir in sources.directories() {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// Send [`Trigger::Periodic`] every `interval` until the receiver is gone: the only
/// timer this module keeps while nothing happens (tokio's `interval` arms one timer
/// at a time; `Delay` means a late tick is not followed by a burst of catch-up ticks).
pub async fn poll(interval: Duration, triggers: mpsc::UnboundedSender<Trigger>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if triggers.send(Trigger::Periodic).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_the_parents_once() {
        let sources = Sources {
            routes: PathBuf::from("/etc/egress-proxy/routes.yaml"),
            policy: Some(PathBuf::from("/etc/egress-proxy/policy.wasm")),
        };
        assert_eq!(sources.directories(), [PathBuf::from("/etc/egress-proxy")]);
        let sources = Sources {
            routes: PathBuf::from("routes.yaml"),
            policy: Some(PathBuf::from("/opt/p/policy.wasm")),
        };
        assert_eq!(
            sources.directories(),
            [PathBuf::from("."), PathBuf::from("/opt/p")]
        );
    }
}
