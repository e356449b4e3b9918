//! A pool of up to `max` logged-in control connections, each with its own TLS
//! session (data connections must resume their own control connection's session).
//! Idle connections are kept alive with NOOP and closed after a while; a connection
//! that broke is dropped and replaced on the next operation. A stale idle connection
//! (closed by the server's idle timeout) is detected by the first command and the
//! operation is retried once on a fresh connection. When the server refuses another
//! connection ("too many connections"), the pool keeps to the ones it has.
//!
//! A path can also die without a word (a NAT that forgot it, a laptop that slept or
//! changed networks): nothing but silence, which costs whoever meets it a whole
//! timeout. So a connection idle for `PROBE_AFTER` answers a NOOP within a short
//! time before it is lent, and when any connection goes silent, the ones idle since
//! before its unanswered command are closed with it (`forget_idle_since`): the
//! operations after it log in anew instead of each waiting out a dead connection.
//! Closing (the keeper's, the unmount's) waits for a QUIT's answer only as long,
//! the unmount's for all its connections at once.
//!
//! A connection left idle for a moment (`PREPARE_AFTER`) without a prepared data
//! connection, on a link whose round trip makes it worth it (the mount's
//! `PREPARE_MIN_RTT`), is taken by a preparer thread, which opens its next data connection
//! ahead of time (`FtpConnection::prepare_data`: EPSV plus a background TCP connect,
//! and a fresh control connection when TLS 1.3 tickets ran out), so that the next
//! transfer on it pays only its own round trips. The moment's wait lets the
//! operation that follows at once (the rename after an upload, the next read)
//! have the connection, and it pipelines the EPSV with its own commands instead.
//! An operation that finds no idle connection waits for one being prepared rather
//! than log in a new one (a login costs several round trips and, on proftpd, a
//! fork), unless more operations wait than connections are being prepared; a
//! connection the preparer logs in anew (TLS 1.3 tickets used up) is not waited for.

use crate::error::{FtpError, Result};
use crate::ftp::{ConnectOptions, FtpConnection, TlsContext};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Idle connections older than this get a NOOP from the keeper.
pub const KEEPALIVE_AFTER: Duration = Duration::from_secs(60);
/// Idle connections older than this are closed by the keeper.
pub const CLOSE_IDLE_AFTER: Duration = Duration::from_secs(300);

/// A connection in the idle list, and since when.
struct Idle {
    conn: FtpConnection,
    since: Instant,
}

struct PoolState {
    idle: Vec<Idle>,
    total: usize,
    waiters: usize,
    /// Lowered when the server refuses more connections from us.
    limit: usize,
    /// Connections with a preparer thread for a round trip (counted in `total`,
    /// not idle yet): worth waiting for.
    preparing: usize,
    /// Connections with a preparer thread that logs them in anew (TLS 1.3 tickets
    /// used up): not worth waiting for.
    renewing: usize,
    /// Set by `close_all`: connections coming back are closed.
    closing: bool,
    /// Operations waiting for a connection, in arrival order (tickets): the first
    /// is served first, so nobody starves.
    queue: std::collections::VecDeque<u64>,
    next_ticket: u64,
}

impl PoolState {
    /// Takes the idle connections that match `pred` out of the idle list.
    fn take_idle_where(&mut self, pred: impl FnMut(&Idle) -> bool) -> Vec<Idle> {
        let (taken, keep) = std::mem::take(&mut self.idle).into_iter().partition(pred);
        self.idle = keep;
        taken
    }
}

/// What a borrowed connection is for: the pool hands a transfer a connection whose
/// data connection is prepared, and a command one without (the command then
/// prepares it in passing, see `FtpConnection::send_batch_preparing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Transfer,
    Command,
}

/// A connection idle this long answers a NOOP before it is lent (see `get`), within
/// `FtpConnection::answer_within` (no answer for `SILENCE` is what closes the
/// other idle connections).
pub const PROBE_AFTER: Duration = Duration::from_secs(3);

/// Before logging in again when the server refused even our first connection.
const TOO_MANY_PAUSE: Duration = Duration::from_millis(500);

