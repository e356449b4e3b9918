//! An in-process TCP forwarder with fault injection, for tests and benchmarks on loopback
//! (this kernel has no netem). One module for both: tests use it as
//! `support::forwarder` (via `mod support;`), `examples/delay_proxy.rs` includes this
//! file with `#[path = "../tests/support/forwarder.rs"] mod forwarder;`. It needs only
//! std and libc.
//!
//! ```ignore
//! use support::forwarder::{Cut, Forwarder};
//! // Listen on 127.0.0.2:P for every P, forward to 127.0.0.1:P. The first port is the
//! // control port, the others are data (passive) ports.
//! let fwd = Forwarder::start(
//!     "127.0.0.2".parse().unwrap(),
//!     "127.0.0.1".parse().unwrap(),
//!     &[srv.port, 20001, 20002],
//!     Duration::ZERO, // one-way delay added to every chunk in both directions
//! );
//! fwd.cut_data_after(1 << 20, Cut::Rst, Some(1)); // the next data connection dies after 1 MiB
//! fwd.cut_upload_after(1 << 20, Cut::Fin, None);  // every upload is cut after 1 MiB
//! fwd.stall(Duration::from_secs(3));              // nothing moves for 3 s (bytes are held)
//! fwd.refuse_new(true);                           // new connections: accept, then RST
//! fwd.rate_limit(Some(2 << 20));                  // 2 MiB/s per connection and direction
//! fwd.cut_all();                                  // RST every open connection now
//! fwd.freeze_open();                              // open connections go silent for good
//! fwd.clear_faults();                             // back to a clean network
//! drop(fwd);                                      // closes everything, joins its threads
//! ```
//!
//! # Behaviour
//! * Every accepted connection gets its own connection to `target:P`. With a zero delay
//!   each direction is one thread that reads a chunk and writes it on (a thread pair per
//!   connection); with a delay each direction is a reader thread, which timestamps the
//!   chunks it reads and queues them, and a writer thread, which sleeps until each chunk
//!   is due and writes it. The queue is bounded ([`QUEUE_BYTES`] per direction), so
//!   memory stays bounded whatever the peers do. TCP_NODELAY is set on both sides.
//! * A half-close (EOF) is propagated with `shutdown(Write)` once every earlier chunk has
//!   been delivered (and after the delay and any stall). A read or write error (the peer
//!   reset the connection) resets both sides (RST), as a real reset would.
//! * Every blocking socket call has a short timeout ([`TICK`]), so controls, `cut_all`
//!   and `stop` take effect within about that long, whatever the connection is doing.
//! * Faults are global to the forwarder and take effect at once: a stall or a rate limit
//!   on connections already open too; a cut plan on data connections that carry their
//!   first byte after it was set (each takes one "ticket" then: a data connection the
//!   client opened ahead of time meets the plan in force when it is used).
//! * `Cut::Rst` closes both sockets with `SO_LINGER` 0 (the peers see ECONNRESET); before
//!   that it waits (≤ 0.5 s) until the bytes already written to the receiving side have
//!   left the socket, so the receiver really got `bytes` bytes. `Cut::Fin` shuts both sockets
//!   down both ways (the peers see EOF, after every byte written before).
//! * With a delay and a rate limit together, a direction queues only what the delay holds
//!   at that rate plus [`SHAPER_QUEUE`] (else up to [`QUEUE_BYTES`]), and a connection opened
//!   while the limit is on reads with a small socket buffer (`SO_RCVBUF` [`CHUNK`]): the
//!   sender is held back as behind a real shaper, instead of the forwarder buffering
//!   seconds of data (which a client that stops a download early would have to drain).
//! * Counters count accepted connections, including refused ones.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Largest chunk read from a socket at once.
pub const CHUNK: usize = 256 * 1024;
/// Bytes queued per direction at most when there is a delay (bounds memory).
pub const QUEUE_BYTES: usize = 32 << 20;
/// Longest time any thread blocks without looking at the controls.
pub const TICK: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// With a delay and a rate limit: how much a direction queues beyond what the delay
/// holds at that rate, as a per-flow shaper's queue on a real path does (tc tbf
/// `latency`); past it the sender is held back (TCP backpressure).
pub const SHAPER_QUEUE: Duration = Duration::from_millis(50);
/// How long a `Cut::Rst` waits for the bytes already written to the client to leave.
const DRAIN_BEFORE_RST: Duration = Duration::from_millis(500);

