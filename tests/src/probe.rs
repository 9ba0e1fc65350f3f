//! Probes (real traffic with a short timeout) and echo servers.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
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

/// How often server threads look at their stop flag.
const POLL_MS: i32 = 50;

/// A background echo server (TCP or UDP, IPv4 and IPv6). Stops when dropped, or when
/// its lab is dropped.
#[derive(Debug)]
pub struct Server {
    port: u16,
    ctl: Arc<ServerCtl>,
}

impl Server {
    /// The port it listens on (useful with port 0 = pick a free one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops it now (same as dropping it).
    pub fn stop(self) {}
}

impl Drop for Server {
    fn drop(&mut self) {
        self.ctl.stop();
    }
}

/// All servers of one lab, so that dropping the lab stops them.
#[derive(Default)]
pub(crate) struct Servers {
    list: Mutex<Vec<Weak<ServerCtl>>>,
}

impl Servers {
    fn register(&self, ctl: &Arc<ServerCtl>) {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(ctl));
    }

    pub(crate) fn stop_all(&self) {
        let list = std::mem::take(&mut *self.list.lock().unwrap_or_else(|e| e.into_inner()));
        for ctl in list.iter().filter_map(Weak::upgrade) {
            ctl.stop();
        }
    }
}

#[derive(Debug)]
struct ServerCtl {
    stop: AtomicBool,
    /// Written on stop to wake the server thread's poll at once.
    wake: OwnedFd,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Clones of accepted TCP streams, shut down on stop to wake their threads.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

impl ServerCtl {
    fn new() -> Result<ServerCtl> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("eventfd");
        }
        Ok(ServerCtl {
            stop: AtomicBool::new(false),
            // SAFETY: fd is a fresh descriptor that nothing else owns.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
            thread: Mutex::default(),
            conns: Mutex::default(),
            next_conn: AtomicU64::new(0),
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        for (_, s) in self.conns.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// Waits up to 1 s for one of `fds` to be readable; returns the readable indices.
fn poll_readable(fds: &[RawFd]) -> Vec<usize> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: pfds is a valid array of pollfd of the given length.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
    if n <= 0 {
        return Vec::new();
    }
    pfds.iter()
        .enumerate()
        .filter(|(_, p)| p.revents != 0)
        .map(|(i, _)| i)
        .collect()
}

fn bind_socket(ty: Type, proto: Protocol, addr: SocketAddr) -> Result<Socket> {
    let domain = Domain::for_address(addr);
    let sock = Socket::new(domain, ty, Some(proto)).context("socket")?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    Ok(sock)
}

/// Binds `[::]:port` (v6 only) then `0.0.0.0:<same port>`.
fn bind_pair(ty: Type, proto: Protocol, port: u16) -> Result<(Socket, Socket, u16)> {
    let v6 = bind_socket(
        ty,
        proto,
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
    )?;
    let port = v6
        .local_addr()?
        .as_socket()
        .context("local address")?
        .port();
    let v4 = bind_socket(ty, proto, SocketAddr::new([0, 0, 0, 0].into(), port))?;
    Ok((v6, v4, port))
}

fn tcp_echo_server(netns: &Netns, port: u16) -> Result<Server> {
    let (v6, v4, port) = netns.try_run(|| -> Result<_> {
        let (v6, v4, port) = bind_pair(Type::STREAM, Protocol::TCP, port)?;
        v6.listen(128)?;
        v4.listen(128)?;
        Ok((TcpListener::from(v6), TcpListener::from(v4), port))
    })??;
    let ctl = Arc::new(ServerCtl::new()?);
    let c = ctl.clone();
    let thread = std::thread::Builder::new()
        .name(format!("tcp-echo-{port}"))
        .spawn(move || {
            let listeners = [v6, v4];
            let mut fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
            fds.push(c.wake.as_raw_fd());
            while !c.stopped() {
                for i in poll_readable(&fds) {
                    if i == listeners.len() {
                        break; // woken up to stop
                    }
                    if let Ok((stream, _)) = listeners[i].accept() {
                        spawn_echo_conn(&c, stream);
                    }
                }
            }
        })?;
    *ctl.thread.lock().unwrap() = Some(thread);
    netns.servers.register(&ctl);
    Ok(Server { port, ctl })
}

fn spawn_echo_conn(ctl: &Arc<ServerCtl>, stream: TcpStream) {
    let id = ctl.next_conn.fetch_add(1, Ordering::SeqCst);
    if let Ok(clone) = stream.try_clone() {
        ctl.conns.lock().unwrap().insert(id, clone);
    }
    let ctl = ctl.clone();
    let _ = std::thread::Builder::new()
        .name("tcp-echo-conn".into())
        .spawn(move || {
            let mut stream = stream;
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(POLL_MS as u64)));
            let mut buf = [0u8; 16 * 1024];
            while !ctl.stopped() {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            ctl.conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
}

/// Echoes one datagram back to its sender, from the address it was sent to (so a
/// request to any of a namespace's addresses gets an answer the client accepts).
fn echo_datagram(sock: &UdpSocket, buf: &mut [u8]) {
    use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned};
    use nix::sys::socket::{MsgFlags, SockaddrStorage};
    let fd = sock.as_raw_fd();
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
    let (n, from, mut v4info, mut v6info) = {
        let mut iov = [std::io::IoSliceMut::new(buf)];
        let Ok(msg) =
            recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
        else {
            return;
        };
        let (mut v4info, mut v6info) = (None, None);
        for c in msg.cmsgs().into_iter().flatten() {
            match c {
                ControlMessageOwned::Ipv4PacketInfo(i) => v4info = Some(i),
                ControlMessageOwned::Ipv6PacketInfo(i) => v6info = Some(i),
                _ => {}
            }
        }
        let Some(from) = msg.address else { return };
        (msg.bytes, from, v4info, v6info)
    };
    let iov = [std::io::IoSlice::new(&buf[..n])];
    let mut cmsgs = Vec::new();
    if let Some(i) = v4info.as_mut() {
        i.ipi_spec_dst = i.ipi_addr;
        i.ipi_ifindex = 0;
        cmsgs.push(ControlMessage::Ipv4PacketInfo(i));
    }
    if let Some(i) = v6info.as_mut() {
        i.ipi6_ifindex = 0;
        cmsgs.push(ControlMessage::Ipv6PacketInfo(i));
    }
    let _ = sendmsg(fd, &iov, &cmsgs, MsgFlags::empty(), Some(&from));
}

fn udp_echo_server(netns: &Netns, port: u16) -> Result<Server> {
    let (v6, v4, port) = netns.try_run(|| -> Result<_> {
        let (v6, v4, port) = bind_pair(Type::DGRAM, Protocol::UDP, port)?;
        use nix::sys::socket::{setsockopt, sockopt};
        setsockopt(&v4, sockopt::Ipv4PacketInfo, &true).context("IP_PKTINFO")?;
        setsockopt(&v6, sockopt::Ipv6RecvPacketInfo, &true).context("IPV6_RECVPKTINFO")?;
        Ok((UdpSocket::from(v6), UdpSocket::from(v4), port))
    })??;
    let ctl = Arc::new(ServerCtl::new()?);
    let c = ctl.clone();
    let thread = std::thread::Builder::new()
        .name(format!("udp-echo-{port}"))
        .spawn(move || {
            let sockets = [v6, v4];
            let mut fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
            fds.push(c.wake.as_raw_fd());
            let mut buf = [0u8; 64 * 1024];
            while !c.stopped() {
                for i in poll_readable(&fds) {
                    if i == sockets.len() {
                        break; // woken up to stop
                    }
                    echo_datagram(&sockets[i], &mut buf);
                }
            }
        })?;
    *ctl.thread.lock().unwrap() = Some(thread);
    netns.servers.register(&ctl);
    Ok(Server { port, ctl })
}

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

/// Probes and servers: methods of every namespace of a lab.
impl Netns {
    /// Starts a TCP echo server on `port` (0: any free port, see [`Server::port`]) on
    /// all IPv4 and IPv6 addresses of this namespace.
    pub fn tcp_listen(&self, port: u16) -> Server {
        tcp_echo_server(self, port)
            .unwrap_or_else(|e| panic!("tcp_listen({port}) in {}: {e:#}", self.name()))
    }

    /// Starts a UDP echo server on `port` (0: any free port) on all IPv4 and IPv6
    /// addresses of this namespace.
    pub fn udp_echo(&self, port: u16) -> Server {
        udp_echo_server(self, port)
            .unwrap_or_else(|e| panic!("udp_echo({port}) in {}: {e:#}", self.name()))
    }

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
