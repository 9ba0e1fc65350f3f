//! `agent status` as text: one section per concern, in the order an operator
//! reads them (is the latest state enforced? what is pinned? what is at risk?
//! how full are the tables? which endpoints? what did the kernel count?).
use std::fmt::{self, Write};

use crate::daemon::protocol::{EndpointStatus, PinStatus, Status};

/// The text `agent status` prints.
pub fn status_text(s: &Status) -> String {
    let mut o = String::new();
    write_status(&mut o, s).expect("writing to a String cannot fail");
    o
}

fn write_status(o: &mut String, s: &Status) -> fmt::Result {
    datastore(o, s)?;
    if let Some(dir) = &s.pinning.bpffs {
        writeln!(o, "pinned:      {dir}: {}", adoption(&s.pinning))?;
    }
    for w in &s.lockout_warnings {
        writeln!(o, "LOCKOUT RISK: {w}")?;
    }
    capacity(o, s)?;
    writeln!(o, "endpoints:   {}", s.endpoints.len())?;
    for e in &s.endpoints {
        writeln!(o, "  {}", endpoint_line(e))?;
    }
    kernel(o, s)?;
    diagnostics(o, s)
}

/// What was loaded, what is pending confirmation, and whether it is enforced.
fn datastore(o: &mut String, s: &Status) -> fmt::Result {
    writeln!(
        o,
        "datastore:   {} (started {}, {} reloads, last {})",
        s.datastore, s.started, s.reloads, s.last_reload
    )?;
    for p in &s.datastore_problems {
        writeln!(o, "DATASTORE:   {p}")?;
    }
    for p in &s.promotions {
        writeln!(o, "promotion:   {p}")?;
    }
    match &s.last_error {
        Some(e) => writeln!(o, "NOT APPLIED: {e} (the previous tables stay enforced)")?,
        None => writeln!(
            o,
            // `generation` is which of the two table copies is live (0 or 1),
            // not a count: the epoch is the count of installs.
            "tables:      epoch {} in copy {} of 2 (latest datastore state enforced)",
            s.epoch, s.generation
        )?,
    }
    writeln!(
        o,
        "policies:    {} enforced, {} staged, {} tiers",
        s.policies.enforced, s.policies.staged, s.policies.tiers
    )
}

fn adoption(p: &PinStatus) -> String {
    let state = match (p.adopted, p.start_flipped) {
        (false, _) => return "fresh start".to_string(),
        (true, Some(false)) => format!(
            "adopted an earlier agent's state ({} links swapped, identical tables kept: no epoch bump)",
            p.adopted_links
        ),
        (true, _) => format!(
            "adopted an earlier agent's state ({} links swapped, tables reinstalled)",
            p.adopted_links
        ),
    };
    if p.programs_reused {
        format!("{state}; its verified programs reused")
    } else {
        state
    }
}

fn capacity(o: &mut String, s: &Status) -> fmt::Result {
    let t = &s.tables;
    writeln!(
        o,
        "capacity:    peer prefixes {}/{}, peer classes {}, rule entries {} -> keys {}/{}, endpoints {}/{}",
        t.peer_prefixes, t.peer_prefixes_max, t.peer_classes, t.rule_entries, t.rule_keys, t.rule_keys_max,
        s.endpoints.len(), t.endpoints_max
    )
}

fn endpoint_line(e: &EndpointStatus) -> String {
    let state = if e.attached {
        format!("attached (ifindex {})", e.ifindex.unwrap_or(0))
    } else {
        "waiting for interface".into()
    };
    format!(
        "{:<28} {:<8} {:<16} id {:<4} {}{}{}{}",
        e.endpoint,
        e.kind,
        e.interface,
        e.id,
        state,
        if e.has_staged { ", staged" } else { "" },
        e.last_good
            .as_ref()
            .map(|g| format!(
                ", LAST GOOD tables of copy {} (for {})",
                g.generation,
                age(g.since_ns)
            ))
            .unwrap_or_default(),
        e.error
            .as_deref()
            .map(|x| format!(", error: {x}"))
            .unwrap_or_default()
    )
}

/// How long ago `unix_ns` was, in whole seconds.
fn age(unix_ns: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{}s", now.saturating_sub(unix_ns) / 1_000_000_000)
}

/// The kernel's counters, flow records and conntrack.
fn kernel(o: &mut String, s: &Status) -> fmt::Result {
    let counters: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(o, "counters:    {}", counters.join(" "))?;
    writeln!(
        o,
        "flows:       {} tracked, {} events, {} followers",
        s.flows.tracked, s.flows.events, s.flows.subscribers
    )?;
    writeln!(
        o,
        "conntrack:   {} entries of {} (last sweep), {} idle entries swept",
        s.conntrack.entries, s.conntrack.max, s.conntrack.swept
    )
}

fn diagnostics(o: &mut String, s: &Status) -> fmt::Result {
    if !s.kept_last_good.is_empty() {
        writeln!(
            o,
            "kept last good version of: {}",
            s.kept_last_good.join(", ")
        )?;
    }
    let errors = s
        .diagnostics
        .iter()
        .filter(|d| d.severity == "error")
        .count();
    writeln!(
        o,
        "diagnostics: {errors} rejected, {} warnings",
        s.diagnostics.len() - errors
    )?;
    for d in &s.diagnostics {
        writeln!(o, "  {d}")?;
    }
    Ok(())
}