/// How a connection is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Close both sockets with `SO_LINGER` 0: both peers get a TCP reset.
    Rst,
    /// `shutdown(Both)` on both sockets: both peers get a FIN (EOF).
    Fin,
}

/// A running forwarder; see the module documentation. Dropping it stops it.
pub struct Forwarder {
    inner: Arc<Inner>,
    accepter: Option<JoinHandle<()>>,
    listen: Ipv4Addr,
    ports: Vec<u16>,
}

#[derive(Debug, Clone, Copy)]
struct CutPlan {
    /// Which direction's bytes count.
    dir: Dir,
    bytes: u64,
    how: Cut,
    /// `None`: every data connection until cleared.
    times: Option<u32>,
}

/// A data connection's share of the plan: cut after `bytes` in direction `dir`.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    dir: Dir,
    bytes: u64,
    how: Cut,
}

struct Inner {
    target: Ipv4Addr,
    one_way: Duration,
    epoch: Instant,
    stop: AtomicBool,
    refuse: AtomicBool,
    /// Bytes per second per connection and direction; 0 = unlimited.
    rate: AtomicU64,
    /// End of the current stall in nanoseconds since `epoch`; 0 = none.
    stall_until: AtomicU64,
    plan: Mutex<Option<CutPlan>>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
    data_conns: AtomicU64,
    control_conns: AtomicU64,
    cuts: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Forwarder {
    /// Listens on `listen:P` for every P in `ports` and forwards each connection to
    /// `target:P`, delaying every chunk by `one_way_delay` in each direction. The first
    /// port is the control port, the others data ports. Panics if a port cannot be bound.
    pub fn start(
        listen: Ipv4Addr,
        target: Ipv4Addr,
        ports: &[u16],
        one_way_delay: Duration,
    ) -> Forwarder {
        Forwarder::try_start(listen, target, ports, one_way_delay)
            .unwrap_or_else(|e| panic!("forwarder: {e}"))
    }

    /// As [`Forwarder::start`], but a port that cannot be bound is an error
    /// (`bind ADDR: ...`) instead of a panic.
    pub fn try_start(
        listen: Ipv4Addr,
        target: Ipv4Addr,
        ports: &[u16],
        one_way_delay: Duration,
    ) -> io::Result<Forwarder> {
        assert!(!ports.is_empty(), "forwarder: no ports");
        let mut listeners = Vec::new();
        for (i, &p) in ports.iter().enumerate() {
            let addr = SocketAddr::from((listen, p));
            let l = TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
            l.set_nonblocking(true)?;
            listeners.push((l, p, i > 0));
        }
        let inner = Arc::new(Inner {
            target,
            one_way: one_way_delay,
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            refuse: AtomicBool::new(false),
            rate: AtomicU64::new(0),
            stall_until: AtomicU64::new(0),
            plan: Mutex::new(None),
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            data_conns: AtomicU64::new(0),
            control_conns: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
        });
        let i2 = inner.clone();
        let accepter = thread::Builder::new()
            .name("fwd-accept".into())
            .spawn(move || accept_loop(i2, listeners))?;
        Ok(Forwarder {
            inner,
            accepter: Some(accepter),
            listen,
            ports: ports.to_vec(),
        })
    }

    pub fn listen_addr(&self) -> Ipv4Addr {
        self.listen
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    pub fn control_port(&self) -> u16 {
        self.ports[0]
    }

    /// The next `times` data connections (`None`: every one until cleared) that carry
    /// their first byte from now on are cut with `how` once `bytes` bytes have been forwarded from the server to
    /// the client on them (downloads and listings; TLS bytes included). Replaces an
    /// earlier plan (of either kind).
    pub fn cut_data_after(&self, bytes: u64, how: Cut, times: Option<u32>) {
        self.set_plan(Dir::Down, bytes, how, times);
    }

    /// As [`Forwarder::cut_data_after`], counting the bytes forwarded from the client to
    /// the server instead (uploads). Replaces an earlier plan (of either kind).
    pub fn cut_upload_after(&self, bytes: u64, how: Cut, times: Option<u32>) {
        self.set_plan(Dir::Up, bytes, how, times);
    }

    fn set_plan(&self, dir: Dir, bytes: u64, how: Cut, times: Option<u32>) {
        *lock(&self.inner.plan) = match times {
            Some(0) => None,
            _ => Some(CutPlan {
                dir,
                bytes,
                how,
                times,
            }),
        };
    }

    /// Clears every fault: the cut plan, a stall, `refuse_new` and the rate limit.
    /// Connections already cut stay cut.
    pub fn clear_faults(&self) {
        *lock(&self.inner.plan) = None;
        self.inner.stall_until.store(0, SeqCst);
        self.inner.refuse.store(false, SeqCst);
        self.inner.rate.store(0, SeqCst);
    }

    /// Resets (RST) every open connection, control and data, now.
    pub fn cut_all(&self) {
        let conns: Vec<Arc<Conn>> = lock(&self.inner.conns).values().cloned().collect();
        for c in conns {
            self.inner.cuts.fetch_add(1, SeqCst);
            c.abort(Cut::Rst);
        }
    }

    /// Every connection open now goes silent for good: what either side sends is held
    /// and never delivered, and neither side sees a close (a path that died without a
    /// word: a NAT that forgot it, a laptop that moved to another network).
    /// Connections opened later work as usual.
    pub fn freeze_open(&self) {
        for c in lock(&self.inner.conns).values() {
            c.frozen.store(true, SeqCst);
        }
    }

    /// From now on, for `d`, nothing is forwarded in either direction on any connection,
    /// open or new; what arrives meanwhile is held and delivered afterwards. `Duration::ZERO`
    /// ends a stall.
    pub fn stall(&self, d: Duration) {
        let until = if d.is_zero() {
            0
        } else {
            (self.inner.now_nanos() + d.as_nanos() as u64).max(1)
        };
        self.inner.stall_until.store(until, SeqCst);
    }

    /// While on, new connections (on every port) are accepted and reset at once.
    pub fn refuse_new(&self, on: bool) {
        self.inner.refuse.store(on, SeqCst);
    }

    /// Caps every connection, in each direction, at `bytes_per_sec` (`None`: no cap).
    pub fn rate_limit(&self, bytes_per_sec: Option<u64>) {
        // 0 means "no cap" inside: a cap of 0 is taken as 1 byte per second.
        let rate = match bytes_per_sec {
            None => 0,
            Some(r) => r.max(1),
        };
        self.inner.rate.store(rate, SeqCst);
    }

    /// Data connections accepted so far (refused ones included).
    pub fn data_connections(&self) -> u64 {
        self.inner.data_conns.load(SeqCst)
    }

    /// Control connections accepted so far (refused ones included).
    pub fn control_connections(&self) -> u64 {
        self.inner.control_conns.load(SeqCst)
    }

    /// Connections being forwarded now.
    pub fn open_connections(&self) -> usize {
        lock(&self.inner.conns).len()
    }

    /// Connections cut so far (by a cut plan or `cut_all`).
    pub fn cuts(&self) -> u64 {
        self.inner.cuts.load(SeqCst)
    }

    /// Closes the listeners, resets every connection and joins every thread (within
    /// about [`TICK`]). Idempotent; also done on drop.
    pub fn stop(&mut self) {
        self.inner.stop.store(true, SeqCst);
        if let Some(h) = self.accepter.take() {
            let _ = h.join();
        }
        let conns: Vec<Arc<Conn>> = lock(&self.inner.conns).values().cloned().collect();
        for c in conns {
            c.abort(Cut::Rst);
        }
        loop {
            let handles = std::mem::take(&mut *lock(&self.inner.threads));
            if handles.is_empty() {
                break;
            }
            for h in handles {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("listen", &self.listen)
            .field("target", &self.inner.target)
            .field("ports", &self.ports)
            .field("one_way", &self.inner.one_way)
            .finish()
    }
}

impl Inner {
    fn now_nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn stopping(&self) -> bool {
        self.stop.load(SeqCst)
    }

    fn add_thread(&self, h: JoinHandle<()>) {
        lock(&self.threads).push(h);
    }

    /// Takes a cut ticket for a new data connection.
    fn take_ticket(&self) -> Option<Ticket> {
        let mut plan = lock(&self.plan);
        let p = (*plan)?;
        if let Some(n) = p.times {
            *plan = (n > 1).then_some(CutPlan {
                times: Some(n - 1),
                ..p
            });
        }
        Some(Ticket {
            dir: p.dir,
            bytes: p.bytes,
            how: p.how,
        })
    }
}

fn set_rcvbuf(s: &TcpStream, bytes: usize) {
    let n = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt on a socket we own, with an int.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &n as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn set_linger0(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Bytes written to `s` that the peer has not acknowledged yet.
fn unsent(s: &TcpStream) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r == 0 {
        n
    } else {
        0
    }
}

/// Resets a just-accepted connection.
fn reset(s: TcpStream) {
    set_linger0(&s);
    drop(s);
}

// ---------------------------------------------------------------------------
// Accepting

fn accept_loop(inner: Arc<Inner>, listeners: Vec<(TcpListener, u16, bool)>) {
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|(l, _, _)| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !inner.stopping() {
        // SAFETY: fds is a valid array of pollfd for the listeners we own.
        let r = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                TICK.as_millis() as libc::c_int,
            )
        };
        if r <= 0 {
            continue;
        }
        for (i, (l, port, data)) in listeners.iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            loop {
                match l.accept() {
                    Ok((s, _)) => on_accept(&inner, s, *port, *data),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        eprintln!("forwarder: accept on port {port}: {e}");
                        thread::sleep(TICK);
                        break;
                    }
                }
            }
        }
        lock(&inner.threads).retain(|h| !h.is_finished());
    }
    // The listeners close when dropped here.
}

fn on_accept(inner: &Arc<Inner>, client: TcpStream, port: u16, data: bool) {
    if data {
        inner.data_conns.fetch_add(1, SeqCst);
    } else {
        inner.control_conns.fetch_add(1, SeqCst);
    }
    let _ = client.set_nonblocking(false);
    if inner.refuse.load(SeqCst) {
        reset(client);
        return;
    }
    let i2 = inner.clone();
    match thread::Builder::new()
        .name("fwd-conn".into())
        .spawn(move || run_conn(i2, client, port, data))
    {
        Ok(h) => inner.add_thread(h),
        Err(e) => eprintln!("forwarder: spawn: {e}"),
    }
}

// ---------------------------------------------------------------------------
// Connections

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

struct Conn {
    id: u64,
    client: TcpStream,
    server: TcpStream,
    /// Set once: the connection is being torn down (cut, reset or stopped).
    aborted: AtomicBool,
    /// A data connection (cut plans apply to it).
    data: bool,
    /// Cut after so many bytes forwarded in one direction: the plan's ticket, taken
    /// when the connection first carries a byte (a data connection opened ahead of
    /// time and used later meets the plan in force when it is used).
    cut: std::sync::OnceLock<Option<Ticket>>,
    /// Bytes forwarded so far in the direction of `cut`.
    cut_count: AtomicU64,
    /// Frozen for good (`freeze_open`): nothing more is delivered, nothing closed.
    frozen: AtomicBool,
    /// Threads still working on this connection; the last one deregisters it.
    live: AtomicUsize,
}

impl Conn {
    fn aborted(&self) -> bool {
        self.aborted.load(SeqCst)
    }

