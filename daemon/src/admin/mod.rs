//! The admin plane (the local control plane, as opposed to the in-tunnel liveness messages of
//! the engine): the wire types and the CLI's client live in the `tandem-admin` crate and are
//! re-exported here; this module adds what only the daemon needs — the serving loops
//! (`server`), their connection limits ([`listeners`]) and the Prometheus text endpoint's
//! rendering ([`metrics`]).

pub mod events;
pub mod listeners;
pub mod metrics;
pub(crate) mod server;

pub use tandem_admin::*;

/// The reply to an operation the engine refused (unknown connection, no tunnel up, ...): the
/// operator's mistake, not the daemon's.
pub fn refused(e: &tandem_engine::AdminError) -> Reply {
    Reply::error(ErrorKind::User, e.to_string())
}
