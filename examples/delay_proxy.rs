//! A delaying TCP forwarder for benchmarks on loopback (this kernel has no netem).
//!
//! ```text
//! cargo run --release --example delay_proxy -- --rtt-ms 20 --ports 20000,20001-20016 \
//!     [--listen 127.0.0.2] [--target 127.0.0.1]
//! ```
//!
//! For every port P it listens on `LISTEN:P` and forwards each connection to `TARGET:P`.
//! Each direction delays every chunk by RTT/2: a reader thread timestamps the chunks it
//! reads and queues them, a writer thread sleeps until each chunk is due and writes it.
//! There is no bandwidth cap (big buffers; the queue is bounded only to keep memory in
//! check), TCP_NODELAY is set on both sides, and a half-close (EOF) is propagated with
//! `shutdown(Write)` once every earlier chunk has been delivered.
//!
//! Prints `READY` on stdout once every port is listening; runs until killed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

const CHUNK: usize = 256 * 1024;
/// Queued chunks per direction (bounds memory; at most QUEUE * CHUNK bytes in flight).
const QUEUE: usize = 1024;

struct Args {
    listen: Ipv4Addr,
    target: Ipv4Addr,
    ports: Vec<u16>,
    one_way: Duration,
}

fn usage(msg: &str) -> ! {
    eprintln!("delay_proxy: {msg}");
    eprintln!(
        "usage: delay_proxy --rtt-ms MS --ports P[-Q][,P[-Q]...] \
         [--listen 127.0.0.2] [--target 127.0.0.1]"
    );
    std::process::exit(2);
}

fn parse_ports(s: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: u16 = a.trim().parse().unwrap_or_else(|_| usage("bad port"));
        let b: u16 = b.trim().parse().unwrap_or_else(|_| usage("bad port"));
        if a > b {
            usage("bad port range");
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn parse_args() -> Args {
    let mut listen = Ipv4Addr::new(127, 0, 0, 2);
    let mut target = Ipv4Addr::LOCALHOST;
    let mut ports = Vec::new();
    let mut rtt_ms: Option<f64> = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--listen" => listen = val().parse().unwrap_or_else(|_| usage("bad --listen")),
            "--target" => target = val().parse().unwrap_or_else(|_| usage("bad --target")),
            "--ports" => ports.extend(parse_ports(&val())),
            "--rtt-ms" => rtt_ms = Some(val().parse().unwrap_or_else(|_| usage("bad --rtt-ms"))),
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let rtt_ms = rtt_ms.unwrap_or_else(|| usage("--rtt-ms is required"));
    if ports.is_empty() {
        usage("--ports is required");
    }
    if rtt_ms < 0.0 {
        usage("--rtt-ms must be >= 0");
    }
    Args {
        listen,
        target,
        ports,
        one_way: Duration::from_secs_f64(rtt_ms / 2000.0),
    }
}

enum Item {
    Data(Instant, Vec<u8>),
    /// End of stream (EOF or read error), due at the given time.
    Eof(Instant),
}

fn reader(mut src: TcpStream, tx: SyncSender<Item>, delay: Duration) {
    loop {
        let mut buf = vec![0u8; CHUNK];
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                if tx.send(Item::Data(Instant::now() + delay, buf)).is_err() {
                    // The writer gave up: stop reading from this side too.
                    let _ = src.shutdown(Shutdown::Read);
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = tx.send(Item::Eof(Instant::now() + delay));
}

fn sleep_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        thread::sleep(due - now);
    }
}

fn writer(mut dst: TcpStream, src: TcpStream, rx: Receiver<Item>) {
    for item in rx {
        match item {
            Item::Data(due, buf) => {
                sleep_until(due);
                if dst.write_all(&buf).is_err() {
                    // Peer is gone: tear down both sides of this direction.
                    let _ = dst.shutdown(Shutdown::Both);
                    let _ = src.shutdown(Shutdown::Both);
                    return;
                }
            }
            Item::Eof(due) => {
                sleep_until(due);
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
        }
    }
    let _ = dst.shutdown(Shutdown::Write);
}

/// Forwards one direction (a -> b) with the delay; returns the two thread handles.
fn pipe(
    a: &TcpStream,
    b: &TcpStream,
    delay: Duration,
) -> std::io::Result<[thread::JoinHandle<()>; 2]> {
    let (tx, rx) = sync_channel(QUEUE);
    let src = a.try_clone()?;
    let src2 = a.try_clone()?;
    let dst = b.try_clone()?;
    let r = thread::Builder::new()
        .name("rd".into())
        .spawn(move || reader(src, tx, delay))?;
    let w = thread::Builder::new()
        .name("wr".into())
        .spawn(move || writer(dst, src2, rx))?;
    Ok([r, w])
}

fn handle(client: TcpStream, target: SocketAddr, delay: Duration) {
    let server = match TcpStream::connect(target) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("delay_proxy: connect {target}: {e}");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut handles = Vec::new();
    match pipe(&client, &server, delay) {
        Ok(h) => handles.extend(h),
        Err(e) => {
            eprintln!("delay_proxy: spawn: {e}");
            return;
        }
    }
    match pipe(&server, &client, delay) {
        Ok(h) => handles.extend(h),
        Err(e) => {
            eprintln!("delay_proxy: spawn: {e}");
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
    for h in handles {
        let _ = h.join();
    }
    // Both directions finished: the sockets close when dropped here.
}

fn main() {
    let args = parse_args();
    let mut listeners = Vec::new();
    for &p in &args.ports {
        let addr = SocketAddr::from((args.listen, p));
        match TcpListener::bind(addr) {
            Ok(l) => listeners.push((l, SocketAddr::from((args.target, p)))),
            Err(e) => {
                eprintln!("delay_proxy: bind {addr}: {e}");
                std::process::exit(1);
            }
        }
    }
    let delay = args.one_way;
    let mut accepters = Vec::new();
    for (l, target) in listeners {
        accepters.push(thread::spawn(move || {
            for conn in l.incoming() {
                match conn {
                    Ok(c) => {
                        let _ = thread::Builder::new()
                            .name("conn".into())
                            .spawn(move || handle(c, target, delay));
                    }
                    Err(e) => eprintln!("delay_proxy: accept: {e}"),
                }
            }
        }));
    }
    println!(
        "READY listen={} target={} ports={} one_way_ms={:.3}",
        args.listen,
        args.target,
        args.ports.len(),
        delay.as_secs_f64() * 1000.0
    );
    let _ = std::io::stdout().flush();
    for a in accepters {
        let _ = a.join();
    }
}
