//! Socket helpers the standard library lacks: a TCP connect that does not wait for
//! its handshake, and `poll(2)` over a few sockets with a deadline.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::{Duration, Instant};

/// Starts a TCP connection and returns at once: the socket is non-blocking and the
/// kernel finishes the handshake by itself; see [`wait_connected`].
pub fn connect_started(addr: SocketAddr) -> io::Result<TcpStream> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2) call; the fd is owned by the TcpStream made below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let rc = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: zeroed sockaddr_in is valid; fields set below.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: pointer and length describe `sa`.
            unsafe {
                libc::connect(
                    fd,
                    &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            // SAFETY: zeroed sockaddr_in6 is valid; fields set below.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr.s6_addr = a.ip().octets();
            sa.sin6_flowinfo = a.flowinfo();
            sa.sin6_scope_id = a.scope_id();
            // SAFETY: pointer and length describe `sa`.
            unsafe {
                libc::connect(
                    fd,
                    &sa as *const libc::sockaddr_in6 as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(stream)
}

/// Waits until a connection started by [`connect_started`] is established.
pub fn wait_connected(s: &TcpStream, deadline: Instant) -> io::Result<()> {
    loop {
        let ready = poll(&mut [(s.as_raw_fd(), libc::POLLOUT)], deadline)?;
        if ready.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out connecting",
            ));
        }
        if let Some(e) = s.take_error()? {
            return Err(e);
        }
        // POLLOUT without error: connected (peer_addr fails while it is not).
        if s.peer_addr().is_ok() {
            return Ok(());
        }
    }
}

/// True when the socket has something to read (data, EOF or an error) right now:
/// for an idle connection that should have nothing to say, a sign it is dead.
pub fn has_input(s: &TcpStream) -> bool {
    matches!(poll(&mut [(s.as_raw_fd(), libc::POLLIN)], Instant::now()), Ok(r) if !r.is_empty())
}

/// `poll(2)` until `deadline` over `(fd, events)` pairs; returns the indexes of
/// the ready ones (empty on timeout). EINTR is retried.
pub fn poll(fds: &mut [(RawFd, libc::c_short)], deadline: Instant) -> io::Result<Vec<usize>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left
            .as_millis()
            .min(i32::MAX as u128)
            .max(u128::from(left > Duration::ZERO)) as libc::c_int;
        // SAFETY: pfds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(pfds
            .iter()
            .enumerate()
            .filter(|(_, p)| p.revents != 0)
            .map(|(i, _)| i)
            .collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn connects_without_waiting_and_reports_refusal() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = connect_started(addr).unwrap();
        wait_connected(&s, Instant::now() + Duration::from_secs(5)).unwrap();
        assert!(!has_input(&s), "nothing sent yet");
        let (mut peer, _) = l.accept().unwrap();
        peer.write_all(b"x").unwrap();
        s.set_nonblocking(false).unwrap();
        let mut b = [0u8; 1];
        (&s).read_exact(&mut b).unwrap();
        drop(peer);
        assert!(has_input(&s), "EOF is input");

        drop(l);
        let refused = connect_started(addr)
            .and_then(|s| wait_connected(&s, Instant::now() + Duration::from_secs(5)));
        assert_eq!(
            refused.unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
    }

    #[test]
    fn poll_times_out_empty() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let t = Instant::now();
        let r = poll(
            &mut [(s.as_raw_fd(), libc::POLLIN)],
            Instant::now() + Duration::from_millis(50),
        )
        .unwrap();
        assert!(r.is_empty());
        assert!(t.elapsed() >= Duration::from_millis(45));
    }
}
