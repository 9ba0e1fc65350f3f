//! Commit-confirmed promotion (file datastore): `agent promote KIND/NAME
//! --confirm-within 2m [--confirm-if CHECK]...` takes effect at once, and the
//! running agent undoes it unless it is confirmed in time.
//!
//! The CLI only writes a journal beside the policies
//! (`DIR/.agent/pending/<target>.json`: every file the promotion changed, with
//! its text before and after, the deadline and the checks); the agent, which
//! outlives an operator whose own connection the promotion just cut, is what
//! reverts. Every [`TICK`] it looks at each pending promotion:
//! - confirmed (`agent confirm`, or `promote --confirm`): the journal is gone;
//! - checks (`--confirm-if`) failing: revert at once; all passing for the
//!   settle time: confirmed by the agent;
//! - past the deadline: revert.
//!
//! A revert writes each file's text from before the promotion back (through
//! symlinks, keeping the mode: the promote writer), which the file watcher
//! then loads like any edit. The journal lives in a dot-directory, which the
//! loader and the watcher skip.
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::model::load::collect_files;
use crate::model::promote::{self, replace_file, PromoteReport};

/// How often the agent looks at pending promotions and runs their checks.
pub const TICK: Duration = Duration::from_millis(500);
/// How long every check must keep passing to confirm, unless `--settle`.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(10);

/// A condition the agent checks after a promotion (`--confirm-if`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Check {
    /// `tcp:ADDR:PORT`: a TCP connection from the agent's network namespace.
    Tcp { addr: SocketAddr },
    /// `dns:NAME`: the name resolves.
    Dns { name: String },
    /// `apiserver`: the datastore's API server answers the agent (an
    /// authenticated GET /version through the agent's own client; Kubernetes
    /// only: a directory datastore has no API server and refuses it).
    Apiserver,
}

impl std::str::FromStr for Check {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}`: a check is tcp:ADDR:PORT (e.g. tcp:10.0.0.1:22, tcp:[fd00::1]:22), dns:NAME or apiserver")
        };
        if s == "apiserver" {
            return Ok(Check::Apiserver);
        }
        match s.split_once(':') {
            Some(("tcp", rest)) => Ok(Check::Tcp {
                addr: rest.parse().map_err(|_| bad())?,
            }),
            Some(("dns", name)) if !name.is_empty() => Ok(Check::Dns { name: name.into() }),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Tcp { addr } => write!(f, "tcp:{addr}"),
            Check::Dns { name } => write!(f, "dns:{name}"),
            Check::Apiserver => write!(f, "apiserver"),
        }
    }
}

impl Check {
    /// Runs the check once (blocking, bounded by a short timeout). The
    /// `apiserver` check needs the datastore's client: the Kubernetes side runs
    /// it ([`crate::datastore::kubernetes::confirm::first_failure`]); here it fails.
    pub fn run(&self) -> Result<(), String> {
        match self {
            Check::Tcp { addr } => {
                std::net::TcpStream::connect_timeout(addr, Duration::from_secs(1))
                    .map(drop)
                    .map_err(|e| format!("{self}: {e}"))
            }
            Check::Dns { name } => match (name.as_str(), 0).to_socket_addrs() {
                Ok(addrs) if addrs.len() > 0 => Ok(()),
                Ok(_) => Err(format!("{self}: no address")),
                Err(e) => Err(format!("{self}: {e}")),
            },
            Check::Apiserver => Err(format!("{self}: {NO_API_SERVER}")),
        }
    }
}

const NO_API_SERVER: &str =
    "a directory datastore has no API server to check (`--confirm-if apiserver` needs --datastore kubernetes)";

/// `agent status`: `TARGET awaits confirmation until T[ (checks: ...)]`.
pub fn awaiting_line(target: &str, deadline_unix_ms: u64, checks: &[Check]) -> String {
    let checks = if checks.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = checks.iter().map(ToString::to_string).collect();
        format!(" (checks: {})", list.join(", "))
    };
    format!(
        "{target} awaits confirmation until {}{checks}",
        crate::flows::rfc3339(deadline_unix_ms * 1_000_000)
    )
}

/// A file as the promotion found and left it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    pub path: PathBuf,
    pub before: String,
    pub after: String,
}

/// A promotion waiting for confirmation: the journal's contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// `sgnp/name` or `snp/namespace/name` as given, for messages.
    pub target: String,
    pub promoted: String,
    pub deadline_unix_ms: u64,
    pub checks: Vec<Check>,
    pub settle_ms: u64,
    pub files: Vec<FileChange>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn journal_dir(datastore: &Path) -> PathBuf {
    datastore.join(".agent").join("pending")
}

/// The journal of `target` (`KIND/NAME` plus namespace): one file per target.
pub fn journal_path(datastore: &Path, target: &str) -> PathBuf {
    let safe: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    journal_dir(datastore).join(format!("{safe}.json"))
}

/// Every file's text under `datastore` (the policy files promote may edit).
fn snapshot(datastore: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut diags = Vec::new();
    collect_files(&[datastore], &mut diags)
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?;
            Ok((f, text))
        })
        .collect()
}

/// Promotes and writes the journal the agent acts on (module docs).
pub fn begin(
    datastore: &Path,
    target: &str,
    promotion: impl FnOnce() -> Result<PromoteReport, promote::PromoteError>,
    within: Duration,
    checks: Vec<Check>,
    settle: Duration,
) -> anyhow::Result<(PromoteReport, Pending)> {
    anyhow::ensure!(!checks.contains(&Check::Apiserver), "{NO_API_SERVER}");
    let path = journal_path(datastore, target);
    anyhow::ensure!(
        !path.exists(),
        "{target} already awaits confirmation ({}): `agent confirm` it or let it revert first",
        path.display()
    );
    let before = snapshot(datastore)?;
    let report = promotion()?;
    let mut files = Vec::new();
    for (path, before) in before {
        let after = std::fs::read_to_string(&path).unwrap_or_default();
        if after != before {
            files.push(FileChange {
                path,
                before,
                after,
            });
        }
    }
    let pending = Pending {
        target: target.into(),
        promoted: report.enforced.clone(),
        deadline_unix_ms: unix_ms(SystemTime::now() + within),
        checks,
        settle_ms: settle.as_millis() as u64,
        files,
    };
    std::fs::create_dir_all(journal_dir(datastore))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&pending)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok((report, pending))
}

/// `agent confirm`: the promotion stays. False when nothing was pending.
pub fn confirm(datastore: &Path, target: &str) -> anyhow::Result<bool> {
    match std::fs::remove_file(journal_path(datastore, target)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Puts every changed file back as it was before the promotion.
fn revert(pending: &Pending) -> anyhow::Result<()> {
    for f in &pending.files {
        replace_file(&f.path, f.before.as_bytes())?;
    }
    Ok(())
}

/// What happened to a pending promotion, for logs and `agent status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub target: String,
    pub action: &'static str,
    pub reason: String,
    pub at_unix_ms: u64,
}

