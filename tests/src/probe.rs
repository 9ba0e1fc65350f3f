//! Probes: real traffic with a short timeout (TCP, UDP, ping) from a lab's
//! namespaces; the echo servers they talk to are in [`crate::servers`].

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::Netns;

/// Outcome of [`Netns::tcp_connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpProbe {
    /// The handshake completed and a short message came back from the echo server.
    Connected,
    /// The connection was refused (RST to the SYN), or reset/closed by the peer
    /// before the echo came back.
    Refused,
    /// No answer within the timeout: the SYN (or the data after the handshake, or
    /// the echo) was dropped silently.
    TimedOut,
    /// An ICMP error came back (host/net unreachable, administratively prohibited),
    /// or there is no route locally.
    Unreachable,
}

/// Outcome of [`Netns::udp_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpProbe {
    /// The echo server sent the datagram back.
    Replied,
    /// ICMP port unreachable came back (nothing listens there).
    Refused,
    /// No answer within the timeout.
    TimedOut,
    /// Another ICMP error came back (host/net unreachable, prohibited), or no route.
    Unreachable,
}

/// Outcome of [`Netns::ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingProbe {
    /// An ICMP echo reply came back.
    Replied,
    /// No reply within the timeout.
    TimedOut,
    /// An ICMP error came back instead, or there is no route.
    Unreachable,
}

/// A timeout that suits probes expected to succeed (generous for a loaded machine).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A timeout for probes expected to time out (keeps the tests fast).
pub const SHORT_TIMEOUT: Duration = Duration::from_millis(300);

fn is_unreachable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EACCES | libc::EPERM | libc::EINVAL)
    )
}

static NONCE: AtomicU64 = AtomicU64::new(0);

fn probe_payload() -> Vec<u8> {
    format!(
        "lab-probe-{}-{}\n",
        std::process::id(),
        NONCE.fetch_add(1, Ordering::SeqCst)
    )
    .into_bytes()
}

/// Turns on `IP_RECVERR`/`IPV6_RECVERR`: ICMP errors that Linux otherwise treats as
/// "soft" (host/net unreachable: TCP keeps retrying the SYN, UDP ignores them) are
/// reported to the socket at once.
fn set_recverr(fd: RawFd, v4: bool) -> std::io::Result<()> {
    let (level, name) = if v4 {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    };
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn connect_reporting_icmp(dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    set_recverr(sock.as_raw_fd(), dst.is_ipv4())?;
    sock.connect_timeout(&dst.into(), timeout)?;
    Ok(sock.into())
}

fn tcp_probe(dst: SocketAddr, timeout: Duration) -> TcpProbe {
    let deadline = Instant::now() + timeout;
    let mut stream = match connect_reporting_icmp(dst, timeout) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return TcpProbe::Refused,
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            return TcpProbe::TimedOut
        }
        Err(e) if is_unreachable(&e) => return TcpProbe::Unreachable,
        Err(e) => panic!("tcp_connect {dst}: unexpected error: {e}"),
    };
    let _ = stream.set_nodelay(true);
    let payload = probe_payload();
    let remaining = |deadline: Instant| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    let classify = |e: std::io::Error| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => TcpProbe::TimedOut,
        ErrorKind::ConnectionRefused
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe
        | ErrorKind::UnexpectedEof => TcpProbe::Refused,
        _ if is_unreachable(&e) => TcpProbe::Unreachable,
        _ => panic!("tcp_connect {dst}: unexpected error after the handshake: {e}"),
    };
    if let Err(e) = stream.write_all(&payload) {
        return classify(e);
    }
    let mut got = vec![0u8; payload.len()];
    let mut have = 0;
    while have < got.len() {
        let Some(left) = remaining(deadline) else {
            return TcpProbe::TimedOut;
        };
        stream
            .set_read_timeout(Some(left))
            .expect("set_read_timeout");
        match stream.read(&mut got[have..]) {
            Ok(0) => return TcpProbe::Refused,
            Ok(n) => have += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return classify(e),
        }
    }
    assert_eq!(
        got, payload,
        "tcp_connect {dst}: the server answered, but not with an echo of the probe"
    );
    TcpProbe::Connected
}