/// A preparer thread holds the pool at most this long while waiting for work.
const PREPARER_NAP: Duration = Duration::from_secs(1);

/// Preparer threads (at most this many prepare at once).
const PREPARERS: usize = 4;
/// An idle connection without a prepared data connection gets one after this.
pub const PREPARE_AFTER: Duration = Duration::from_millis(5);

pub struct Pool {
    opts: Arc<ConnectOptions>,
    tls: Arc<TlsContext>,
    state: Mutex<PoolState>,
    freed: Condvar,
    /// Wakes the preparer threads: an unprepared connection became idle.
    unprepared: Condvar,
    /// Preparation on for connections whose round trip is at least this long (a
    /// prepared connection saves a round trip; on a LAN it only adds work), and
    /// whether its threads are started.
    prepare: Option<Duration>,
    preparers_started: std::sync::Once,
    me: Weak<Pool>,
}

/// A connection borrowed from the pool; returned on drop unless broken.
pub struct PooledConn<'a> {
    pool: &'a Pool,
    conn: Option<FtpConnection>,
    /// Reused from the idle list (may be stale) rather than freshly connected.
    pub reused: bool,
    /// How long it had been idle in the pool (a reused one).
    idle_for: Duration,
}

impl Deref for PooledConn<'_> {
    type Target = FtpConnection;
    fn deref(&self) -> &FtpConnection {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl DerefMut for PooledConn<'_> {
    fn deref_mut(&mut self) -> &mut FtpConnection {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for PooledConn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            if let Some(sent) = c.went_silent() {
                self.pool.forget_idle_since(sent);
            }
            self.pool.put_back(c);
        }
    }
}

impl Pool {
    /// A pool of up to `max` connections; `prepare` turns on the preparation of
    /// data connections for idle connections whose command round trip is at least
    /// that long.
    /// How names are written to this server (`encoding=`).
    pub fn encoding(&self) -> crate::names::NameCodec {
        self.opts.encoding
    }

