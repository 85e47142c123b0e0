//! The engine: the table of tunnels, one failover selector per connection, the router.
//! (Skeleton: the public API, compiling; the tunnel logic lands over the crypto API.)

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::config::{EngineConfig, Mode};
use crate::drop::{DropCounters, DropReason};
use crate::failover::SwitchReason;
use crate::router::ConnectionId;

/// Bytes the caller keeps free before a packet: the ESP header (16) when sealing in place, and
/// the IPv6 + ICMPv6 headers (48) when an ICMP error is written around a packet from the TUN.
pub const HEADROOM: usize = 64;
/// Bytes the caller keeps free after a packet: ESP pad (<= 3) + pad length + next header + ICV (16).
pub const TAILROOM: usize = 32;
/// Size of a buffer big enough for any datagram `poll_transmit` writes.
pub const MAX_CONTROL_DATAGRAM: usize = 256;

/// Index of a tunnel in the engine's flat table over all connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct TunnelId(pub u16);

/// SPEC §6 tunnel states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TunnelState {
    /// No SA yet: handshaking.
    Connecting,
    /// Both sides hear each other.
    Up,
    /// Has (or had) an SA but liveness failed.
    Down,
    /// Silenced by the operator (drill) or shut down.
    AdminDown,
}

impl TunnelState {
    /// The SPEC §6 name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelState::Connecting => "connecting",
            TunnelState::Up => "up",
            TunnelState::Down => "down",
            TunnelState::AdminDown => "admin-down",
        }
    }
}

/// What the daemon needs to know about a tunnel (one UDP socket per tunnel).
#[derive(Debug, Clone)]
pub struct TunnelInfo {
    /// Tunnel name.
    pub name: String,
    /// Connection name.
    pub connection: String,
    /// Connection index.
    pub connection_id: ConnectionId,
    /// Local bind address, if configured.
    pub local: Option<SocketAddr>,
    /// Configured remote (None = responder-only).
    pub remote: Option<SocketAddr>,
    /// Priority (lower is preferred).
    pub priority: u32,
}

/// Per-tunnel counters, plain `u64`s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelCounters {
    /// Authenticated inner bytes received (data + control plaintext).
    pub rx_bytes: u64,
    /// Authenticated packets received.
    pub rx_packets: u64,
    /// Bytes sent (inner plaintext of data and control packets).
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Times traffic moved away from this tunnel while it was active.
    pub failovers: u64,
    /// Completed handshakes.
    pub handshakes: u64,
    /// Wall-clock time of the last completed handshake (Unix seconds).
    pub last_handshake_unix: Option<u64>,
    /// Latest DPD echo round-trip time.
    pub rtt: Option<Duration>,
}

/// What to do with a packet read from the TUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunAction {
    /// Send `buf[datagram]` on `tunnel`'s socket to `dst`.
    Send {
        /// The tunnel.
        tunnel: TunnelId,
        /// Peer endpoint.
        dst: SocketAddr,
        /// The sealed ESP datagram in the caller's buffer.
        datagram: Range<usize>,
    },
    /// An ICMP error was written into the buffer: write `buf[packet]` back into the TUN.
    Reply {
        /// The ICMP packet.
        packet: Range<usize>,
    },
    /// Dropped (counted in [`Engine::drop_counters`]).
    Drop(DropReason),
}

/// What to do with a datagram received on a tunnel's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetAction {
    /// Write the decrypted inner packet `buf[packet]` into the TUN.
    Deliver {
        /// The inner packet.
        packet: Range<usize>,
    },
    /// A control packet (handshake, keepalive, DPD…) was consumed; `poll_transmit` may have output.
    Consumed,
    /// Dropped (counted in [`Engine::drop_counters`]).
    Drop(DropReason),
}

/// A datagram written by [`Engine::poll_transmit`] into `buf[..len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Send on this tunnel's socket.
    pub tunnel: TunnelId,
    /// To this peer endpoint.
    pub dst: SocketAddr,
    /// Datagram length.
    pub len: usize,
}

/// Why a tunnel changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateCause {
    /// Both sides hear each other.
    Liveness,
    /// No authenticated packet within `dpd_timeout`.
    DpdTimeout,
    /// We hear the peer but its keepalive says it does not hear us (one-way path).
    PeerDoesNotHearUs,
    /// The peer sent a closing notice.
    PeerClosing,
    /// Silenced or shut down locally.
    Admin,
    /// Restored by the operator.
    AdminRestore,
}