/// `src_port`: 0 for any free port. `len`: the datagram's size (at least the
/// probe's marker; padded after it).
fn udp_probe(dst: SocketAddr, src_port: u16, len: usize, timeout: Duration) -> UdpProbe {
    let bind: SocketAddr = if dst.is_ipv4() {
        SocketAddr::new([0, 0, 0, 0].into(), src_port)
    } else {
        SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), src_port)
    };
    let sock = UdpSocket::bind(bind).expect("udp_request: bind");
    set_recverr(sock.as_raw_fd(), dst.is_ipv4()).expect("udp_request: IP_RECVERR");
    if let Err(e) = sock.connect(dst) {
        if is_unreachable(&e) {
            return UdpProbe::Unreachable;
        }
        panic!("udp_request {dst}: connect: {e}");
    }
    let mut payload = probe_payload();
    if payload.len() < len {
        payload.resize(len, b'.');
    }
    let deadline = Instant::now() + timeout;
    match sock.send(&payload) {
        Ok(_) => {}
        // Dropped on the way out (e.g. by a TC program): wait, it will time out.
        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return UdpProbe::Refused,
        Err(e) if is_unreachable(&e) => return UdpProbe::Unreachable,
        Err(e) => panic!("udp_request {dst}: send: {e}"),
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return UdpProbe::TimedOut;
        };
        sock.set_read_timeout(Some(left)).expect("set_read_timeout");
        match sock.recv(&mut buf) {
            Ok(n) if buf[..n] == payload[..] => return UdpProbe::Replied,
            Ok(_) => {} // a stray datagram; keep waiting
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return UdpProbe::Refused,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return UdpProbe::TimedOut
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_unreachable(&e) => return UdpProbe::Unreachable,
            Err(e) => panic!("udp_request {dst}: recv: {e}"),
        }
    }
}

/// Probes: methods of every namespace of a lab.
impl Netns {
    /// Connects from this namespace to `dst:port` and checks that a short message is
    /// echoed back, all within `timeout`.
    pub fn tcp_connect(&self, dst: impl Into<IpAddr>, port: u16, timeout: Duration) -> TcpProbe {
        let dst = SocketAddr::new(dst.into(), port);
        self.run(move || tcp_probe(dst, timeout))
    }

    /// Sends one UDP datagram from this namespace to `dst:port` and waits up to
    /// `timeout` for it to be echoed back.
    pub fn udp_request(&self, dst: impl Into<IpAddr>, port: u16, timeout: Duration) -> UdpProbe {
        self.udp_request_from(dst, port, 0, timeout)
    }

    /// [`Netns::udp_request`] from source port `src_port` (0: any free port).
    pub fn udp_request_from(
        &self,
        dst: impl Into<IpAddr>,
        port: u16,
        src_port: u16,
        timeout: Duration,
    ) -> UdpProbe {
        let dst = SocketAddr::new(dst.into(), port);
        self.run(move || udp_probe(dst, src_port, 0, timeout))
    }

    /// Like [`Netns::udp_request`] with a datagram of `len` bytes (e.g. larger than
    /// the MTU, so that it travels in IP fragments).
    pub fn udp_request_len(
        &self,
        dst: impl Into<IpAddr>,
        port: u16,
        len: usize,
        timeout: Duration,
    ) -> UdpProbe {
        let dst = SocketAddr::new(dst.into(), port);
        self.run(move || udp_probe(dst, 0, len, timeout))
    }

    /// Opens a TCP connection from this namespace to `dst:port` (connect timeout
    /// `timeout`, `TCP_NODELAY` on) for long-lived connection tests; use it from any
    /// thread. Panics if it cannot connect.
    pub fn tcp_stream(&self, dst: impl Into<IpAddr>, port: u16, timeout: Duration) -> TcpStream {
        let dst = SocketAddr::new(dst.into(), port);
        self.try_tcp_stream(dst, timeout)
            .unwrap_or_else(|e| panic!("tcp_stream from {} to {dst}: {e}", self.name()))
    }

    /// Like [`Netns::tcp_stream`], returning the connect error instead of panicking.
    pub fn try_tcp_stream(&self, dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        self.run(move || {
            let s = TcpStream::connect_timeout(&dst, timeout)?;
            s.set_nodelay(true)?;
            Ok(s)
        })
    }

    /// Sends one ICMP (v4 or v6) echo request from this namespace to `dst` with the
    /// `ping` binary and waits up to `timeout` for the reply.
    pub fn ping(&self, dst: impl Into<IpAddr>, timeout: Duration) -> PingProbe {
        let dst = dst.into();
        let secs = format!("{:.3}", timeout.as_secs_f64().max(0.001));
        let mut cmd = self.command("ping");
        cmd.args(["-n", "-c", "1", "-W", &secs])
            .arg(if dst.is_ipv4() { "-4" } else { "-6" })
            .arg(dst.to_string());
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ping: spawning {cmd:?}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        match out.status.code() {
            Some(0) => PingProbe::Replied,
            _ if ["nreachable", "rohibited", "filtered"]
                .iter()
                .any(|w| text.contains(w)) =>
            {
                PingProbe::Unreachable
            }
            Some(1) => PingProbe::TimedOut,
            _ => panic!("ping {dst} from {}: {}: {text}", self.name(), out.status),
        }
    }
}
