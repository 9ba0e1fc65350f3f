//! The compiled load generator of the real-traffic bench (`cargo xtask bench
//! --traffic`, `lab::traffic`), run inside a pod's network namespace with
//! `nsenter --net=`. Each mode prints one line of `key=value` fields.
//!
//! ```text
//! loadgen serve PORT SINK_PORT         accept-and-close on PORT, a byte sink on SINK_PORT
//!                                      (all addresses, IPv4 and IPv6); runs until killed
//! loadgen connect ADDR PORT SECS THREADS
//!                                      new TCP connections as fast as possible for SECS:
//!                                      connections=N failures=F seconds=S
//! loadgen stream ADDR PORT SECS        one TCP stream into the sink for SECS:
//!                                      bytes=N seconds=S
//! loadgen probe ADDR PORT TIMEOUT_MS   one connection: connected|refused|timeout|unreachable
//! ```
//!
//! `connect` closes each connection with SO_LINGER 0 (an RST, no TIME_WAIT), so
//! the ephemeral ports never run out however many connections a run opens; a
//! connection counts once its handshake completed (the SYN, the SYN-ACK and the
//! ACK crossed the node, in both directions), its RST follows.
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Socket, Type};

/// How long one connection attempt may take in `connect` before it counts as
/// a failure (a policy drop, or a SYN lost to a full queue).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The write size of `stream`.
const CHUNK: usize = 256 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen {}: {e:#}", args.join(" "));
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<String> {
    let arg = |i: usize, what: &str| -> Result<&str> {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("missing argument {i} ({what}); see the usage in loadgen.rs"))
    };
    let num = |i: usize, what: &str| -> Result<f64> {
        let text = arg(i, what)?;
        text.parse()
            .with_context(|| format!("argument {i} ({what}): {text:?} is not a number"))
    };
    let addr = |i: usize| -> Result<SocketAddr> {
        let ip: IpAddr = arg(i, "address")?
            .parse()
            .with_context(|| format!("argument {i}: not an IP address"))?;
        Ok(SocketAddr::new(ip, num(i + 1, "port")? as u16))
    };
    match arg(0, "mode")? {
        "serve" => serve(num(1, "port")? as u16, num(2, "sink port")? as u16),
        "connect" => connect(addr(1)?, num(3, "seconds")?, num(4, "threads")? as usize),
        "stream" => stream(addr(1)?, num(3, "seconds")?),
        "probe" => probe(
            addr(1)?,
            Duration::from_millis(num(3, "timeout ms")? as u64),
        ),
        other => bail!("unknown mode {other:?} (serve, connect, stream or probe)"),
    }
}

/// A listener on every IPv4 and IPv6 address of this namespace.
fn listen(port: u16) -> Result<TcpListener> {
    let sock = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    sock.set_only_v6(false)?;
    sock.set_reuse_address(true)?;
    sock.bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port).into())
        .with_context(|| format!("binding port {port}"))?;
    sock.listen(4096)?;
    Ok(sock.into())
}

fn serve(port: u16, sink_port: u16) -> Result<String> {
    let accept = listen(port)?;
    let sink = listen(sink_port)?;
    std::thread::spawn(move || {
        for conn in sink.incoming().flatten() {
            std::thread::spawn(move || drain(conn));
        }
    });
    // Accept and close: the connection-rate server.
    loop {
        match accept.accept() {
            Ok((conn, _)) => drop(conn),
            Err(e) if e.kind() == ErrorKind::ConnectionAborted => {}
            Err(e) => bail!("accept on port {port}: {e}"),
        }
    }
}

/// Reads until the peer's end of stream, then closes (so the writer's final
/// read sees every byte delivered).
fn drain(mut conn: std::net::TcpStream) {
    let mut buf = vec![0u8; CHUNK];
    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
}

fn connect(dst: SocketAddr, seconds: f64, threads: usize) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| s.spawn(|| connect_until(dst, deadline, &done, &failed)))
            .collect();
        for w in workers {
            w.join().expect("connect thread")?;
        }
        Ok(())
    })?;
    Ok(format!(
        "connections={} failures={} seconds={:.6}",
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    ))
}

/// One thread of `connect`: connect, close with an RST, again, until `deadline`.
fn connect_until(
    dst: SocketAddr,
    deadline: Instant,
    done: &AtomicU64,
    failed: &AtomicU64,
) -> Result<()> {
    let addr = dst.into();
    while Instant::now() < deadline {
        let sock = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
        sock.set_linger(Some(Duration::ZERO))?;
        // A blocking connect gives up after SO_SNDTIMEO.
        sock.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        match sock.connect(&addr) {
            Ok(()) => done.fetch_add(1, Ordering::Relaxed),
            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
        };
    }
    Ok(())
}

fn stream(dst: SocketAddr, seconds: f64) -> Result<String> {
    let mut conn = std::net::TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to the sink {dst}"))?;
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut bytes = 0u64;
    while Instant::now() < deadline {
        conn.write_all(&buf).context("writing to the sink")?;
        bytes += CHUNK as u64;
    }
    conn.shutdown(Shutdown::Write)?;
    // The sink closes once it has read everything: the time includes delivery.
    let mut rest = [0u8; 64];
    while conn
        .read(&mut rest)
        .context("waiting for the sink to close")?
        > 0
    {}
    Ok(format!(
        "bytes={bytes} seconds={:.6}",
        start.elapsed().as_secs_f64()
    ))
}

fn probe(dst: SocketAddr, timeout: Duration) -> Result<String> {
    let outcome = match std::net::TcpStream::connect_timeout(&dst, timeout) {
        Ok(_) => "connected",
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => "refused",
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => "timeout",
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EHOSTUNREACH | libc::ENETUNREACH)
            ) =>
        {
            "unreachable"
        }
        Err(e) => bail!("probing {dst}: {e}"),
    };
    Ok(outcome.to_owned())
}
