//! Test support, built only for the crate's own tests and with the `testkit`
//! feature (the test crates and benches): never part of the agent.
//!
//! - [`ir`]: builders of [`crate::model::ir`] values (endpoints, policies,
//!   rules, tiers, models) shared by the evaluator's, the compiler's and the
//!   command line's tests, so that a scenario reads as what differs from the
//!   usual pod or policy.
//!
//! Random models, the userspace model of the kernel's lookups and the
//! threat-feed-sized network set live beside the compiler (`compile::testgen`,
//! `compile::feed`), whose private helpers they use.
pub mod ir;