    fn src(&self, d: Dir) -> &TcpStream {
        match d {
            Dir::Up => &self.client,
            Dir::Down => &self.server,
        }
    }

    fn dst(&self, d: Dir) -> &TcpStream {
        match d {
            Dir::Up => &self.server,
            Dir::Down => &self.client,
        }
    }

    /// Tears the connection down; the first call decides how.
    fn abort(&self, how: Cut) {
        if self.aborted.swap(true, SeqCst) {
            return;
        }
        match how {
            Cut::Rst => {
                // The RST goes out when the last thread drops the sockets; SHUT_RD sends
                // nothing but wakes the threads blocked in read().
                for s in [&self.client, &self.server] {
                    set_linger0(s);
                    let _ = s.shutdown(Shutdown::Read);
                }
            }
            Cut::Fin => {
                for s in [&self.client, &self.server] {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }

    /// Cut by the plan, once its bytes have been delivered in direction `d`.
    fn cut_now(&self, inner: &Inner, d: Dir, how: Cut) {
        if how == Cut::Rst {
            let deadline = Instant::now() + DRAIN_BEFORE_RST;
            while unsent(self.dst(d)) > 0 && Instant::now() < deadline && !self.aborted() {
                thread::sleep(Duration::from_millis(2));
            }
        }
        if !self.aborted() {
            inner.cuts.fetch_add(1, SeqCst);
        }
        self.abort(how);
    }
}

/// Deregisters the connection when its last thread leaves (also on panic).
struct Leave<'a>(&'a Inner, &'a Conn);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if self.1.live.fetch_sub(1, SeqCst) == 1 {
            lock(&self.0.conns).remove(&self.1.id);
        }
    }
}

fn run_conn(inner: Arc<Inner>, client: TcpStream, port: u16, data: bool) {
    let target = SocketAddr::from((inner.target, port));
    let server = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("forwarder: connect {target}: {e}");
            reset(client);
            return;
        }
    };
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(TICK));
        let _ = s.set_write_timeout(Some(TICK));
    }
    let delayed = !inner.one_way.is_zero();
    if delayed && inner.rate.load(SeqCst) > 0 {
        for s in [&client, &server] {
            set_rcvbuf(s, CHUNK);
        }
    }
    let conn = Arc::new(Conn {
        id: inner.next_id.fetch_add(1, SeqCst),
        client,
        server,
        aborted: AtomicBool::new(false),
        data,
        cut: std::sync::OnceLock::new(),
        cut_count: AtomicU64::new(0),
        frozen: AtomicBool::new(false),
        live: AtomicUsize::new(if delayed { 4 } else { 2 }),
    });
    lock(&inner.conns).insert(conn.id, conn.clone());
    if inner.stopping() {
        conn.abort(Cut::Rst);
    }
    type Job = Box<dyn FnOnce() + Send>;
    let mut jobs: Vec<Job> = Vec::new();
    if delayed {
        for d in [Dir::Up, Dir::Down] {
            let q = Arc::new(Queue::default());
            let (i1, c1, q1) = (inner.clone(), conn.clone(), q.clone());
            jobs.push(Box::new(move || reader(&i1, &c1, d, &q1)));
            let (i2, c2) = (inner.clone(), conn.clone());
            jobs.push(Box::new(move || writer(&i2, &c2, d, &q)));
        }
    } else {
        for d in [Dir::Up, Dir::Down] {
            let (i1, c1) = (inner.clone(), conn.clone());
            jobs.push(Box::new(move || pump(&i1, &c1, d)));
        }
    }
    // This thread runs the first job; the others get a thread each.
    let first = jobs.remove(0);
    for job in jobs {
        match thread::Builder::new().name("fwd-pipe".into()).spawn(job) {
            Ok(h) => inner.add_thread(h),
            Err(e) => {
                // The job was dropped unrun: give up on the connection, and leave in its
                // place so that the connection is deregistered when the others are done.
                eprintln!("forwarder: spawn: {e}");
                conn.abort(Cut::Rst);
                drop(Leave(&inner, &conn));
            }
        }
    }
    drop(conn);
    first();
}

