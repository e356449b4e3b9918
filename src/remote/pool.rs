//! A pool of up to `max` logged-in control connections, each with its own TLS
//! session (data connections must resume their own control connection's session).
//! Idle connections are kept alive with NOOP and closed after a while; a connection
//! that broke is dropped and replaced on the next operation. A stale idle connection
//! (closed by the server's idle timeout) is detected by the first command and the
//! operation is retried once on a fresh connection. When the server refuses another
//! connection ("too many connections"), the pool keeps to the ones it has.

use crate::error::Result;
use crate::ftp::{ConnectOptions, FtpConnection, TlsContext};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Idle connections older than this get a NOOP from the keeper.
pub const KEEPALIVE_AFTER: Duration = Duration::from_secs(60);
/// Idle connections older than this are closed by the keeper.
pub const CLOSE_IDLE_AFTER: Duration = Duration::from_secs(300);

struct PoolState {
    idle: Vec<FtpConnection>,
    total: usize,
    waiters: usize,
    /// Lowered when the server refuses more connections from us.
    limit: usize,
}

pub struct Pool {
    opts: Arc<ConnectOptions>,
    tls: Arc<TlsContext>,
    state: Mutex<PoolState>,
    freed: Condvar,
}

/// A connection borrowed from the pool; returned on drop unless broken.
pub struct PooledConn<'a> {
    pool: &'a Pool,
    conn: Option<FtpConnection>,
    /// Reused from the idle list (may be stale) rather than freshly connected.
    pub reused: bool,
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
            self.pool.put_back(c);
        }
    }
}

impl Pool {
    pub fn new(opts: Arc<ConnectOptions>, tls: Arc<TlsContext>, max: usize) -> Self {
        Pool {
            opts,
            tls,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                total: 0,
                waiters: 0,
                limit: max.max(1),
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connects one connection now (mount start: report errors before detaching).
    pub fn warm_up(&self) -> Result<()> {
        let c = self.get()?;
        drop(c);
        Ok(())
    }

    /// Borrows a connection, waiting while all `max` are busy.
    pub fn get(&self) -> Result<PooledConn<'_>> {
        let mut st = self.lock();
        loop {
            if let Some(c) = st.idle.pop() {
                return Ok(PooledConn {
                    pool: self,
                    conn: Some(c),
                    reused: true,
                });
            }
            if st.total < st.limit {
                st.total += 1;
                drop(st);
                match FtpConnection::connect(self.opts.clone(), self.tls.clone()) {
                    Ok(c) => {
                        return Ok(PooledConn {
                            pool: self,
                            conn: Some(c),
                            reused: false,
                        })
                    }
                    Err(e) => {
                        st = self.lock();
                        st.total -= 1;
                        self.freed.notify_one();
                        if st.total == 0 || !too_many_connections(&e) {
                            return Err(e);
                        }
                        // The server caps connections per user or address: live with
                        // the ones we have.
                        st.limit = st.total;
                        log::warn!(
                            "the server refused another connection ({e}); using at most {}",
                            st.limit
                        );
                        continue;
                    }
                }
            }
            st.waiters += 1;
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
            st.waiters -= 1;
        }
    }

    fn put_back(&self, c: FtpConnection) {
        let mut st = self.lock();
        if c.is_broken() {
            st.total -= 1;
            drop(st);
            log::debug!("dropping a broken connection");
        } else {
            st.idle.push(c);
        }
        self.freed.notify_one();
    }

    /// True when someone waits for a connection (a stalled reader should yield).
    pub fn is_contended(&self) -> bool {
        self.lock().waiters > 0
    }

    /// Runs `op` on a connection; retries once on a fresh connection when a reused
    /// one turns out to be dead.
    pub fn run<T>(&self, mut op: impl FnMut(&mut FtpConnection) -> Result<T>) -> Result<T> {
        let mut c = self.get()?;
        match op(&mut c) {
            Err(e) if c.reused && (c.is_broken() || e.is_connection_lost()) => {
                log::debug!("retrying on a fresh connection after: {e}");
                c.mark_broken();
                drop(c);
                let mut c = self.get()?;
                op(&mut c)
            }
            other => other,
        }
    }

    /// Keeper duty: NOOP on long-idle connections, close the oldest ones.
    pub fn maintain(&self) {
        let idle: Vec<FtpConnection> = std::mem::take(&mut self.lock().idle);
        let mut keep = Vec::new();
        let mut closed = 0;
        for mut c in idle {
            if c.idle_for() > CLOSE_IDLE_AFTER {
                c.quit();
                closed += 1;
            } else if c.idle_for() > KEEPALIVE_AFTER {
                match c.noop() {
                    Ok(()) => keep.push(c),
                    Err(_) => closed += 1,
                }
            } else {
                keep.push(c);
            }
        }
        let mut st = self.lock();
        st.total -= closed;
        st.idle.extend(keep);
        self.freed.notify_all();
    }

    /// Closes every idle connection (unmount).
    pub fn close_all(&self) {
        let idle: Vec<FtpConnection> = std::mem::take(&mut self.lock().idle);
        let n = idle.len();
        for c in idle {
            c.quit();
        }
        self.lock().total -= n;
    }
}

/// "421 Too many connections", "530 Sorry, the maximum number of clients...".
fn too_many_connections(e: &crate::error::FtpError) -> bool {
    let t = e.to_string().to_ascii_lowercase();
    e.reply_code() == Some(421)
        || t.contains("too many")
        || t.contains("maximum number")
        || t.contains("max clients")
        || t.contains("connection limit")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FtpError;

    #[test]
    fn refusals_for_too_many_connections_are_recognised() {
        let reply = |code, text: &str| FtpError::Reply {
            command: "connect".into(),
            code,
            text: text.into(),
        };
        assert!(too_many_connections(&reply(
            421,
            "Too many users, try later"
        )));
        assert!(too_many_connections(&reply(
            530,
            "Sorry, the maximum number of clients (3) from your host are already connected."
        )));
        assert!(too_many_connections(&FtpError::Closed(
            "server closed: 421 Too many connections (5) from this IP".into()
        )));
        assert!(!too_many_connections(&reply(530, "Login incorrect.")));
        assert!(!too_many_connections(&FtpError::Tls(
            "certificate has expired".into()
        )));
    }
}
