//! Per-operation deadlines: `timeout=` bounds each filesystem operation as a
//! whole, not each socket call.
//!
//! Design: the FUSE adapter starts a [`Scope`] for every operation; it sets a
//! thread-local deadline (`now + timeout`) that every blocking wait on that thread
//! consults: socket reads and writes ([`arm`] lowers the socket's timeout to what
//! is left), connects, waits for a pooled connection, and waits for another
//! thread's work (a read stream, a listing, an upload) bounded by [`bound`]. A
//! transfer that moves bytes is progress: [`progress`] pushes the deadline out by
//! the window again, so a large upload at close() is bounded by stalls, not by its
//! size. Threads without a scope (background work) keep the plain socket timeout.
//! Dropping the scope restores the previous one (scopes nest).
//!
//! Silence limits: a thread that reads for an operation and resumes elsewhere when
//! it fails (a read stream, a segment's range) has no deadline of its own, so a
//! connection that died without a word would hold it for all of `timeout=`, by
//! which time the reader waiting on it has failed too. Such a thread takes a
//! [`limit_silence`] of a third of the operation's window
//! ([`silence_limit_for_helpers`]): a socket call that waits that long without a
//! byte fails, and the work resumes on another connection within the reader's
//! deadline. A live server silent that long only costs a reconnect.

use std::cell::Cell;
use std::io;
use std::net::TcpStream;
use std::thread::LocalKey;
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    window: Duration,
}

thread_local! {
    static CURRENT: Cell<Option<Deadline>> = const { Cell::new(None) };
    static SILENCE_LIMIT: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// The shortest silence limit a helper gets, whatever `timeout=` is.
const MIN_SILENCE_LIMIT: Duration = Duration::from_secs(1);

/// A thread-local value set until dropped, then the one before it again (scopes
/// nest): what [`Scope`] and [`SilenceLimit`] hold.
struct Restore<T: Copy + 'static> {
    key: &'static LocalKey<Cell<T>>,
    previous: T,
}

impl<T: Copy + 'static> Restore<T> {
    fn set(key: &'static LocalKey<Cell<T>>, value: T) -> Self {
        Restore {
            key,
            previous: key.with(|c| c.replace(value)),
        }
    }
}

impl<T: Copy + 'static> Drop for Restore<T> {
    fn drop(&mut self) {
        self.key.with(|c| c.set(self.previous));
    }
}

/// A silence limit on this thread's socket calls, until dropped.
pub struct SilenceLimit {
    _restore: Restore<Option<Duration>>,
}

/// From now until the result is dropped, a socket call on this thread fails
/// (TimedOut) once it has waited `limit` without a byte, deadline or not.
pub fn limit_silence(limit: Duration) -> SilenceLimit {
    SilenceLimit {
        _restore: Restore::set(&SILENCE_LIMIT, Some(limit)),
    }
}

/// The silence limit for a thread started to read on behalf of the operation
/// running on this thread: a third of its window (`timeout=`), at least a second;
/// None when this thread runs no operation.
pub fn silence_limit_for_helpers() -> Option<Duration> {
    CURRENT
        .with(|c| c.get())
        .map(|d| (d.window / 3).max(MIN_SILENCE_LIMIT))
}

/// The deadline of the operation running on this thread, until dropped.
pub struct Scope {
    _restore: Restore<Option<Deadline>>,
}

/// Starts an operation that must end (or make progress) within `window`.
pub fn start(window: Duration) -> Scope {
    let d = Deadline {
        at: Instant::now() + window,
        window,
    };
    Scope {
        _restore: Restore::set(&CURRENT, Some(d)),
    }
}

/// Time left for the operation on this thread; None when it has no deadline.
pub fn left() -> Option<Duration> {
    CURRENT
        .with(|c| c.get())
        .map(|d| d.at.saturating_duration_since(Instant::now()))
}

/// True when the operation on this thread ran out of time.
pub fn expired() -> bool {
    left().is_some_and(|l| l.is_zero())
}

/// The shorter of `base` and the time left (at least 1 ms, so a socket timeout is
/// never "none").
pub fn bound(base: Duration) -> Duration {
    match left() {
        Some(l) => base.min(l).max(Duration::from_millis(1)),
        None => base,
    }
}

/// [`bound`], and at most this thread's silence limit: for a wait on the network
/// that no socket call arms (a poll for a reply or a handshake).
pub fn bound_silence(base: Duration) -> Duration {
    match SILENCE_LIMIT.with(|c| c.get()) {
        Some(limit) => bound(base).min(limit),
        None => bound(base),
    }
}