enum ReadResult {
    Data(usize),
    Eof,
    Stop,
}

fn read_chunk(inner: &Inner, conn: &Conn, d: Dir, buf: &mut [u8]) -> ReadResult {
    loop {
        if inner.stopping() || conn.aborted() {
            return ReadResult::Stop;
        }
        match conn.src(d).read(buf) {
            Ok(0) if conn.aborted() => return ReadResult::Stop,
            Ok(0) => return ReadResult::Eof,
            Ok(n) => return ReadResult::Data(n),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                // The peer reset the connection: reset the other side too.
                conn.abort(Cut::Rst);
                return ReadResult::Stop;
            }
        }
    }
}

/// Sleeps until `due`, in ticks; false if the connection went away meanwhile.
fn sleep_until(inner: &Inner, conn: &Conn, due: Instant) -> bool {
    loop {
        if inner.stopping() || conn.aborted() {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        thread::sleep((due - now).min(TICK));
    }
}

fn wait_stall(inner: &Inner, conn: &Conn) -> bool {
    loop {
        if inner.stopping() || conn.aborted() {
            return false;
        }
        if conn.frozen.load(SeqCst) {
            thread::sleep(TICK);
            continue;
        }
        let until = inner.stall_until.load(SeqCst);
        let now = inner.now_nanos();
        if until == 0 || now >= until {
            return true;
        }
        thread::sleep(Duration::from_nanos(until - now).min(TICK));
    }
}

fn write_all(inner: &Inner, conn: &Conn, d: Dir, buf: &[u8]) -> bool {
    let mut off = 0;
    while off < buf.len() {
        if inner.stopping() || conn.aborted() {
            return false;
        }
        match conn.dst(d).write(&buf[off..]) {
            Ok(0) => {
                conn.abort(Cut::Rst);
                return false;
            }
            Ok(n) => off += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                conn.abort(Cut::Rst);
                return false;
            }
        }
    }
    true
}

