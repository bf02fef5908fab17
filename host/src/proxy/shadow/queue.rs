//! The shadow's work queue: requests wait here for the shadow's threads, which
//! batch them so that a steady stream of requests costs the request path no wake-up
//! per request.
//!
//! A worker that finds the queue empty after running jobs waits out a
//! [`BATCH_WINDOW`] before looking again, and nothing wakes it early: requests that
//! arrive meanwhile are only queued (a lock and a push). Only when every worker is
//! waiting with nothing to do does a push wake one — the first request after a
//! quiet spell is decided at once — or, when the queue grows to [`HELP_AFTER`] jobs
//! while a worker is busy with a slow call, a second worker is woken to help. A
//! worker whose window passes with nothing queued waits without a deadline, so an
//! idle proxy's shadow threads never wake.
//!
//! The queue is bounded by jobs queued or running and by the body bytes they hold
//! (one job is taken whatever its size when no other holds a body); a push beyond
//! either bound is refused (the caller counts it as dropped).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How long a worker that has just run jobs waits before taking the next batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(1);
/// Jobs queued behind a busy worker before an idle one is woken to help.
pub const HELP_AFTER: usize = 4;

/// What the queue holds at most.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Jobs queued or running.
    pub jobs: usize,
    /// Body bytes held by jobs queued or running (one job alone may hold more).
    pub bytes: usize,
}

/// A queue and the threads that run its jobs.
pub(super) struct Pool<J> {
    state: Mutex<State<J>>,
    wake: Condvar,
    bounds: Bounds,
}

struct State<J> {
    /// Queued jobs and the body bytes each holds.
    queued: VecDeque<(J, usize)>,
    /// Jobs queued or running.
    pending: usize,
    /// Body bytes held by jobs queued or running.
    bytes: usize,
    /// Workers waiting without a deadline.
    idle: usize,
    /// Of those, how many have been woken and not yet run: a push wakes another only
    /// if one is left (one wake-up per idle worker, not one per push until it runs).
    woken: usize,
    /// Workers waiting out a batching window.
    collecting: usize,
    /// No more jobs: workers finish what is queued and end.
    closed: bool,
    /// Times a push woke a worker (for tests of the batching).
    wakes: u64,
}

impl<J> std::fmt::Debug for Pool<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Pool")
            .field("pending", &state.pending)
            .field("bytes", &state.bytes)
            .field("bounds", &self.bounds)
            .finish_non_exhaustive()
    }
}

impl<J: Send + 'static> Pool<J> {
    /// A pool of `workers` threads named `name`, each calling `run` on the jobs it
    /// takes.
    pub(super) fn start(
        name: &str,
        workers: usize,
        bounds: Bounds,
        run: impl Fn(J) + Send + Sync + 'static,
    ) -> std::io::Result<Arc<Self>> {
        let pool = Arc::new(Self {
            state: Mutex::new(State {
                queued: VecDeque::new(),
                pending: 0,
                bytes: 0,
                idle: 0,
                woken: 0,
                collecting: 0,
                closed: false,
                wakes: 0,
            }),
            wake: Condvar::new(),
            bounds,
        });
        let run = Arc::new(run);
        for _ in 0..workers {
            let worker = pool.clone();
            let run = run.clone();
            let spawned = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || worker.work(&*run));
            if let Err(err) = spawned {
                pool.close();
                return Err(err);
            }
        }
        Ok(pool)
    }
}