    pub fn new(
        opts: Arc<ConnectOptions>,
        tls: Arc<TlsContext>,
        max: usize,
        prepare: Option<Duration>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Pool {
            opts,
            tls,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                total: 0,
                waiters: 0,
                limit: max.max(1),
                preparing: 0,
                renewing: 0,
                closing: false,
                queue: std::collections::VecDeque::new(),
                next_ticket: 0,
            }),
            freed: Condvar::new(),
            unprepared: Condvar::new(),
            prepare,
            preparers_started: std::sync::Once::new(),
            me: me.clone(),
        })
    }

    /// Starts the preparer threads (once).
    fn start_preparers(&self) {
        self.preparers_started.call_once(|| {
            for i in 0..PREPARERS {
                let me = self.me.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("ftpsfs-prep{i}"))
                    .spawn(move || prepare_loop(&me));
                if let Err(e) = spawned {
                    log::warn!("cannot start a preparer thread: {e}");
                }
            }
        });
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connects one connection now (mount start: report errors before detaching).
    pub fn warm_up(&self) -> Result<()> {
        let c = self.get(Use::Command)?;
        drop(c);
        Ok(())
    }

    /// Logs in one more connection for the idle list, if the limit allows (in the
    /// background after mounting: the first parallel operation then does not pay a
    /// login). Failures only cost the attempt.
    pub fn add_spare(&self) {
        {
            let mut st = self.lock();
            if st.total >= st.limit || st.closing {
                return;
            }
            st.total += 1;
        }
        match self.connect_counted() {
            Ok(c) => self.put_back(c),
            Err(e) => log::debug!("spare connection: {e}"),
        }
    }

    /// Logs in a connection already counted in `total`. On failure it is
    /// uncounted, and a refusal for "too many connections" lowers the limit to the
    /// connections we have (the server caps them per user or address).
    fn connect_counted(&self) -> Result<FtpConnection> {
        let e = match FtpConnection::connect(self.opts.clone(), self.tls.clone()) {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        let mut st = self.lock();
        st.total -= 1;
        if st.total > 0 && e.is_too_many_connections() && st.limit > st.total {
            st.limit = st.total;
            log::warn!(
                "the server refused another connection ({e}); using at most {}",
                st.limit
            );
        }
        drop(st);
        self.freed.notify_one();
        Err(e)
    }

    /// Borrows a connection, waiting while all `max` are busy: in arrival order,
    /// and at most until the operation's deadline (else `timeout=`). A connection
    /// idle for `PROBE_AFTER` must first answer a NOOP within a live server's time
    /// (`answer_within`: a second, or 8 of its round trips if longer): after a pause
    /// the path may have died without a word, and the operation would otherwise
    /// spend its whole deadline on it.
    /// One that stays silent is closed with the others idle as long (see
    /// `forget_idle_since`), and the next is taken.
    pub fn get(&self, usage: Use) -> Result<PooledConn<'_>> {
        loop {
            let mut c = self.get_unprobed(usage)?;
            if c.idle_for < PROBE_AFTER {
                return Ok(c);
            }
            let probed = {
                let within = c.answer_within();
                let _scope = crate::deadline::start(crate::deadline::bound(within));
                c.noop()
            };
            match probed {
                Ok(()) => return Ok(c),
                // A refusal is an answer: the connection is alive.
                Err(e) if !e.is_connection_lost() => return Ok(c),
                Err(e) => {
                    log::debug!("an idle connection failed its probe: {e}");
                    c.mark_broken();
                    if crate::deadline::expired() {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn get_unprobed(&self, usage: Use) -> Result<PooledConn<'_>> {
        let give_up = Instant::now() + crate::deadline::bound(self.opts.timeout);
        let mut st = self.lock();
        let mut ticket = None;
        let result = loop {
            if st.closing {
                break Err(FtpError::Closed("the mount is stopping".into()));
            }
            let my_turn = match ticket {
                None => st.queue.is_empty(),
                Some(t) => st.queue.front() == Some(&t),
            };
            if my_turn {
                if let Some(c) = self.take_idle(&mut st, usage) {
                    break Ok(c);
                }
                // A connection being prepared comes back within a round trip: wait
                // for it rather than log in a new one, unless others wait for it
                // already.
                if st.total < st.limit && st.preparing <= st.waiters {
                    st.total += 1;
                    drop(st);
                    let connected = self.connect_counted();
                    st = self.lock();
                    match connected {
                        Ok(c) => {
                            break Ok(PooledConn {
                                pool: self,
                                conn: Some(c),
                                reused: false,
                                idle_for: Duration::ZERO,
                            })
                        }
                        // Too many connections: the limit was lowered to what we
                        // have; wait for one of them. With none at all (other
                        // clients hold every slot), try again in a moment.
                        Err(e) if e.is_too_many_connections() => {
                            if st.total == 0 {
                                if Instant::now() + TOO_MANY_PAUSE >= give_up {
                                    break Err(e);
                                }
                                drop(st);
                                std::thread::sleep(TOO_MANY_PAUSE);
                                st = self.lock();
                            }
                            continue;
                        }
                        Err(e) => break Err(e),
                    }
                }
            }
            let now = Instant::now();
            if now >= give_up {
                break Err(FtpError::Timeout(format!(
                    "waiting for a free connection to the server ({} in use, {} waiting)",
                    st.total, st.waiters
                )));
            }
            if ticket.is_none() {
                let t = st.next_ticket;
                st.next_ticket += 1;
                st.queue.push_back(t);
                ticket = Some(t);
            }
            st.waiters += 1;
            st = self
                .freed
                .wait_timeout(st, give_up - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.waiters -= 1;
        };
        if let Some(t) = ticket {
            st.queue.retain(|q| *q != t);
        }
        drop(st);
        // The next in line may be able to go now.
        self.freed.notify_all();
        result
    }

    /// The most recently used idle connection that suits `usage`, else the most
    /// recent one.
    fn take_idle(&self, st: &mut PoolState, usage: Use) -> Option<PooledConn<'_>> {
        let want_prepared = usage == Use::Transfer;
        let i = st
            .idle
            .iter()
            .rposition(|i| i.conn.has_prepared_data() == want_prepared)
            .or_else(|| st.idle.len().checked_sub(1))?;
        let Idle { conn, since } = st.idle.remove(i);
        Some(PooledConn {
            pool: self,
            conn: Some(conn),
            reused: true,
            idle_for: since.elapsed(),
        })
    }

    fn put_back(&self, c: FtpConnection) {
        let mut st = self.lock();
        if c.is_broken() {
            st.total -= 1;
            drop(st);
            log::debug!("dropping a broken connection");
        } else {
            let unprepared = self.worth_preparing(&c);
            st.idle.push(Idle {
                conn: c,
                since: Instant::now(),
            });
            drop(st);
            if unprepared {
                self.start_preparers();
                self.unprepared.notify_one();
            }
        }
        self.freed.notify_all();
    }

    /// A connection went silent on a command sent at `sent`: the path to the server
    /// may have died under the connections idle since before then too (a NAT that
    /// forgot them, a laptop on another network), and each would cost the operation
    /// that takes it its whole deadline. They are closed (no network I/O: a QUIT
    /// would wait for the same silence); new ones are logged in as needed. Those
    /// back since then have been answered after it and stay.
    fn forget_idle_since(&self, sent: Instant) {
        let stale: Vec<Idle> = {
            let mut st = self.lock();
            let stale = st.take_idle_where(|i| i.since <= sent);
            st.total -= stale.len();
            stale
        };
        if !stale.is_empty() {
            log::info!(
                "a connection to the server went silent: closing the {} idle since before",
                stale.len()
            );
            drop(stale);
            self.freed.notify_all();
        }
    }

    fn worth_preparing(&self, c: &FtpConnection) -> bool {
        self.prepare
            .is_some_and(|min| !c.has_prepared_data() && c.round_trip() >= min)
    }

    /// Preparer duty: takes an unprepared connection idle for `PREPARE_AFTER`,
    /// waiting for one up to `PREPARER_NAP` (`Err(())`: nothing came, so that the
    /// thread lets go of the pool between naps); `Ok(None)` when the pool closes.
    #[allow(clippy::result_unit_err)]
    fn next_to_prepare(&self) -> std::result::Result<Option<(FtpConnection, bool)>, ()> {
        let nap_ends = Instant::now() + PREPARER_NAP;
        let mut st = self.lock();
        loop {
            if st.closing {
                return Ok(None);
            }
            if Instant::now() >= nap_ends {
                return Err(());
            }
            let mut wait = None;
            let mut found = None;
            for (i, idle) in st.idle.iter().enumerate() {
                if !self.worth_preparing(&idle.conn) {
                    continue;
                }
                let age = idle.since.elapsed();
                if age >= PREPARE_AFTER {
                    found = Some(i);
                    break;
                }
                let left = PREPARE_AFTER - age;
                wait = Some(wait.map_or(left, |w: Duration| w.min(left)));
            }
            if let Some(i) = found {
                let Idle { conn, .. } = st.idle.remove(i);
                let renewing = conn.needs_renewal();
                if renewing {
                    st.renewing += 1;
                } else {
                    st.preparing += 1;
                }
                return Ok(Some((conn, renewing)));
            }
            let nap_left = nap_ends.saturating_duration_since(Instant::now());
            let d = wait.map_or(nap_left, |w| w.min(nap_left));
            st = self
                .unprepared
                .wait_timeout(st, d)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// A connection back from its preparer.
    fn prepared(&self, c: FtpConnection, renewed: bool) {
        let mut st = self.lock();
        if renewed {
            st.renewing -= 1;
        } else {
            st.preparing -= 1;
        }
        if c.is_broken() {
            st.total -= 1;
        } else if st.closing {
            st.total -= 1;
            drop(st);
            c.quit();
            st = self.lock();
        } else {
            st.idle.push(Idle {
                conn: c,
                since: Instant::now(),
            });
        }
        drop(st);
        self.freed.notify_all();
    }

    /// True when someone waits for a connection (a stalled reader should yield).
    pub fn is_contended(&self) -> bool {
        self.lock().waiters > 0
    }

    /// Runs `op` on a connection suited to `usage`. The one retry policy of the
    /// pool: `op` must be safe to repeat when it failed because the connection was
    /// dead (a listing, SIZE, a RETR not yet delivering, DELE/MKD/RNFR that the
    /// server never received...); it is repeated while the failing connection was
    /// a reused idle one (the server may have dropped every idle connection), and
    /// once more on a fresh one. Server refusals are returned as they are.
    pub fn run<T>(&self, usage: Use, op: impl FnMut(&mut FtpConnection) -> Result<T>) -> Result<T> {
        self.run_until_delivered(usage, || false, op)
    }

    /// [`Self::run`] for an operation that hands out what it receives as it goes
    /// (a download, a listing): once `delivered()` says it did, its failure is
    /// returned as it is, for the caller to resume; repeating it would hand the
    /// same bytes out again.
    pub fn run_until_delivered<T>(
        &self,
        usage: Use,
        delivered: impl Fn() -> bool,
        mut op: impl FnMut(&mut FtpConnection) -> Result<T>,
    ) -> Result<T> {
        let mut fresh_tries = 0;
        loop {
            let mut c = self.get(usage)?;
            match op(&mut c) {
                Err(e)
                    if !delivered()
                        && (c.is_broken() || e.is_connection_lost())
                        && !crate::deadline::expired()
                        && (c.reused || fresh_tries == 0) =>
                {
                    if !c.reused {
                        fresh_tries += 1;
                    }
                    log::debug!("retrying on another connection after: {e}");
                    c.mark_broken();
                }
                other => return other,
            }
        }
    }

    /// Keeper duty: NOOP on long-idle connections, close the oldest ones.
    pub fn maintain(&self) {
        self.maintain_with(Some(KEEPALIVE_AFTER));
    }

    /// [`Self::maintain`] with NOOPs after `keepalive` of idleness (`None`: none).
    /// One connection at a time leaves the idle list, so that the others stay
    /// available while a NOOP waits (up to `timeout=` on a dead path).
    pub fn maintain_with(&self, keepalive: Option<Duration>) {
        // Idle since its last use: our own keep-alive NOOPs do not count.
        let old = self
            .lock()
            .take_idle_where(|i| i.since.elapsed() > CLOSE_IDLE_AFTER);
        let closed = old.len();
        for i in old {
            i.conn.quit();
        }
        if closed > 0 {
            self.lock().total -= closed;
            self.freed.notify_all();
        }
        let Some(k) = keepalive else { return };
        loop {
            let Idle { conn: mut c, since } = {
                let mut st = self.lock();
                match st.idle.iter().position(|i| i.conn.idle_for() > k) {
                    Some(p) => st.idle.remove(p),
                    None => return,
                }
            };
            let ok = c.noop().is_ok();
            if let Some(sent) = c.went_silent() {
                self.forget_idle_since(sent);
            }
            let mut st = self.lock();
            if ok {
                st.idle.push(Idle { conn: c, since });
            } else {
                st.total -= 1;
            }
            drop(st);
            self.freed.notify_all();
        }
    }

    /// Closes every idle connection (unmount). The QUITs run side by side: on a
    /// path that died without a word each waits out its short bound, and the
    /// unmount should wait that once, not once per connection.
    pub fn close_all(&self) {
        let idle: Vec<Idle> = {
            let mut st = self.lock();
            st.closing = true;
            std::mem::take(&mut st.idle)
        };
        self.unprepared.notify_all();
        let n = idle.len();
        std::thread::scope(|s| {
            for c in idle {
                // A thread that cannot start drops its connection unannounced.
                let _ = std::thread::Builder::new()
                    .name("quit".into())
                    .spawn_scoped(s, move || c.conn.quit());
            }
        });
        self.lock().total -= n;
    }
}

/// A preparer thread: prepares the data connection of the connections left idle
/// and gives them back to the pool. Ends with the pool.
fn prepare_loop(pool: &Weak<Pool>) {
    loop {
        let Some(p) = pool.upgrade() else { return };
        let (mut c, renewing) = match p.next_to_prepare() {
            Ok(Some(work)) => work,
            Ok(None) => return,
            Err(()) => continue, // a nap without work: the pool may go meanwhile
        };
        if let Err(e) = c.prepare_data() {
            log::debug!("preparing a data connection failed: {e}");
        }
        p.prepared(c, renewing);
    }
}
