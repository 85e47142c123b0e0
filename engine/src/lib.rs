//! tandem's gateway engine, sans-IO: tunnels (handshake driving, rekey, keepalive/DPD), the
//! failover selector, the router and traffic selectors. No sockets and no clocks.
//!
//! The daemon drives an [`Engine`] with the house vocabulary:
//! `handle_tun_packet` / `handle_datagram` / `handle_timeout` take inputs (time is passed in);
//! `poll_transmit` / `poll_event` / `poll_timeout` drain outputs. Data packets are sealed and
//! opened in place in the caller's buffers ([`HEADROOM`] free bytes before a packet, [`TAILROOM`]
//! after); nothing on the data path allocates.
#![forbid(unsafe_code)]

pub mod config;
pub mod drop;
mod engine;
pub mod failover;
pub mod inner;
pub mod liveness;
pub mod router;
mod tunnel;

pub use config::{ConnectionConfig, EngineConfig, Mode, TunnelConfig};
pub use drop::{DropCounters, DropReason};
pub use engine::*;
pub use failover::SwitchReason;
pub use router::ConnectionId;
pub use tunnel::{
    HANDSHAKE_RETRY_BASE, HANDSHAKE_RETRY_MAX, IN_SLOTS, KEEPALIVES_PER_INTERVAL,
    REJECT_AFTER_TIME, RESPONSE_CHECKS_PER_SECOND,
};
