//! The engine's configuration: plain data the daemon builds from `tandem_config::Config`.
//!
//! Secrets (the private key, PSKs) are `Zeroizing` and never printed: `Debug` shows only
//! whether they are set.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tandem_ike::{EspProposal, Identity, IkeProposal};
use zeroize::Zeroizing;

/// How a connection spreads traffic over its Up tunnels (docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One active tunnel: the Up tunnel with the lowest priority number.
    ActiveStandby,
    /// Flows hashed over all Up tunnels (rendezvous hashing).
    ActiveActive,
}

impl Mode {
    /// The docs/configuration.md spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ActiveStandby => "active-standby",
            Mode::ActiveActive => "active-active",
        }
    }
}

/// Who picks the tunnel for a packet from the TUN (docs/configuration.md, `routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// One shared TUN: the router sends a packet to the connection whose `remote_subnets` hold
    /// its destination, and the failover selector picks the tunnel.
    #[default]
    Static,
    /// Every tunnel has its own interface and the kernel's FIB picks it: the connection is not
    /// in the router, and the daemon hands each packet over with the tunnel it arrived on
    /// ([`crate::Engine::handle_tun_packet_on`]).
    Interfaces,
}

impl Routing {
    /// The docs/configuration.md spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Static => "static",
            Routing::Interfaces => "interfaces",
        }
    }
}

/// The whole engine configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Our static X25519 private key.
    pub private_key: Zeroizing<[u8; 32]>,
    /// Inner MTU: the largest inner packet carried (bigger packets get ICMP too-big).
    pub mtu: u16,
    /// The connections, in config order.
    pub connections: Vec<ConnectionConfig>,
}

/// One `[[connection]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Unique connection name.
    pub name: String,
    /// What may come from us (checked on packets from the TUN).
    pub local_subnets: Vec<IpNet>,
    /// What is routed into this connection, and what may arrive from it.
    pub remote_subnets: Vec<IpNet>,
    /// Active-standby or active-active.
    pub mode: Mode,
    /// Shared TUN and router, or one interface per tunnel.
    pub routing: Routing,
    /// Stable time before returning to a better tunnel; `None` = never.
    pub failback: Option<Duration>,
    /// Keepalive interval.
    pub dpd_interval: Duration,
    /// No authenticated packet for this long => Down.
    pub dpd_timeout: Duration,
    /// Clamp the MSS of TCP SYNs crossing the tunnel.
    pub mss_clamp: bool,
    /// Time-based rekey.
    pub rekey_after: Duration,
    /// The handshake protocol of every tunnel of the connection.
    pub protocol: Protocol,
    /// The tunnels, in config order.
    pub tunnels: Vec<TunnelConfig>,
}

/// What a connection's tunnels speak (docs/configuration.md, `protocol`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// tandem's own Noise handshake and in-tunnel liveness (docs/protocol.md).
    Tandem,
    /// Standard IKEv2 with ESP, for standard IPsec peers (docs/protocol.md, "IKEv2").
    Ikev2(Box<IkeSettings>),
}

impl Protocol {
    /// The docs/configuration.md spelling.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tandem => "tandem",
            Protocol::Ikev2(_) => "ikev2",
        }
    }
}

/// `[connection.ike]`: how an IKEv2 connection negotiates (docs/configuration.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeSettings {
    /// IKE SA proposals, most preferred first (never empty).
    pub proposals: Vec<IkeProposal>,
    /// Child SA proposals with their PFS group, most preferred first (never empty).
    pub esp_proposals: Vec<EspProposal>,
    /// The IKE SA is rekeyed before this age.
    pub ike_lifetime: Duration,
    /// A Child SA is rekeyed before this age.
    pub child_lifetime: Duration,
    /// Inbound anti-replay window, packets (crypto's `WindowSize` range).
    pub replay_window: u64,
    /// Whether this end starts the IKE SA (`false`: wait for the peer).
    pub initiate: bool,
}

