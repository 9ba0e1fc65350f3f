//! `agent relay certs --out DIR`: a CA, the relay's server certificate and the
//! agents' client certificate, each side in its own directory ready for a
//! Kubernetes Secret:
//! - `DIR/relay/{ca.crt,tls.crt,tls.key}`: the relay (`--tls-dir`);
//! - `DIR/agent/{ca.crt,tls.crt,tls.key}`: agents and query clients
//!   (`--relay-tls-dir`).
//!
//! The CA's key is not written: to add or rotate certificates, make a new set
//! and replace both Secrets.
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use super::tls::{CA, CERT, KEY};

/// Names the relay's certificate always carries (the in-cluster Service of
/// deploy/, and local addresses for a lab).
pub const DEFAULT_RELAY_NAMES: &[&str] = &[
    "agent-relay",
    "agent-relay.calico-system",
    "agent-relay.calico-system.svc",
    "localhost",
    "127.0.0.1",
];

/// Where a set was written.
pub struct Written {
    pub relay: PathBuf,
    pub agent: PathBuf,
}

/// Writes a new set under `out`; `relay_names`: more DNS names or IPs the
/// relay is dialled by.
pub fn write(out: &Path, relay_names: &[String]) -> anyhow::Result<Written> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = name("agent relay CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut names: Vec<String> = DEFAULT_RELAY_NAMES.iter().map(|s| s.to_string()).collect();
    names.extend(relay_names.iter().cloned());
    let relay = leaf(
        &ca,
        names,
        "agent relay",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let agent = leaf(
        &ca,
        vec!["agent".into()],
        "agent",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let written = Written {
        relay: out.join("relay"),
        agent: out.join("agent"),
    };
    for (dir, (cert, key)) in [(&written.relay, relay), (&written.agent, agent)] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_file(&dir.join(CA), ca.pem().as_bytes(), 0o644)?;
        write_file(&dir.join(CERT), cert.as_bytes(), 0o644)?;
        write_file(&dir.join(KEY), key.as_bytes(), 0o600)?;
    }
    Ok(written)
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn
}

/// A certificate signed by `ca`: (certificate PEM, key PEM).
fn leaf(
    ca: &CertifiedIssuer<'_, KeyPair>,
    names: Vec<String>,
    common: &str,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<(String, String)> {
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = name(common);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `path` with `mode`, replacing it.
fn write_file(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))
}