/// For logs, metrics and notify.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A tunnel changed state.
    TunnelState {
        /// Its connection.
        connection: ConnectionId,
        /// The tunnel.
        tunnel: TunnelId,
        /// Previous state.
        from: TunnelState,
        /// New state.
        to: TunnelState,
        /// Why.
        cause: StateCause,
    },
    /// The active tunnel of a connection changed.
    ActiveChanged {
        /// The connection.
        connection: ConnectionId,
        /// Previous active tunnel.
        from: Option<TunnelId>,
        /// New active tunnel.
        to: Option<TunnelId>,
        /// Why.
        reason: SwitchReason,
    },
    /// A handshake completed and a new SA pair is installed.
    HandshakeCompleted {
        /// The tunnel.
        tunnel: TunnelId,
        /// We initiated it.
        initiator: bool,
        /// It replaced a previous SA (rekey).
        rekey: bool,
    },
    /// A responder-only tunnel learned (or changed) the peer endpoint from an authenticated packet.
    PeerEndpoint {
        /// The tunnel.
        tunnel: TunnelId,
        /// The new endpoint.
        addr: SocketAddr,
    },
    /// A drill probe came back.
    ProbeReply {
        /// The connection.
        connection: ConnectionId,
        /// The tunnel it came back on.
        tunnel: TunnelId,
        /// The id given to `send_probe`.
        id: u64,
        /// Round trip.
        rtt: Duration,
    },
}

/// `tandem status --json` (SPEC §7).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Every connection.
    pub connections: Vec<ConnectionStatus>,
}

/// One connection in [`Status`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionStatus {
    /// Name.
    pub name: String,
    /// Mode.
    pub mode: Mode,
    /// Active tunnel's name.
    pub active_tunnel: Option<String>,
    /// Whether an operator pinned the active tunnel.
    pub pinned: bool,
    /// Its tunnels.
    pub tunnels: Vec<TunnelStatus>,
}

/// One tunnel in [`Status`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct TunnelStatus {
    /// Name.
    pub name: String,
    /// SPEC §6 state.
    pub state: TunnelState,
    /// Local bind address.
    pub local: Option<SocketAddr>,
    /// Current peer endpoint.
    pub remote: Option<SocketAddr>,
    /// Current inbound SPI.
    pub spi_in: Option<u32>,
    /// Current outbound SPI.
    pub spi_out: Option<u32>,
    /// Last completed handshake, Unix seconds.
    pub last_handshake_unix: Option<u64>,
    /// Counters.
    pub rx_bytes: u64,
    /// Counters.
    pub tx_bytes: u64,
    /// Counters.
    pub rx_packets: u64,
    /// Counters.
    pub tx_packets: u64,
    /// Latest DPD RTT in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Times traffic moved away from this tunnel.
    pub failovers: u64,
}

/// Target of a planned switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverTarget {
    /// Move to the best other Up tunnel and pin it.
    Best,
    /// Pin this tunnel.
    To(String),
    /// Lift the pin.
    Auto,
}

/// Drill / admin silence of one tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// Normal operation.
    Off,
    /// Send nothing and ignore everything received, as a dead path would.
    Silent,
    /// Send closing notices first, then as `Silent`.
    Graceful,
}

/// Errors of the admin operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No connection of that name.
    #[error("no connection named {0:?}")]
    UnknownConnection(String),
    /// No tunnel of that name in the connection.
    #[error("no tunnel named {0:?} in that connection")]
    UnknownTunnel(String),
    /// The requested tunnel is not Up.
    #[error("tunnel {0:?} is not up")]
    NotUp(String),
    /// No other tunnel is Up to move to.
    #[error("no other tunnel is up")]
    NoOtherUp,
    /// The connection has no active tunnel.
    #[error("connection has no active tunnel")]
    NoActiveTunnel,
    /// The new configuration changes something that needs a restart.
    #[error("reload refused: {0}")]
    Reload(String),
}

/// What `reconfigure` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Tunnels kept with their SAs (same id before and after).
    pub kept: Vec<TunnelId>,
    /// Tunnels added or changed (new state; the daemon (re)binds their sockets).
    pub added: Vec<TunnelId>,
    /// Tunnels removed (the daemon closes their sockets; ids may be reused later).
    pub removed: Vec<TunnelId>,
}

/// The gateway engine.
#[derive(Debug)]
pub struct Engine {
    infos: Vec<TunnelInfo>,
    counters: Vec<TunnelCounters>,
    drops: DropCounters,
    events: VecDeque<Event>,
    epoch: Instant,
    unix_epoch: Duration,
}