/// The agent's side: tracks how long each pending promotion's checks have
/// been passing, and decides.
#[derive(Default)]
pub struct Supervisor {
    /// Per journal: since when every check has passed (unix ms).
    passing_since: std::collections::HashMap<PathBuf, u64>,
}

impl Supervisor {
    /// One look at every journal under `datastore` (blocking: runs checks).
    /// Returns what was decided now, and what is still pending.
    pub fn tick(&mut self, datastore: &Path) -> (Vec<Outcome>, Vec<Pending>) {
        let mut outcomes = Vec::new();
        let mut waiting = Vec::new();
        let Ok(entries) = std::fs::read_dir(journal_dir(datastore)) else {
            self.passing_since.clear();
            return (outcomes, waiting);
        };
        let now = unix_ms(SystemTime::now());
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some(pending) = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Pending>(&b).ok())
            else {
                continue;
            };
            match self.decide(&path, &pending, now) {
                Some((action, reason)) => {
                    outcomes.push(self.carry_out(&path, &pending, action, reason, now))
                }
                None => waiting.push(pending),
            }
        }
        (outcomes, waiting)
    }

    fn decide(&mut self, path: &Path, p: &Pending, now: u64) -> Option<(&'static str, String)> {
        if let Some(failed) = p.checks.iter().find_map(|c| c.run().err()) {
            return Some(("reverted", format!("check failed: {failed}")));
        }
        if now >= p.deadline_unix_ms {
            return Some(("reverted", "not confirmed in time".into()));
        }
        if p.checks.is_empty() {
            return None;
        }
        let since = *self.passing_since.entry(path.into()).or_insert(now);
        (now.saturating_sub(since) >= p.settle_ms).then(|| {
            (
                "confirmed",
                format!("every check passed for {} ms", p.settle_ms),
            )
        })
    }

    fn carry_out(
        &mut self,
        path: &Path,
        p: &Pending,
        action: &'static str,
        mut reason: String,
        now: u64,
    ) -> Outcome {
        self.passing_since.remove(path);
        if action == "reverted" {
            if let Err(e) = revert(p) {
                reason = format!("{reason}; REVERT FAILED: {e}");
            }
        }
        let _ = std::fs::remove_file(path);
        Outcome {
            target: p.target.clone(),
            action,
            reason,
            at_unix_ms: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_parse_and_print() {
        let c: Check = "tcp:10.0.0.1:22".parse().unwrap();
        assert_eq!(c.to_string(), "tcp:10.0.0.1:22");
        let c: Check = "tcp:[fd00::1]:22".parse().unwrap();
        assert_eq!(c.to_string(), "tcp:[fd00::1]:22");
        assert_eq!(
            "dns:kubernetes.default".parse::<Check>().unwrap(),
            Check::Dns {
                name: "kubernetes.default".into()
            }
        );
        assert_eq!("apiserver".parse::<Check>().unwrap(), Check::Apiserver);
        assert_eq!(Check::Apiserver.to_string(), "apiserver");
        let json = serde_json::to_string(&Check::Apiserver).unwrap();
        assert_eq!(
            serde_json::from_str::<Check>(&json).unwrap(),
            Check::Apiserver
        );
        for bad in [
            "tcp:10.0.0.1",
            "udp:1.2.3.4:5",
            "dns:",
            "ping",
            "apiserver:x",
        ] {
            let e = bad.parse::<Check>().unwrap_err();
            assert!(e.contains("tcp:ADDR:PORT"), "{e}");
        }
    }

    #[test]
    fn an_unconfirmed_promotion_reverts_byte_for_byte_and_a_confirmed_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        let staged = "apiVersion: projectcalico.org/v3\nkind: StagedGlobalNetworkPolicy\nmetadata:\n  name: lockdown\nspec:\n  selector: all()\n  types: [Ingress]\n";
        std::fs::write(&file, staged).unwrap();
        let promote = || {
            promote::promote(
                dir.path(),
                crate::model::ir::PolicyKind::StagedGlobalNetworkPolicy,
                "lockdown",
                None,
            )
        };
        let (_, p) = begin(
            dir.path(),
            "sgnp/lockdown",
            promote,
            Duration::ZERO,
            vec![],
            DEFAULT_SETTLE,
        )
        .unwrap();
        assert_eq!(p.files.len(), 1);
        assert!(std::fs::read_to_string(&file)
            .unwrap()
            .contains("kind: GlobalNetworkPolicy"));
        let (outcomes, waiting) = Supervisor::default().tick(dir.path());
        assert!(waiting.is_empty());
        assert_eq!(outcomes[0].action, "reverted", "{outcomes:?}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), staged);

        begin(
            dir.path(),
            "sgnp/lockdown",
            promote,
            Duration::from_secs(60),
            vec![],
            DEFAULT_SETTLE,
        )
        .unwrap();
        assert!(confirm(dir.path(), "sgnp/lockdown").unwrap());
        let (outcomes, waiting) = Supervisor::default().tick(dir.path());
        assert!(outcomes.is_empty() && waiting.is_empty());
        assert!(std::fs::read_to_string(&file)
            .unwrap()
            .contains("kind: GlobalNetworkPolicy"));
    }

    #[test]
    fn a_failing_check_reverts_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        let staged = "apiVersion: projectcalico.org/v3\nkind: StagedGlobalNetworkPolicy\nmetadata:\n  name: lockdown\nspec:\n  selector: all()\n";
        std::fs::write(&file, staged).unwrap();
        // Nothing listens on this loopback port.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (_, _) = begin(
            dir.path(),
            "sgnp/lockdown",
            || {
                promote::promote(
                    dir.path(),
                    crate::model::ir::PolicyKind::StagedGlobalNetworkPolicy,
                    "lockdown",
                    None,
                )
            },
            Duration::from_secs(3600),
            vec![Check::Tcp { addr: closed }],
            DEFAULT_SETTLE,
        )
        .unwrap();
        let (outcomes, _) = Supervisor::default().tick(dir.path());
        assert_eq!(outcomes[0].action, "reverted");
        assert!(outcomes[0].reason.contains("check failed"), "{outcomes:?}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), staged);
    }

    #[test]
    fn the_apiserver_check_is_refused_without_an_api_server_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        let staged = "apiVersion: projectcalico.org/v3\nkind: StagedGlobalNetworkPolicy\nmetadata:\n  name: lockdown\nspec:\n  selector: all()\n";
        std::fs::write(&file, staged).unwrap();
        let e = begin(
            dir.path(),
            "sgnp/lockdown",
            || unreachable!("refused before promoting"),
            Duration::from_secs(60),
            vec![Check::Apiserver],
            DEFAULT_SETTLE,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no API server"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), staged);
        assert!(!journal_path(dir.path(), "sgnp/lockdown").exists());
    }
}
