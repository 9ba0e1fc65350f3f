//! Policy resources: typed YAML (projectcalico.org/v3, networking.k8s.io/v1, v1),
//! validation with Calico's rules, and conversion to the normalised [`ir::Model`].
pub mod ir;