impl Engine {
    /// Builds the engine at `now`; `unix_now` is the wall clock (since the Unix epoch) at `now`.
    #[must_use]
    pub fn new(cfg: EngineConfig, rng_seed: [u8; 32], now: Instant, unix_now: Duration) -> Self {
        let _ = rng_seed;
        let mut infos = Vec::new();
        for (ci, c) in cfg.connections.iter().enumerate() {
            for t in &c.tunnels {
                infos.push(TunnelInfo {
                    name: t.name.clone(),
                    connection: c.name.clone(),
                    connection_id: ConnectionId(ci as u16),
                    local: t.local,
                    remote: t.remote,
                    priority: t.priority,
                });
            }
        }
        Engine {
            counters: vec![TunnelCounters::default(); infos.len()],
            infos,
            drops: DropCounters::default(),
            events: VecDeque::with_capacity(64),
            epoch: now,
            unix_epoch: unix_now,
        }
    }

    /// Every tunnel with its static facts.
    pub fn tunnels(&self) -> impl Iterator<Item = (TunnelId, &TunnelInfo)> {
        self.infos
            .iter()
            .enumerate()
            .map(|(i, t)| (TunnelId(i as u16), t))
    }

    /// Counters of one tunnel.
    #[must_use]
    pub fn tunnel_counters(&self, tunnel: TunnelId) -> Option<&TunnelCounters> {
        self.counters.get(usize::from(tunnel.0))
    }

    /// A packet read from the TUN sits at `buf[packet]`; `HEADROOM` bytes before and
    /// `TAILROOM` after are free.
    pub fn handle_tun_packet(
        &mut self,
        buf: &mut [u8],
        packet: Range<usize>,
        now: Instant,
    ) -> TunAction {
        let _ = (buf, packet, now);
        self.drops.add(DropReason::NoTunnel);
        TunAction::Drop(DropReason::NoTunnel)
    }

    /// A datagram received on `tunnel`'s socket from `from` sits at `buf[datagram]`.
    pub fn handle_datagram(
        &mut self,
        tunnel: TunnelId,
        from: SocketAddr,
        buf: &mut [u8],
        datagram: Range<usize>,
        now: Instant,
    ) -> NetAction {
        let _ = (tunnel, from, buf, datagram, now);
        self.drops.add(DropReason::Malformed);
        NetAction::Drop(DropReason::Malformed)
    }

    /// Writes the next control datagram into `buf` (at least [`MAX_CONTROL_DATAGRAM`] bytes).
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let _ = buf;
        None
    }

    /// Next event for logs/metrics/notify.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant at which `handle_timeout` must be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Acts on every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
    }

    /// SPEC §7 status.
    #[must_use]
    pub fn status(&self, now: Instant) -> Status {
        let _ = now;
        Status {
            connections: Vec::new(),
        }
    }

    /// Planned switch (`tandem failover`).
    pub fn failover(
        &mut self,
        connection: &str,
        target: FailoverTarget,
        now: Instant,
    ) -> Result<(), AdminError> {
        let _ = (target, now);
        Err(AdminError::UnknownConnection(connection.to_owned()))
    }

    /// Drill silence of one tunnel.
    pub fn silence(
        &mut self,
        connection: &str,
        tunnel: &str,
        mode: Silence,
        now: Instant,
    ) -> Result<(), AdminError> {
        let _ = (tunnel, mode, now);
        Err(AdminError::UnknownConnection(connection.to_owned()))
    }

    /// Applies a new configuration; tunnels whose settings did not change keep their SAs.
    pub fn reconfigure(
        &mut self,
        cfg: EngineConfig,
        now: Instant,
    ) -> Result<ReloadSummary, AdminError> {
        let _ = (cfg, now);
        Ok(ReloadSummary::default())
    }

    /// Queues closing notices on every tunnel (shutdown); drain with `poll_transmit`.
    pub fn close(&mut self, now: Instant) {
        let _ = now;
    }

    /// Drops per reason.
    #[must_use]
    pub fn drop_counters(&self) -> &DropCounters {
        &self.drops
    }

    /// Drill: a DPD echo over the connection's active tunnel; the reply arrives as
    /// [`Event::ProbeReply`].
    pub fn send_probe(
        &mut self,
        connection: &str,
        id: u64,
        now: Instant,
    ) -> Result<(), AdminError> {
        let _ = (id, now);
        Err(AdminError::UnknownConnection(connection.to_owned()))
    }

    /// Wall-clock time at `now`.
    fn unix_at(&self, now: Instant) -> Duration {
        self.unix_epoch + now.saturating_duration_since(self.epoch)
    }

    /// Wall-clock seconds at `now` (for status).
    #[must_use]
    pub fn unix_secs(&self, now: Instant) -> u64 {
        self.unix_at(now).as_secs()
    }
}
