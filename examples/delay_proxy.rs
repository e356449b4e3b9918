//! A delaying TCP forwarder for benchmarks on loopback (this kernel has no netem).
//!
//! ```text
//! cargo run --release --example delay_proxy -- --rtt-ms 20 --ports 20000,20001-20016 \
//!     [--listen 127.0.0.2] [--target 127.0.0.1] [--rate-mbit 100]
//! ```
//!
//! For every port P it listens on `LISTEN:P` and forwards each connection to `TARGET:P`.
//! Each direction delays every chunk by RTT/2: a reader thread timestamps the chunks it
//! reads and queues them, a writer thread sleeps until each chunk is due and writes it.
//! There is no bandwidth cap unless `--rate-mbit` gives one (per connection and direction,
//! as a per-flow shaper on a real path does; the queue is bounded only to keep memory in
//! check), TCP_NODELAY is set on both sides, and a half-close (EOF) is propagated with
//! `shutdown(Write)` once every earlier chunk has been delivered.
//!
//! The forwarding itself is the test suite's forwarder (tests/support/forwarder.rs, which
//! also injects faults in tests); this program only parses the command line.
//!
//! Prints `READY` on stdout once every port is listening; runs until killed.

#[path = "../tests/support/forwarder.rs"]
mod forwarder;

use std::io::Write;
use std::net::Ipv4Addr;
use std::time::Duration;

use forwarder::Forwarder;

struct Args {
    listen: Ipv4Addr,
    target: Ipv4Addr,
    ports: Vec<u16>,
    one_way: Duration,
    /// Bytes per second per connection and direction (None: no cap).
    rate: Option<u64>,
}

fn usage(msg: &str) -> ! {
    eprintln!("delay_proxy: {msg}");
    eprintln!(
        "usage: delay_proxy --rtt-ms MS --ports P[-Q][,P[-Q]...] \
         [--listen 127.0.0.2] [--target 127.0.0.1] [--rate-mbit N]"
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
    let mut rate_mbit: Option<f64> = None;
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
            "--rate-mbit" => {
                rate_mbit = Some(val().parse().unwrap_or_else(|_| usage("bad --rate-mbit")))
            }
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
        rate: match rate_mbit {
            Some(r) if r > 0.0 => Some((r * 1e6 / 8.0) as u64),
            Some(_) => usage("--rate-mbit must be > 0"),
            None => None,
        },
    }
}

fn main() {
    let args = parse_args();
    let fwd = match Forwarder::try_start(args.listen, args.target, &args.ports, args.one_way) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("delay_proxy: {e}");
            std::process::exit(1);
        }
    };
    fwd.rate_limit(args.rate);
    println!(
        "READY listen={} target={} ports={} one_way_ms={:.3} rate_bytes_per_s={}",
        args.listen,
        args.target,
        args.ports.len(),
        args.one_way.as_secs_f64() * 1000.0,
        args.rate.unwrap_or(0)
    );
    let _ = std::io::stdout().flush();
    let _fwd = fwd;
    loop {
        std::thread::park();
    }
}
