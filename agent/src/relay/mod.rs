//! The flow relay (`agent relay`): one view of every node's flow records.
//!
//! Agents push (see proto/agent/flows/v1/flows.proto for why push, not pull)
//! their records over gRPC with mTLS; the relay keeps a bounded history per
//! node and answers `agent flows --relay` and `agent staged report --relay`
//! with the same filters and outputs as a node's socket, over the merged
//! records of every node.
//!
//! Files, in the order records flow through them:
//! - [`push`]: the agent's side: an outbox of its records, sent in sequenced
//!   batches, re-sent from what the relay last stored after a reconnect;
//! - [`convert`]: [`crate::flows`] types to and from the wire (`proto`);
//! - [`store`]: [`RelayStore`], the per-node bounded history and its acks;
//! - [`query`]: [`RelayView`], filtered flows and the staged report over the
//!   store, judged with the datastore's model (for the console and gRPC);
//! - [`server`]: the gRPC services and `agent relay`'s main loop;
//! - [`console`]: the web console over the same view (`agent relay --console`);
//! - [`client`]: the query client `agent flows --relay` uses;
//! - [`tls`]: mTLS settings from a certificate directory; [`certs`]: creating
//!   that directory (`agent relay certs`).
pub mod certs;
pub mod client;
pub mod console;
pub mod convert;
pub mod push;
pub mod query;
pub mod server;
pub mod store;
pub mod tls;

pub use query::RelayView;
pub use store::RelayStore;

/// The generated messages and services of `agent.flows.v1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("agent.flows.v1");
}
