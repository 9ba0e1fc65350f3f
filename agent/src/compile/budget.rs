//! The capacity budget: every limit the compiler enforces, checked here
//! (exceeding one is [`CompileError::Capacity`], never a partial table).
use agent_common::limits;

use super::CompileError;

/// Encoded `RULES_*` keys one endpoint may use (both directions, both tables),
/// so that one endpoint cannot starve the others.
pub const MAX_KEYS_PER_ENDPOINT: usize = 65536;

/// Source-port classes per endpoint, direction and protocol (one byte of
/// `RuleKey::source_port_class`).
pub(super) const MAX_SOURCE_PORT_CLASSES: usize = u8::MAX as usize + 1;

/// Capacity limits the compiler enforces (exceeding one is
/// [`CompileError::Capacity`]). The defaults are the kernel maps' sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Endpoints with an interface (`ENDPOINTS`).
    pub endpoints: usize,
    /// Prefixes in `PEERS_*` (also bounds the number of classes).
    pub peer_prefixes: usize,
    /// Encoded keys in `RULES_*`.
    pub rule_keys: usize,
    /// Encoded keys of one endpoint.
    pub keys_per_endpoint: usize,
    /// Encoded keys in `SPORTS_*`.
    pub source_port_keys: usize,
    /// Entries in `GROUPS_*` (classes an endpoint does not treat like its wildcard).
    pub group_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            endpoints: limits::MAX_ENDPOINTS as usize,
            peer_prefixes: limits::MAX_PEER_PREFIXES as usize,
            rule_keys: limits::MAX_RULE_ENTRIES as usize,
            keys_per_endpoint: MAX_KEYS_PER_ENDPOINT,
            source_port_keys: limits::MAX_SOURCE_PORT_ENTRIES as usize,
            group_entries: limits::MAX_GROUP_ENTRIES as usize,
        }
    }
}

/// `needed` within `max`, or the capacity error naming `endpoint` and `limit`.
pub(super) fn check(
    endpoint: impl FnOnce() -> String,
    limit: &'static str,
    needed: usize,
    max: usize,
) -> Result<(), CompileError> {
    if needed > max {
        return Err(CompileError::Capacity {
            endpoint: endpoint(),
            limit,
            needed,
            max,
        });
    }
    Ok(())
}

/// What the endpoints compiled so far use of the shared maps.
#[derive(Debug, Default)]
pub(super) struct Budget {
    pub(super) rule_keys: usize,
    pub(super) source_port_keys: usize,
    pub(super) group_entries: usize,
}

/// One endpoint's use of the maps.
pub(super) struct EndpointUse {
    pub(super) rule_keys: usize,
    pub(super) source_port_keys: usize,
    pub(super) group_entries: usize,
}

impl Budget {
    /// Adds one endpoint's use, checking every limit it touches (in the order
    /// the compiler always checked them: groups, source ports, own keys, keys).
    pub(super) fn add(
        &mut self,
        limits: &Limits,
        endpoint: &str,
        used: &EndpointUse,
    ) -> Result<(), CompileError> {
        let name = || endpoint.to_string();
        self.group_entries += used.group_entries;
        check(
            name,
            "peer-group entries (GROUPS map)",
            self.group_entries,
            limits.group_entries,
        )?;
        self.source_port_keys += used.source_port_keys;
        check(
            name,
            "source-port entries (SPORTS map)",
            self.source_port_keys,
            limits.source_port_keys,
        )?;
        check(
            name,
            "rule entries per endpoint",
            used.rule_keys,
            limits.keys_per_endpoint,
        )?;
        self.rule_keys += used.rule_keys;
        check(
            name,
            "rule entries (RULES map)",
            self.rule_keys,
            limits.rule_keys,
        )
    }
}
