//! mTLS from a certificate directory (as `agent relay certs` writes it, or a
//! Kubernetes Secret mounted): `ca.crt` (the CA both sides trust), `tls.crt`
//! and `tls.key` (this side's certificate and key).
//!
//! The relay requires a client certificate chaining to `ca.crt` (no
//! certificate, or one from another CA: the handshake fails); the agent and
//! the query client require the relay's certificate to chain to `ca.crt` and
//! to name the address they dial.
use std::path::Path;

use anyhow::Context;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

pub const CA: &str = "ca.crt";
pub const CERT: &str = "tls.crt";
pub const KEY: &str = "tls.key";

fn read(dir: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(name);
    std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (a directory with {CA}, {CERT} and {KEY}: `agent relay certs --out DIR` \
             writes them)",
            path.display()
        )
    })
}

fn identity(dir: &Path) -> anyhow::Result<Identity> {
    Ok(Identity::from_pem(read(dir, CERT)?, read(dir, KEY)?))
}

/// The relay's side: its identity, and client certificates required.
pub fn server(dir: &Path) -> anyhow::Result<ServerTlsConfig> {
    Ok(ServerTlsConfig::new()
        .identity(identity(dir)?)
        .client_ca_root(Certificate::from_pem(read(dir, CA)?))
        .client_auth_optional(false))
}

/// A client's side (agents and queries): the relay must chain to `ca.crt`
/// and be named `host` (of `host:port`) in its certificate.
pub fn client(dir: &Path, addr: &str) -> anyhow::Result<ClientTlsConfig> {
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(dir, CA)?))
        .identity(identity(dir)?)
        .domain_name(host_of(addr)))
}

/// A lazily connecting channel to the relay at `addr` (`host:port`).
pub fn channel(addr: &str, tls_dir: &Path) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .with_context(|| format!("relay address {addr:?} (expected HOST:PORT)"))?
        .tls_config(client(tls_dir, addr)?)
        .with_context(|| format!("TLS settings from {}", tls_dir.display()))?
        .connect_timeout(std::time::Duration::from_secs(5));
    Ok(endpoint.connect_lazy())
}

/// `host` of `host:port`, `[v6]:port` or a bare host.
fn host_of(addr: &str) -> String {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
        _ => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_addresses() {
        assert_eq!(super::host_of("agent-relay:7443"), "agent-relay");
        assert_eq!(super::host_of("127.0.0.1:7443"), "127.0.0.1");
        assert_eq!(super::host_of("[fd00::1]:7443"), "fd00::1");
        assert_eq!(super::host_of("relay"), "relay");
    }
}
