//! tandem's gateway engine, sans-IO: tunnels (handshake driving, rekey, keepalive/DPD), the
//! failover selector, the router and traffic selectors. No sockets and no clocks.
//!
//! The daemon drives an [`Engine`] with the house vocabulary:
//! `handle_tun_packet` / `handle_datagram` / `handle_timeout` take inputs (time is passed in);
//! `poll_transmit` / `poll_event` / `poll_timeout` drain outputs. Data packets are sealed and
//! opened in place in the caller's buffers ([`HEADROOM`] free bytes before a packet, [`TAILROOM`]
//! after); nothing on the data path allocates.
#![forbid(unsafe_code)]

mod any_tunnel;
pub mod checksum;
pub mod config;
pub mod drop;
pub mod failover;
mod gateway;
mod ike_probe;
mod ike_tunnel;
pub mod inner;
pub mod liveness;
mod port;
mod ring;
pub mod router;
mod schedule;
mod tunnel;
mod tunnel_core;
mod types;

pub use config::{
    ConnectionConfig, EngineConfig, IkeProbe, IkeSettings, IkeTunnelConfig, Mode, Protocol,
    Routing, TunnelConfig,
};
pub use drop::{DropCounters, DropReason};
pub use failover::SwitchReason;
pub use gateway::{Engine, ICMP_ERRORS_PER_SECOND};
pub use router::ConnectionId;
pub use tunnel::{
    HANDSHAKE_RETRY_BASE, HANDSHAKE_RETRY_MAX, IN_SLOTS, KEEPALIVE_JITTER_PCT, KEEPALIVE_SLACK_PCT,
    REJECT_AFTER_TIME, RESPONSE_CHECKS_PER_SECOND, SPARSE_KEEPALIVES_FROM, keepalives_per_interval,
};
pub use types::{
    AdminError, ConnectionStatus, Direction, Event, FailoverTarget, HEADROOM, MAX_CONTROL_DATAGRAM,
    NetAction, ReloadSummary, Silence, StateCause, Status, TAILROOM, Transmit, TunAction,
    TunnelCounters, TunnelId, TunnelInfo, TunnelState, TunnelStatus,
};