/// Paces one direction at the current rate limit.
struct Pacer {
    rate: u64,
    next: Instant,
}

impl Pacer {
    fn new() -> Self {
        Pacer {
            rate: 0,
            next: Instant::now(),
        }
    }
}

/// Writes `buf` to the direction's destination, applying stalls, the rate limit and the
/// connection's cut plan; false when the direction is finished (cut, reset, stopped).
fn deliver(inner: &Inner, conn: &Conn, d: Dir, mut buf: &[u8], pacer: &mut Pacer) -> bool {
    while !buf.is_empty() {
        if !wait_stall(inner, conn) {
            return false;
        }
        let mut n = buf.len();
        let plan = conn
            .cut
            .get_or_init(|| if conn.data { inner.take_ticket() } else { None })
            .filter(|t| t.dir == d);
        if let Some(Ticket {
            bytes: limit, how, ..
        }) = plan
        {
            let sent = conn.cut_count.load(SeqCst);
            if sent >= limit {
                conn.cut_now(inner, d, how);
                return false;
            }
            n = n.min((limit - sent).min(usize::MAX as u64) as usize);
        }
        let rate = inner.rate.load(SeqCst);
        if rate != pacer.rate {
            pacer.rate = rate;
            pacer.next = Instant::now();
        }
        if rate > 0 {
            // Slices of about 1/20 s, so the cap holds at any moment.
            n = n.min((rate / 20).clamp(1, CHUNK as u64) as usize);
            if !sleep_until(inner, conn, pacer.next) {
                return false;
            }
            // A stall may have begun while we slept.
            if !wait_stall(inner, conn) {
                return false;
            }
        }
        let started = Instant::now();
        if !write_all(inner, conn, d, &buf[..n]) {
            return false;
        }
        if rate > 0 {
            pacer.next = pacer.next.max(started) + Duration::from_secs_f64(n as f64 / rate as f64);
        }
        if let Some(Ticket {
            bytes: limit, how, ..
        }) = plan
        {
            if conn.cut_count.fetch_add(n as u64, SeqCst) + n as u64 >= limit {
                conn.cut_now(inner, d, how);
                return false;
            }
        }
        buf = &buf[n..];
    }
    true
}

