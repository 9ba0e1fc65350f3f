//! Echo servers in a lab's namespaces (TCP and UDP, IPv4 and IPv6), the other
//! end of the probes in [`crate::probe`]; each stops when dropped or with its lab.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::Netns;

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

/// Servers: methods of every namespace of a lab.
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
}