/// Bytes moved: the operation is alive, its deadline moves out again.
pub fn progress() {
    CURRENT.with(|c| {
        if let Some(mut d) = c.get() {
            d.at = Instant::now() + d.window;
            c.set(Some(d));
        }
    });
}

/// The error of an operation out of time.
pub fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: the operation's deadline (timeout=) passed"),
    )
}

/// Before a blocking socket call: fails when the operation is out of time, else
/// sets the socket's timeouts to the shortest of `base`, the time left and this
/// thread's silence limit. `set` remembers the timeouts the socket has (None:
/// unknown), so that a call wanting the same ones makes no system call: the fast
/// path, without a deadline or with a fixed silence limit.
pub fn arm(s: &TcpStream, base: Duration, set: &Cell<Option<Duration>>) -> io::Result<()> {
    let left = left();
    if left.is_some_and(|l| l.is_zero()) {
        return Err(timed_out("network wait"));
    }
    let limit = SILENCE_LIMIT.with(|c| c.get());
    let want = match [left, limit].into_iter().flatten().min() {
        Some(l) if l < base => l.max(Duration::from_millis(1)),
        _ => base,
    };
    if set.get() != Some(want) {
        s.set_read_timeout(Some(want))?;
        s.set_write_timeout(Some(want))?;
        set.set(Some(want));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_progress_extends() {
        assert!(left().is_none());
        {
            let _s = start(Duration::from_millis(200));
            assert!(left().unwrap() <= Duration::from_millis(200));
            {
                let _inner = start(Duration::from_secs(10));
                assert!(left().unwrap() > Duration::from_secs(5));
            }
            std::thread::sleep(Duration::from_millis(120));
            let before = left().unwrap();
            progress();
            assert!(left().unwrap() > before);
            assert!(bound(Duration::from_secs(30)) <= Duration::from_millis(200));
            std::thread::sleep(Duration::from_millis(250));
            assert!(expired());
        }
        assert!(left().is_none());
    }

    /// A connected loopback socket (and its listener, kept open) whose timeouts are
    /// `BASE`, with the record `arm` keeps of them.
    fn socket() -> (std::net::TcpListener, TcpStream, Cell<Option<Duration>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        s.set_read_timeout(Some(BASE)).unwrap();
        s.set_write_timeout(Some(BASE)).unwrap();
        (l, s, Cell::new(Some(BASE)))
    }

    const BASE: Duration = Duration::from_secs(30);

    #[test]
    fn arm_lowers_and_restores_socket_timeouts() {
        let (_l, s, lowered) = socket();
        let base = BASE;
        {
            let _d = start(Duration::from_secs(2));
            arm(&s, base, &lowered).unwrap();
            assert!(s.read_timeout().unwrap().unwrap() <= Duration::from_secs(2));
            assert!(lowered.get() < Some(base));
        }
        arm(&s, base, &lowered).unwrap();
        assert_eq!(s.read_timeout().unwrap(), Some(base));
        let _d = start(Duration::ZERO);
        assert_eq!(
            arm(&s, base, &lowered).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
    }

    #[test]
    fn a_silence_limit_lowers_socket_timeouts_without_a_deadline() {
        let (_l, s, lowered) = socket();
        let base = BASE;
        assert_eq!(silence_limit_for_helpers(), None);
        let limit = {
            let _op = start(Duration::from_secs(6));
            silence_limit_for_helpers().unwrap()
        };
        assert_eq!(limit, Duration::from_secs(2));
        {
            let _quiet = limit_silence(limit);
            arm(&s, base, &lowered).unwrap();
            assert_eq!(s.read_timeout().unwrap(), Some(limit));
            // A deadline closer than the limit still wins.
            let _op = start(Duration::from_millis(500));
            arm(&s, base, &lowered).unwrap();
            assert!(s.read_timeout().unwrap().unwrap() <= Duration::from_millis(500));
        }
        arm(&s, base, &lowered).unwrap();
        assert_eq!(s.read_timeout().unwrap(), Some(base));
        {
            let _quiet = limit_silence(limit);
            assert_eq!(bound_silence(base), limit);
        }
        assert_eq!(bound_silence(base), base);
        let _op = start(Duration::from_millis(900));
        assert_eq!(silence_limit_for_helpers(), Some(MIN_SILENCE_LIMIT));
    }
}
