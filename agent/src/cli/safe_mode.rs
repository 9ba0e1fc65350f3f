//! `agent safe-mode on|off --datastore DIR`: the allow-everything net as a
//! guarded command rather than a file to copy.
//!
//! `on` writes the net (a GlobalNetworkPolicy allowing everything, at a high
//! order so every ordered policy decides first) and warns about each policy
//! without an order, which Calico sorts after the net: masked while it is on.
//! `off` removes it, but first asks the lockout check what policy would deny
//! on failsafe and management ports of host endpoints once the net is gone,
//! and refuses (naming the policy and rule) unless `--force`.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::model::ir::{FailsafePort, PolicyId, PolicyKind};
use crate::model::{self, Loaded};

/// The net's name, as in `safe-mode/` (sorts last among files too).
pub const NET_NAME: &str = "zzz-final-allow-everything";
/// The order of the net in `safe-mode/`.
pub const DEFAULT_ORDER: f64 = 100_000.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, clap::Args)]
pub struct SafeModeArgs {
    pub switch: Switch,
    /// Directory of YAML files the agent reads.
    #[arg(long)]
    pub datastore: PathBuf,
    /// The net's order: every policy with a lower order decides before it.
    #[arg(long, default_value_t = DEFAULT_ORDER)]
    pub order: f64,
    /// `off` even when policy would then deny failsafe or management traffic.
    #[arg(long)]
    pub force: bool,
    /// The agent's config file (failsafe ports), as given to `agent run --config`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The agent's management port(s) (e.g. its --metrics port), checked inbound.
    #[arg(long = "management-port")]
    pub management_ports: Vec<u16>,
}

fn net_id() -> PolicyId {
    PolicyId {
        kind: PolicyKind::GlobalNetworkPolicy,
        namespace: None,
        name: NET_NAME.into(),
    }
}

fn net_document(order: f64) -> String {
    format!(
        "# Safe mode (`agent safe-mode on`): allows everything after every ordered policy.\n\
         # Remove it LAST, with `agent safe-mode off` (which checks for lockouts first).\n\
         # A policy WITHOUT an order sorts after it (Calico: unset order = infinity).\n\
         apiVersion: projectcalico.org/v3\n\
         kind: GlobalNetworkPolicy\n\
         metadata:\n  name: {NET_NAME}\n\
         spec:\n  order: {order}\n  types: [Ingress, Egress]\n\
         \x20 ingress:\n    - action: Allow\n  egress:\n    - action: Allow\n"
    )
}

pub fn run(args: &SafeModeArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.datastore.is_dir(),
        "datastore {} is not a directory",
        args.datastore.display()
    );
    anyhow::ensure!(
        args.order.is_finite(),
        "--order {} is not a number",
        args.order
    );
    let mut loaded = model::load_paths(&[&args.datastore]);
    loaded.model.failsafes = super::load_failsafes(args.config.as_deref())?;
    match args.switch {
        Switch::On => on(args, &loaded),
        Switch::Off => off(args, loaded),
    }
}

fn on(args: &SafeModeArgs, before: &Loaded) -> anyhow::Result<ExitCode> {
    if let Some(source) = before.policy_sources.get(&net_id()) {
        println!("safe mode is already on ({})", source.file.display());
        return Ok(ExitCode::SUCCESS);
    }
    let path = args.datastore.join(format!("{NET_NAME}.yaml"));
    write_new(&path, &net_document(args.order))?;
    println!(
        "safe mode on: {} allows everything at order {}",
        path.display(),
        args.order
    );
    let after = model::load_paths(&[&args.datastore]);
    let masked: Vec<_> = model::lint(&after)
        .into_iter()
        .filter(|d| d.message.contains(NET_NAME))
        .collect();
    for d in &masked {
        println!("{d}");
    }
    if !masked.is_empty() {
        println!(
            "{} policies have no order: the net decides before them while safe mode is on",
            masked.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn off(args: &SafeModeArgs, mut loaded: Loaded) -> anyhow::Result<ExitCode> {
    let Some(source) = loaded.policy_sources.get(&net_id()).cloned() else {
        println!("safe mode is already off (no {NET_NAME} policy)");
        return Ok(ExitCode::SUCCESS);
    };
    loaded.model.policies.retain(|p| p.id != net_id());
    let management: Vec<FailsafePort> = args
        .management_ports
        .iter()
        .map(|&port| FailsafePort {
            protocol: crate::model::ir::Protocol::TCP,
            port,
            net: None,
        })
        .collect();
    let lockouts = crate::lockout::check(&loaded.model, &management);
    for w in &lockouts {
        println!("lockout: {w}");
    }
    if !lockouts.is_empty() && !args.force {
        eprintln!(
            "refusing to turn safe mode off: without the net, policy would deny the {} \
             failsafe or management flows above; fix those policies (or the failsafe list), \
             or pass --force",
            lockouts.len()
        );
        return Ok(ExitCode::from(2));
    }
    remove_net(&source.file)?;
    println!("safe mode off: removed {}", source.file.display());
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to a new file (never over an existing one).
fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Removes the net's file when the net is all it holds; a file that holds
/// other documents too is left for the operator to edit.
fn remove_net(file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let documents = model::yaml::split_documents(&text)
        .iter()
        .filter(|c| matches!(model::yaml::parse_chunk(c), Ok(Some(_))))
        .count();
    let only_net = documents == 1;
    anyhow::ensure!(
        only_net,
        "{} holds other documents besides {NET_NAME}: remove that document by hand",
        file.display()
    );
    std::fs::remove_file(file).map_err(|e| anyhow::anyhow!("removing {}: {e}", file.display()))
}
