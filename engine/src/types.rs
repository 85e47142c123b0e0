//! The engine's vocabulary, shared by the gateway and its tunnels: ids, states, events, the
//! actions handed to the daemon, status, admin requests and the buffer layout the caller keeps.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use crate::config::Mode;
use crate::drop::DropReason;
use crate::failover::SwitchReason;
use crate::router::ConnectionId;

/// Bytes the caller keeps free before a packet: room for the ESP header when sealing in place
/// ([`tandem_crypto::esp::HEADROOM`], 16) and for the IPv6 + ICMPv6 headers when an ICMP error is
/// written around a packet from the TUN ([`crate::inner::ICMP_HEADROOM`], 48), rounded up to a
/// cache line so that packets in the daemon's buffers start aligned. The one slot layout of the
/// data path: crypto's figures are the ESP minimum inside it.
pub const HEADROOM: usize = 64;
/// Bytes the caller keeps free after a packet: ESP pad (<= 3) + pad length + next header + ICV
/// ([`tandem_crypto::esp::TAILROOM`], 21), rounded up to 32.
pub const TAILROOM: usize = 32;
const _: () = assert!(HEADROOM >= tandem_crypto::esp::HEADROOM);
const _: () = assert!(HEADROOM >= crate::inner::ICMP_HEADROOM);
const _: () = assert!(HEADROOM % 64 == 0);
const _: () = assert!(TAILROOM >= tandem_crypto::esp::TAILROOM);
/// Size of a buffer big enough for any datagram `poll_transmit` writes: an IKEv2 message with
/// its non-ESP marker must fit in one IPv6 packet of the minimum MTU (1280 - 40 - 8 = 1232,
/// RFC 8200 §5), as IKE messages are not fragmented by tandem; the largest one tandem sends (an
/// IKE_SA_INIT with three P-384 proposals and NAT-D) is about 400 bytes.
pub const MAX_CONTROL_DATAGRAM: usize = 1232;

/// Index of a tunnel in the engine's flat table over all connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct TunnelId(pub u16);

/// docs/protocol.md tunnel states.
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
    /// The docs/protocol.md name.
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
    /// IKEv2 with a bare `local` address: port 500 of it, where IKE_SA_INIT is answered (the
    /// daemon binds a socket there too; see [`crate::Engine::handle_datagram_at`]).
    pub ike_local: Option<SocketAddr>,
    /// Priority (lower is preferred).
    pub priority: u32,
}

/// Per-tunnel counters, plain `u64`s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelCounters {
    /// Bytes of authenticated ESP datagrams received (the UDP payload: ESP header, ciphertext,
    /// ICV), data and liveness messages alike; handshake messages are not counted.
    pub rx_bytes: u64,
    /// Authenticated ESP packets received (data and liveness messages).
    pub rx_packets: u64,
    /// Bytes of ESP datagrams sent (the UDP payload), data and liveness messages alike;
    /// handshake messages are not counted.
    pub tx_bytes: u64,
    /// ESP packets sent (data and liveness messages).
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
    /// Dropped (counted in [`Engine::drop_counters`](crate::Engine::drop_counters)).
    Drop(DropReason),
}

/// What to do with a datagram received on a tunnel's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetAction {
    /// Write the decrypted inner packet `buf[packet]` into the TUN (or, with
    /// `routing = "interfaces"`, into `tunnel`'s own interface).
    Deliver {
        /// The tunnel it arrived on (a shared port's datagrams may belong to several).
        tunnel: TunnelId,
        /// The inner packet.
        packet: Range<usize>,
    },
    /// A control packet (handshake, keepalive, DPD…) was consumed; `poll_transmit` may have output.
    Consumed,
    /// Dropped (counted in [`Engine::drop_counters`](crate::Engine::drop_counters)).
    Drop(DropReason),
}

/// A datagram written by [`Engine::poll_transmit`](crate::Engine::poll_transmit) into `buf[..len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Send on this tunnel's socket.
    pub tunnel: TunnelId,
    /// To this peer endpoint.
    pub dst: SocketAddr,
    /// Datagram length.
    pub len: usize,
    /// Send from the socket bound to this address instead of the tunnel's (an IKEv2 tunnel's
    /// IKE port 500, [`TunnelInfo::ike_local`]).
    pub via: Option<SocketAddr>,
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

/// Direction of an SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Receives from the peer.
    In,
    /// Sends to the peer.
    Out,
}

impl Direction {
    /// Key-log spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
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
    /// A tunnel learned or changed the peer's endpoint from an authenticated packet: a
    /// responder-only tunnel, or an IKEv2 tunnel whose peer a NAT moved to another port.
    PeerEndpoint {
        /// The tunnel.
        tunnel: TunnelId,
        /// The new endpoint.
        addr: SocketAddr,
    },
    /// An SA was installed (only after [`Engine::set_keylog`](crate::Engine::set_keylog)`(true)`): for the debugging key log.
    SaInstalled {
        /// The tunnel.
        tunnel: TunnelId,
        /// Inbound or outbound.
        direction: Direction,
        /// Its SPI.
        spi: u32,
        /// docs/protocol.md key-log tail: 64 hex digits of key then 8 of salt. Secret: only for the key log.
        keylog: String,
    },
    /// An IKE SA was established or rekeyed (only after [`Engine::set_keylog`]`(true)`): the
    /// IKE line of the debugging key log (docs/protocol.md).
    ///
    /// [`Engine::set_keylog`]: crate::Engine::set_keylog
    IkeSaInstalled {
        /// The tunnel.
        tunnel: TunnelId,
        /// The initiator's IKE SPI.
        spi_i: u64,
        /// The responder's IKE SPI.
        spi_r: u64,
        /// `aes256gcm16 <SK_ei><salt> <SK_er><salt>` in hex. Secret: only for the key log.
        keylog: String,
    },
    /// An IKE SA attempt or an established IKE SA failed (refused proposals, authentication,
    /// no answer): the reason, readable, for the log. Never carries key material.
    IkeFailed {
        /// The tunnel.
        tunnel: TunnelId,
        /// What happened, e.g. "the peer answered AUTHENTICATION_FAILED".
        reason: String,
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

/// `tandem status --json` (docs/cli.md).
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
    /// `tandem` or `ikev2`.
    pub protocol: &'static str,
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
    /// docs/protocol.md state.
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
    /// IKEv2 tunnels: the current IKE SA's initiator SPI, 16 hex digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ike_spi_i: Option<String>,
    /// IKEv2 tunnels: the current IKE SA's responder SPI, 16 hex digits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ike_spi_r: Option<String>,
    /// IKEv2 tunnels: the IKE SA's state (`established`, `ike-auth-sent`, `none`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ike_state: Option<&'static str>,
    /// IKEv2 tunnels: the negotiated IKE proposal (`aes256gcm16-prfsha256-ecp384`), once
    /// established.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ike_proposal: Option<String>,
    /// IKEv2 tunnels: the sending Child SA's ESP proposal with its PFS group
    /// (`aes256gcm16-ecp384`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub esp_proposal: Option<String>,
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
    /// Send nothing and ignore everything received, as a dead path would; the state follows
    /// liveness (Down after the DPD timeout), so detection is measured, not assumed.
    Silent,
    /// Send closing notices, then send and receive nothing; the tunnel is admin-down at once.
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
    /// Tunnels removed (old ids; the daemon closes their sockets).
    pub removed: Vec<TunnelId>,
    /// Kept tunnels whose id changed: (old id, new id).
    pub renumbered: Vec<(TunnelId, TunnelId)>,
}
