//! `agent debug-drop`: attach the first-slice program to an interface, drop
//! one (protocol, port) and print each drop the kernel reports. A development
//! aid for the demo and for checking a machine, not the policy dataplane.
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::programs::tc::TcAttachType;

use crate::dataplane::slice::SliceDropper;

#[derive(Debug, clap::Args)]
pub struct DebugDropArgs {
    /// Host-side interface to attach to (in this process's network namespace).
    #[arg(long)]
    pub interface: String,
    /// `tcp/8080`, `udp/53`, `sctp/9`.
    #[arg(long)]
    pub port: String,
    /// How long to stay attached (seconds); the program is detached on exit.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

pub fn run(args: DebugDropArgs) -> anyhow::Result<()> {
    let (proto, port) = args
        .port
        .split_once('/')
        .context("--port must look like tcp/8080")?;
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        other => anyhow::bail!(
            "--port {}: protocol {other:?} is not tcp, udp or sctp",
            args.port
        ),
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("--port {}: {port:?} is not a port number", args.port))?;
    let mut dropper = SliceDropper::load()?;
    // Both hooks: TC ingress sees what the pod sends, TC egress what it receives.
    dropper.attach(&args.interface, TcAttachType::Ingress)?;
    dropper.attach(&args.interface, TcAttachType::Egress)?;
    dropper.drop_port(protocol, port)?;
    println!(
        "attached to {} (tcx ingress+egress), dropping {}",
        args.interface, args.port
    );
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < deadline {
        for d in dropper.drain_events() {
            println!(
                "drop: {} {}:{} -> {}:{} (ifindex {})",
                match d.protocol {
                    6 => "TCP",
                    17 => "UDP",
                    _ => "SCTP",
                },
                d.src,
                d.src_port,
                d.dst,
                d.dst_port,
                d.ifindex
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("detached; {} packets dropped", dropper.dropped()?);
    Ok(())
}