impl<J> Pool<J> {
    fn lock(&self) -> MutexGuard<'_, State<J>> {
        // Every update leaves the counts consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue `job`, which holds `bytes` of body; gives it back if the queue is full
    /// or closed.
    pub(super) fn push(&self, job: J, bytes: usize) -> Result<(), J> {
        let mut state = self.lock();
        if state.closed
            || state.pending >= self.bounds.jobs
            || (state.bytes > 0 && state.bytes.saturating_add(bytes) > self.bounds.bytes)
        {
            return Err(job);
        }
        state.pending += 1;
        state.bytes += bytes;
        state.queued.push_back((job, bytes));
        let running = state.pending - state.queued.len();
        let wake = state.idle > state.woken
            && state.collecting == 0
            && (running == 0 || state.queued.len() >= HELP_AFTER);
        if wake {
            state.woken += 1;
            state.wakes += 1;
            // Under the lock: no worker can start collecting between the decision and
            // the wake-up, so it reaches an idle worker.
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Refuse new jobs; the workers end once the queue is empty.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Times a push woke a worker.
    #[cfg(test)]
    fn wakes(&self) -> u64 {
        self.lock().wakes
    }

    /// A worker: run queued jobs until the pool is closed and empty.
    fn work(&self, run: &dyn Fn(J)) {
        let mut state = self.lock();
        // Whether this worker ran a job since it last waited.
        let mut worked = false;
        loop {
            if let Some((job, bytes)) = state.queued.pop_front() {
                drop(state);
                run(job);
                worked = true;
                state = self.lock();
                state.pending -= 1;
                state.bytes -= bytes;
                continue;
            }
            if state.closed {
                return;
            }
            if worked {
                worked = false;
                state.collecting += 1;
                state = self
                    .wake
                    .wait_timeout(state, BATCH_WINDOW)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                state.collecting -= 1;
            } else {
                state.idle += 1;
                state = self
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                state.idle -= 1;
                state.woken = state.woken.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;

    const ROOMY: Bounds = Bounds {
        jobs: 1024,
        bytes: 1 << 20,
    };

    /// A pool whose jobs report their number on a channel after `delay`.
    fn pool(
        workers: usize,
        bounds: Bounds,
        delay: Duration,
    ) -> (Arc<Pool<u32>>, mpsc::Receiver<u32>) {
        let (done, finished) = mpsc::channel();
        let done = Mutex::new(done);
        let pool = Pool::start("test-pool", workers, bounds, move |n| {
            std::thread::sleep(delay);
            let _ = done.lock().unwrap().send(n);
        })
        .unwrap();
        (pool, finished)
    }

    fn wait_idle(pool: &Pool<u32>, workers: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.lock().idle < workers {
            assert!(Instant::now() < deadline, "the workers never went idle");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn jobs_pushed_while_a_worker_collects_wake_nobody() {
        let (pool, finished) = pool(2, ROOMY, Duration::ZERO);
        wait_idle(&pool, 2);
        pool.push(0, 0).unwrap();
        assert_eq!(finished.recv().unwrap(), 0);
        assert_eq!(pool.wakes(), 1, "the first job after quiet wakes a worker");
        // Back to back while that worker waits out its window: queued, not woken for
        // (a wake-up could only come from this thread stalling a whole window between
        // two pushes, with the queue drained meanwhile).
        for n in 1..=50 {
            pool.push(n, 0).unwrap();
        }
        let mut seen: Vec<u32> = (1..=50).map(|_| finished.recv().unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=50).collect::<Vec<_>>());
        let wakes = pool.wakes();
        assert!(wakes <= 4, "{wakes} wake-ups for 50 jobs");
    }

    #[test]
    fn the_first_job_after_a_quiet_spell_runs_at_once() {
        let (pool, finished) = pool(1, ROOMY, Duration::ZERO);
        wait_idle(&pool, 1);
        let pushed = Instant::now();
        pool.push(7, 0).unwrap();
        assert_eq!(finished.recv().unwrap(), 7);
        assert!(pushed.elapsed() < Duration::from_millis(500));
        assert_eq!(pool.wakes(), 1);
        // After its window the worker waits without a deadline again.
        wait_idle(&pool, 1);
    }

    #[test]
    fn a_slow_job_gets_a_helper_once_jobs_queue_behind_it() {
        let (pool, finished) = pool(2, ROOMY, Duration::from_millis(300));
        wait_idle(&pool, 2);
        let started = Instant::now();
        for n in 0..=HELP_AFTER as u32 {
            pool.push(n, 0).unwrap();
        }
        for _ in 0..=HELP_AFTER {
            finished.recv().unwrap();
        }
        // One worker alone would take (HELP_AFTER + 1) × 300 ms.
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(300) * u32::try_from(HELP_AFTER).unwrap(),
            "{took:?}"
        );
    }

    #[test]
    fn pushes_beyond_the_bounds_are_refused_and_the_room_comes_back() {
        let bounds = Bounds {
            jobs: 3,
            bytes: 100,
        };
        let (pool, finished) = pool(1, bounds, Duration::from_millis(100));
        pool.push(1, 60).unwrap();
        assert_eq!(pool.push(2, 41), Err(2), "over the byte bound");
        pool.push(3, 40).unwrap();
        pool.push(4, 0).unwrap();
        assert_eq!(pool.push(5, 0), Err(5), "over the job bound");
        for want in [1, 3, 4] {
            assert_eq!(finished.recv().unwrap(), want);
        }
        wait_idle(&pool, 1);
        let state = pool.lock();
        assert_eq!((state.pending, state.bytes), (0, 0));
        drop(state);
        pool.push(6, 100).unwrap();
        assert_eq!(finished.recv().unwrap(), 6);
    }

    #[test]
    fn closing_runs_what_is_queued_and_refuses_the_rest() {
        let (pool, finished) = pool(1, ROOMY, Duration::from_millis(20));
        for n in 0..5 {
            pool.push(n, 0).unwrap();
        }
        pool.close();
        assert_eq!(pool.push(9, 0), Err(9));
        let seen: Vec<u32> = finished.iter().collect();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }
}