/// Propagates the source's EOF as a half-close.
fn half_close(inner: &Inner, conn: &Conn, d: Dir) {
    if wait_stall(inner, conn) {
        let _ = conn.dst(d).shutdown(Shutdown::Write);
    }
}

/// Zero delay: one thread reads and writes on.
fn pump(inner: &Inner, conn: &Conn, d: Dir) {
    let _leave = Leave(inner, conn);
    let mut buf = vec![0u8; CHUNK];
    let mut pacer = Pacer::new();
    loop {
        match read_chunk(inner, conn, d, &mut buf) {
            ReadResult::Data(n) => {
                if !deliver(inner, conn, d, &buf[..n], &mut pacer) {
                    return;
                }
            }
            ReadResult::Eof => {
                half_close(inner, conn, d);
                return;
            }
            ReadResult::Stop => return,
        }
    }
}

enum Item {
    Data(Instant, Vec<u8>),
    /// End of stream, due at the given time.
    Eof(Instant),
}

/// A queue bounded by bytes (one item over the bound is let in when it is empty).
#[derive(Default)]
struct Queue {
    state: Mutex<(VecDeque<Item>, usize)>,
    cv: Condvar,
}

impl Queue {
    fn push(&self, inner: &Inner, conn: &Conn, item: Item) -> bool {
        let len = match &item {
            Item::Data(_, v) => v.len(),
            Item::Eof(_) => 0,
        };
        let limit = match inner.rate.load(SeqCst) {
            0 => QUEUE_BYTES,
            r => ((r as f64 * (inner.one_way + SHAPER_QUEUE).as_secs_f64()) as usize)
                .clamp(CHUNK, QUEUE_BYTES),
        };
        let mut st = lock(&self.state);
        while st.1 + len > limit && !st.0.is_empty() {
            if inner.stopping() || conn.aborted() {
                return false;
            }
            st = self
                .cv
                .wait_timeout(st, TICK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.0.push_back(item);
        st.1 += len;
        self.cv.notify_all();
        true
    }

    fn pop(&self, inner: &Inner, conn: &Conn) -> Option<Item> {
        let mut st = lock(&self.state);
        loop {
            if let Some(item) = st.0.pop_front() {
                if let Item::Data(_, v) = &item {
                    st.1 -= v.len();
                }
                self.cv.notify_all();
                return Some(item);
            }
            if inner.stopping() || conn.aborted() {
                return None;
            }
            st = self
                .cv
                .wait_timeout(st, TICK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// With a delay: reads chunks, timestamps and queues them.
fn reader(inner: &Inner, conn: &Conn, d: Dir, q: &Queue) {
    let _leave = Leave(inner, conn);
    let mut buf = vec![0u8; CHUNK];
    loop {
        match read_chunk(inner, conn, d, &mut buf) {
            ReadResult::Data(n) => {
                let item = Item::Data(Instant::now() + inner.one_way, buf[..n].to_vec());
                if !q.push(inner, conn, item) {
                    return;
                }
            }
            ReadResult::Eof => {
                q.push(inner, conn, Item::Eof(Instant::now() + inner.one_way));
                return;
            }
            ReadResult::Stop => return,
        }
    }
}

/// With a delay: writes each queued chunk when it is due.
fn writer(inner: &Inner, conn: &Conn, d: Dir, q: &Queue) {
    let _leave = Leave(inner, conn);
    let mut pacer = Pacer::new();
    while let Some(item) = q.pop(inner, conn) {
        match item {
            Item::Data(due, buf) => {
                if !sleep_until(inner, conn, due) || !deliver(inner, conn, d, &buf, &mut pacer) {
                    return;
                }
            }
            Item::Eof(due) => {
                if sleep_until(inner, conn, due) {
                    half_close(inner, conn, d);
                }
                return;
            }
        }
    }
}
