//! Where access lines go: a buffer that one writer thread empties into stderr, so a
//! steady stream of requests costs one `write` per millisecond rather than one per
//! request (with every line a pipe or a terminal wakes its reader).
//!
//! A request appends its finished line under a lock. The writer, woken by the first
//! line after a quiet spell, writes at once, then waits [`WINDOW`] before writing
//! what has gathered meanwhile (nothing wakes it early); a window with nothing new
//! puts it back to an untimed wait, so an idle proxy's writer never wakes. Lines
//! leave in the order they were appended, whole (one line is never split between
//! two writes). When the buffer holds [`BACKLOG`] bytes (stderr is not keeping up),
//! the request that finds it so writes the backlog itself, under the same lock: the
//! request path slows down as it did with a `write` per line, and no line is
//! dropped. [`flush`] writes whatever is buffered; `run` calls it as it exits, so a
//! stop loses nothing (a crash can lose at most the last window's lines).

use std::io::Write as _;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

/// How long the writer waits after a write before the next one.
pub const WINDOW: Duration = Duration::from_millis(1);
/// Buffered bytes at which the request path writes them itself.
pub const BACKLOG: usize = 256 * 1024;

struct Sink {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    buffer: Vec<u8>,
    /// The writer waits without a deadline (a line must wake it).
    idle: bool,
}

static SINK: Sink = Sink {
    state: Mutex::new(State {
        buffer: Vec::new(),
        idle: false,
    }),
    wake: Condvar::new(),
};

/// Whether the writer thread runs (started on first use; if it cannot be started,
/// lines are written one by one).
fn writer_runs() -> bool {
    static STARTED: OnceLock<bool> = OnceLock::new();
    *STARTED.get_or_init(|| {
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(|| SINK.write_forever())
            .is_ok()
    })
}

/// Queue one whole line (newline included) for stderr.
pub(super) fn write(line: &[u8]) {
    if !writer_runs() {
        let _ = std::io::stderr().lock().write_all(line);
        return;
    }
    let mut state = SINK.lock();
    state.buffer.extend_from_slice(line);
    if state.buffer.len() >= BACKLOG {
        write_out(state);
        return;
    }
    let wake = std::mem::take(&mut state.idle);
    drop(state);
    if wake {
        SINK.wake.notify_one();
    }
}

/// Write what is buffered now.
pub fn flush() {
    write_out(SINK.lock());
}

/// Write the buffer out and empty it. stderr is locked before the buffer is let go,
/// so two writes cannot overtake each other.
fn write_out(mut state: MutexGuard<'_, State>) {
    if state.buffer.is_empty() {
        return;
    }
    let mut stderr = std::io::stderr().lock();
    let batch = std::mem::take(&mut state.buffer);
    drop(state);
    // As the subscriber does: lines that cannot be written are dropped.
    let _ = stderr.write_all(&batch);
}

impl Sink {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_forever(&self) {
        // Reused between batches: the request path appends to one buffer while the
        // writer writes the other.
        let mut spare = Vec::new();
        let mut state = self.lock();
        loop {
            if state.buffer.is_empty() {
                state.idle = true;
                while state.idle {
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            let mut stderr = std::io::stderr().lock();
            std::mem::swap(&mut state.buffer, &mut spare);
            drop(state);
            let _ = stderr.write_all(&spare);
            drop(stderr);
            spare.clear();
            if spare.capacity() > BACKLOG {
                spare = Vec::new();
            }
            std::thread::sleep(WINDOW);
            state = self.lock();
        }
    }
}
