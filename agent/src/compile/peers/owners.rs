//! The selector bits and named ports an address's owners (endpoints, network
//! sets) give its peer-class signature.
use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};

use super::{or_bits, set_bit, Atoms, Signature};
use crate::eval::IpIndex;
use crate::model::ir::{Labels, Model};

/// From this many rule selectors on, [`Owners`] evaluates them once per
/// distinct label set rather than per endpoint. Measured
/// (`tests/benches/selector_rows.rs`, 10,000 endpoints with a Calico
/// endpoint's seven labels): one selector evaluation ~40 ns, one lookup or
/// insert of a label set in the pre-sized map ~200 ns. With 20 pods per label
/// set the map is even at 4 selectors and 0.63x at 8; with every set distinct
/// it is never cheaper, 1.41x at 8 and 1.07x at 64 (~200 ns per endpoint
/// lost). 8 is the break-even at about three pods per label set.
const DEDUPLICATED_SELECTORS: usize = 8;

/// The selector bits endpoints and network sets give the addresses they own.
pub(super) struct Owners<'a> {
    /// Words of a signature's bits.
    pub(super) words: usize,
    /// Rows of `words` words: the selectors matching one label set.
    rows: Vec<u64>,
    /// Per endpoint, then per network set: its row.
    endpoint_row: Vec<usize>,
    set_row: Vec<usize>,
    /// The endpoints owning each address.
    ips: &'a IpIndex,
}

impl<'a> Owners<'a> {
    pub(super) fn new(model: &Model, ips: &'a IpIndex, atoms: &Atoms) -> Self {
        let by_label_set = atoms.selectors.len() >= DEDUPLICATED_SELECTORS;
        Self::evaluated(model, ips, atoms, by_label_set)
    }

    /// With `by_label_set`, each selector is evaluated once per distinct
    /// label set (pods of one deployment share theirs); otherwise once per
    /// endpoint, since hashing a label set costs more than a few evaluations.
    fn evaluated<'m>(
        model: &'m Model,
        ips: &'a IpIndex,
        atoms: &Atoms,
        by_label_set: bool,
    ) -> Self {
        let words = atoms.bits().div_ceil(64);
        let mut rows = Vec::new();
        let mut evaluate = |labels: &Labels| -> usize {
            let at = rows.len();
            rows.resize(at + words, 0);
            for (k, s) in atoms.selectors.iter().enumerate() {
                if s.evaluate(labels) {
                    set_bit(&mut rows[at..], atoms.nets.len() + k);
                }
            }
            at
        };
        // Pre-sized: growing the map while inserting distinct sets cost more
        // than the lookups themselves (~550 against ~200 ns per endpoint).
        let owners = model.endpoints.len() + model.network_sets.len();
        let mut row_of: HashMap<&'m Labels, usize> =
            HashMap::with_capacity(if by_label_set { owners } else { 0 });
        let mut row = |labels: &'m Labels| -> usize {
            if !by_label_set {
                return evaluate(labels);
            }
            *row_of.entry(labels).or_insert_with(|| evaluate(labels))
        };
        let endpoint_row = model.endpoints.iter().map(|e| row(&e.labels)).collect();
        let set_row = model.network_sets.iter().map(|s| row(&s.labels)).collect();
        Owners {
            words,
            rows,
            endpoint_row,
            set_row,
            ips,
        }
    }

    fn endpoint(&self, e: usize) -> &[u64] {
        &self.rows[self.endpoint_row[e]..][..self.words]
    }

    pub(super) fn set(&self, s: usize) -> &[u64] {
        &self.rows[self.set_row[s]..][..self.words]
    }

    /// The signature (into `out`) of address `r` whose enclosing prefixes
    /// give it `inherited` (nets and network-set selectors); its owning
    /// endpoints add their selectors and named ports.
    pub(super) fn signature<'m>(
        &self,
        model: &'m Model,
        r: IpAddr,
        inherited: &[u64],
        out: &mut Scratch<'m>,
    ) {
        out.bits.clear();
        out.bits.extend_from_slice(inherited);
        out.named_ports.clear();
        for &e in self.ips.owners(r) {
            or_bits(&mut out.bits, self.endpoint(e));
            let ports = model.endpoints[e].named_ports.iter();
            out.named_ports
                .extend(ports.map(|np| (np.name.as_str(), np.protocol.number(), np.port)));
        }
        out.named_ports.sort_unstable();
        out.named_ports.dedup();
    }
}

/// A signature under construction, borrowed from the model: made owned only
/// for a new class.
#[derive(Default)]
pub(super) struct Scratch<'m> {
    pub(super) bits: Vec<u64>,
    pub(super) named_ports: Vec<(&'m str, u8, u16)>,
}

impl Scratch<'_> {
    pub(super) fn hash(&self, state: &foldhash::fast::RandomState, v6: bool) -> u64 {
        use std::hash::BuildHasher;
        state.hash_one((v6, &self.bits, &self.named_ports))
    }

    pub(super) fn is(&self, v6: bool, sig: &Signature) -> bool {
        sig.v6 == v6
            && sig.bits == self.bits
            && sig.named_ports.len() == self.named_ports.len()
            && sig
                .named_ports
                .iter()
                .zip(&self.named_ports)
                .all(|((n, pr, po), (m, qr, qo))| n == m && pr == qr && po == qo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::peers::collect::collect;
    use crate::compile::testgen::scale_model;
    use crate::eval::Evaluator;

    /// Selector bits evaluated once per label set are those evaluated per
    /// endpoint and network set, for every owner (pods share label sets in
    /// this model; one is relabelled so that sets differ too).
    #[test]
    fn selector_rows_by_label_set_equal_rows_per_owner() {
        let mut model = scale_model(60, 20, 3);
        std::sync::Arc::make_mut(&mut model.endpoints[7])
            .labels
            .insert("app".into(), "other".into());
        let eval = Evaluator::new(&model);
        let atoms = collect(&model, &eval).unwrap().atoms;
        assert!(atoms.selectors.len() > 2, "{}", atoms.selectors.len());
        let each = Owners::evaluated(&model, eval.ip_index(), &atoms, false);
        let shared = Owners::evaluated(&model, eval.ip_index(), &atoms, true);
        assert!(
            shared.rows.len() < each.rows.len(),
            "label sets were shared"
        );
        for e in 0..model.endpoints.len() {
            assert_eq!(shared.endpoint(e), each.endpoint(e), "endpoint {e}");
        }
        for s in 0..model.network_sets.len() {
            assert_eq!(shared.set(s), each.set(s), "network set {s}");
        }
        let bits = |o: &Owners| {
            (0..model.endpoints.len())
                .map(|e| o.endpoint(e).to_vec())
                .collect::<Vec<_>>()
        };
        assert!(
            bits(&each).windows(2).any(|w| w[0] != w[1]),
            "owners differ"
        );
    }
}