/// The IKEv2 part of a `[[connection.tunnel]]`: its PSK and the identities both ends prove.
#[derive(Clone, PartialEq, Eq)]
pub struct IkeTunnelConfig {
    /// The tunnel's pre-shared key as the operator gave it (AWS: 8..64 ASCII characters).
    pub psk: Zeroizing<Vec<u8>>,
    /// Our identity (default: our address).
    pub local_id: Identity,
    /// The identity the peer must prove (default: its address).
    pub remote_id: Identity,
    /// Where a peer's IKE_SA_INIT is also answered: port 500 of `local`'s address when `local`
    /// was given as a bare address (RFC 7296 §2.23: IKE starts on 500, then moves to the NAT-T
    /// port with the non-ESP marker); `None` when `local` named a port (that port only).
    pub local_ike: Option<SocketAddr>,
    /// Where our IKE_SA_INIT goes when we initiate: the peer's port 500 when `remote` was a bare
    /// address and we have a `local_ike` to send it from; else the exchange starts on `remote`.
    pub remote_ike: Option<SocketAddr>,
    /// Where drill probes go (`probe_target`, `probe_source`; default from `inside`): `None`
    /// when the tunnel has neither, and then a drill measures detection only.
    pub probe: Option<IkeProbe>,
}

/// The addresses of an IKEv2 tunnel's drill probes: ICMP echo requests sealed into its Child
/// SA (docs/protocol.md, "Drill probes on IKEv2 tunnels"). Both of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeProbe {
    /// Inside `local_subnets`: the reply comes back through the Child SA to it.
    pub source: IpAddr,
    /// Inside `remote_subnets`, and answers pings (the peer's inside address by default).
    pub target: IpAddr,
}

impl fmt::Debug for IkeTunnelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IkeTunnelConfig")
            .field("psk", &"<redacted>")
            .field("local_id", &self.local_id)
            .field("remote_id", &self.remote_id)
            .field("local_ike", &self.local_ike)
            .field("remote_ike", &self.remote_ike)
            .field("probe", &self.probe)
            .finish()
    }
}

/// One `[[connection.tunnel]]`.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Tunnel name, unique within its connection.
    pub name: String,
    /// Local bind address (the daemon binds it; the engine only reports it).
    pub local: Option<SocketAddr>,
    /// Peer endpoint; `None` = responder-only, learned from authenticated packets.
    pub remote: Option<SocketAddr>,
    /// The peer's static public key (tandem protocol; unused by an IKEv2 tunnel).
    pub peer_public_key: [u8; 32],
    /// This tunnel's pre-shared key (tandem protocol; unused by an IKEv2 tunnel).
    pub psk: Zeroizing<[u8; 32]>,
    /// The IKEv2 PSK and identities: `Some` exactly when the connection's protocol is IKEv2.
    pub ike: Option<IkeTunnelConfig>,
    /// Lower is preferred.
    pub priority: u32,
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("private_key", &"<redacted>")
            .field("mtu", &self.mtu)
            .field("connections", &self.connections)
            .finish()
    }
}

impl fmt::Debug for TunnelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelConfig")
            .field("name", &self.name)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("peer_public_key", &"<public>")
            .field("psk", &"<redacted>")
            .field("priority", &self.priority)
            .field("ike", &self.ike)
            .finish()
    }
}

/// Default keepalive interval (docs/protocol.md, "Timers"); the config's default too.
pub const DEFAULT_DPD_INTERVAL: Duration = Duration::from_millis(250);
/// Default liveness timeout.
pub const DEFAULT_DPD_TIMEOUT: Duration = Duration::from_secs(1);
/// Default rekey age of an SA.
pub const DEFAULT_REKEY_AFTER: Duration = Duration::from_secs(120);
/// Default failback hold-down.
pub const DEFAULT_FAILBACK: Duration = Duration::from_secs(10);

impl ConnectionConfig {
    /// A connection with the default timers and no tunnels (tests and tools fill the rest).
    #[must_use]
    pub fn with_defaults(name: &str) -> Self {
        ConnectionConfig {
            name: name.to_owned(),
            local_subnets: Vec::new(),
            remote_subnets: Vec::new(),
            mode: Mode::ActiveStandby,
            routing: Routing::Static,
            failback: Some(DEFAULT_FAILBACK),
            dpd_interval: DEFAULT_DPD_INTERVAL,
            dpd_timeout: DEFAULT_DPD_TIMEOUT,
            mss_clamp: true,
            rekey_after: DEFAULT_REKEY_AFTER,
            protocol: Protocol::Tandem,
            tunnels: Vec::new(),
        }
    }
}

/// Default `ike_lifetime` (docs/configuration.md): AWS's longest phase-1 lifetime, 28800 s.
pub const DEFAULT_IKE_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Default `child_lifetime`: AWS's longest phase-2 lifetime, 3600 s.
pub const DEFAULT_CHILD_LIFETIME: Duration = Duration::from_secs(3600);
/// Default `replay_window` (packets): what AWS configures by default.
pub const DEFAULT_REPLAY_WINDOW: u64 = 1024;
