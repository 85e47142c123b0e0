//! tandem's TOML configuration: schema, defaults, validation with `FILE:LINE:COL` errors, and
//! key/PSK file loading with permission checks.
//!
//! The flow is parse -> check -> resolve, and a [`Config`] exists only once all three passed:
//!
//! 1. The text is parsed by `toml` into its spanned document tree (every key and value keeps its
//!    byte range). A syntax error stops here, with the parser's message and position.
//! 2. The tree is walked against the schema of docs/configuration.md (`schema`): unknown keys, wrong types,
//!    missing keys and bad values (durations, CIDRs, socket addresses, inline keys) are *all*
//!    collected, each naming its field path (`connection[0].tunnel[1].psk_file`) and pointing at
//!    the line that holds the offending value. Cross-field rules (`validate`) follow: duplicate
//!    names and endpoint pairs, overlapping subnets, tied priorities, `dpd_timeout` vs
//!    `dpd_interval` (each defaulting to its `timers` profile's); a duplicate or an overlap points at its second occurrence.
//! 3. Key and PSK files are read through a [`KeyFiles`] source ([`FsKeyFiles`] for real files:
//!    owner, mode and directory checks like ssh's, done on the opened descriptors; symlinks,
//!    FIFOs and devices refused; relative paths resolved against the config file's directory,
//!    `$CREDENTIALS_DIRECTORY` for bare names).
//!    A problem with a file points at the line that names it.
//!
//! The main file may `include` further files of `[[connection]]` blocks ([`IncludeFiles`]); they
//! are walked after it, into the same sink, so the cross-field rules see every connection and a
//! diagnostic names the file it is in.
//!
//! Why a walk over `toml`'s spanned tree instead of `#[derive(Deserialize)]` with
//! `deny_unknown_fields`: serde stops at the first error and does not know the field path; the walk
//! reports every error at once with its path, which is what an operator fixing a file wants.
#![forbid(unsafe_code)]

mod diag;
mod include;
mod keyfile;
mod schema;
mod validate;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use zeroize::Zeroizing;

pub use diag::{ConfigError, Diagnostic};
pub use include::{FsIncludeFiles, IncludeFiles, IncludedFile, MemoryIncludeFiles};
pub use keyfile::{FsKeyFiles, KeyFileError, KeyFiles, MemoryKeyFiles};
pub use schema::SCHEMA;
pub use values::{parse_duration, parse_key_base64};

/// A 32-byte secret (X25519 private key or PSK), wiped from memory on drop.
pub type SecretKey = Zeroizing<[u8; 32]>;

/// Default TUN interface name.
pub const DEFAULT_TUN_NAME: &str = "tandem0";
/// Default control socket path (docs/cli.md).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tandem/control.sock";
/// Per-packet overhead of the worst case: IPv6 outer header (40) + UDP (8) + ESP's own growth
/// ([`tandem_crypto::esp::OVERHEAD`]: header with SPI, sequence number and 8-byte IV (16) +
/// trailer with up to 3 pad bytes, pad length and next header (5) + GCM ICV (16)) = 85 bytes
/// (docs/protocol.md, RFC 4303/4106).
pub const TUNNEL_OVERHEAD: u16 = (40 + 8 + tandem_crypto::esp::OVERHEAD) as u16;
const _: () = assert!(TUNNEL_OVERHEAD == 85);
/// Default inner MTU: a 1500-byte underlay minus [`TUNNEL_OVERHEAD`] = 1415. An inner packet of
/// 1415 bytes + 2 trailer bytes pads to 1420 (4-byte aligned), so the outer IPv6 packet is
/// exactly 1500 bytes.
pub const DEFAULT_MTU: u16 = 1500 - TUNNEL_OVERHEAD;
/// Smallest accepted inner MTU: the IPv6 minimum link MTU (RFC 8200 §5); below it the kernel
/// disables IPv6 on the TUN.
pub const MIN_MTU: u16 = 1280;
/// Largest accepted inner MTU: jumbo frames.
pub const MAX_MTU: u16 = 9000;
/// The timer defaults and the SA age limit are the engine's (one definition each):
/// `dpd_interval`, `dpd_timeout`, `rekey_after` and `failback` defaults (docs/protocol.md).
pub use tandem_engine::config::{
    DEFAULT_DPD_INTERVAL, DEFAULT_DPD_TIMEOUT, DEFAULT_FAILBACK, DEFAULT_REKEY_AFTER,
};
/// An SA past this age is never used to send (docs/protocol.md): `rekey_after` must be below it.
pub const REJECT_AFTER: Duration = tandem_engine::REJECT_AFTER_TIME;
/// Shortest accepted `rekey_after`: one handshake a second is already far more than needed.
pub const MIN_REKEY_AFTER: Duration = Duration::from_secs(1);
/// Shortest accepted `dpd_interval`. Keepalives go out twice per interval, so at 5 ms each tunnel
/// already sends 400 a second (plus echo replies) each way; and below it the keepalive interval
/// (2.5 ms) nears what the data-plane loop can promise on a busy host: its timers fire within
/// ~0.1 ms of the deadline (`epoll_pwait2`), but one turn of the loop under full load (4 batches
/// of 128 packets per ready socket) and the scheduler's delays on a loaded machine take
/// milliseconds, so a late keepalive would look like a dead path (docs/configuration.md).
pub const MIN_DPD_INTERVAL: Duration = Duration::from_millis(5);
/// Longest accepted `dpd_interval`: a keepalive a minute already means a dead path keeps its
/// traffic for minutes; more is a typo (and the engine's timers must stay far from overflow).
pub const MAX_DPD_INTERVAL: Duration = Duration::from_secs(60);
/// Longest accepted `dpd_timeout`: ten minutes of a dead path before failover is already beyond
/// what any site-to-site VPN would call failover.
pub const MAX_DPD_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest accepted `failback` hold-down (use "never" to stay on the standby).
pub const MAX_FAILBACK: Duration = Duration::from_secs(24 * 3600);

/// `timers`: a named pair of `dpd_interval` / `dpd_timeout`, each overridden by an explicit key
/// (docs/configuration.md, timer profiles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimerProfile {
    /// 250 ms / 1 s: failover in about a second; for lossy or shared uplinks.
    #[default]
    Default,
    /// 10 ms / 30 ms: failover in tens of milliseconds; for good links between two tandem
    /// gateways, at ~240 keepalives a second per tunnel each way.
    Fast,
}

/// `dpd_interval` of [`TimerProfile::Fast`].
pub const FAST_DPD_INTERVAL: Duration = Duration::from_millis(10);
/// `dpd_timeout` of [`TimerProfile::Fast`]: three intervals, six keepalives.
pub const FAST_DPD_TIMEOUT: Duration = Duration::from_millis(30);

impl TimerProfile {
    /// The docs/configuration.md spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            TimerProfile::Default => "default",
            TimerProfile::Fast => "fast",
        }
    }

    /// The profile's `dpd_interval`.
    #[must_use]
    pub fn dpd_interval(self) -> Duration {
        match self {
            TimerProfile::Default => DEFAULT_DPD_INTERVAL,
            TimerProfile::Fast => FAST_DPD_INTERVAL,
        }
    }

    /// The profile's `dpd_timeout`.
    #[must_use]
    pub fn dpd_timeout(self) -> Duration {
        match self {
            TimerProfile::Default => DEFAULT_DPD_TIMEOUT,
            TimerProfile::Fast => FAST_DPD_TIMEOUT,
        }
    }
}

/// A validated configuration with its keys loaded.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[gateway]`.
    pub gateway: Gateway,
    /// `[control]`.
    pub control: Control,
    /// `[hooks]`.
    pub hooks: Hooks,
    /// `[[connection]]`, in file order (at least one).
    pub connections: Vec<Connection>,
}

/// `[gateway]`: this side's identity and TUN device. `Debug` never shows the key.
#[derive(Clone)]
pub struct Gateway {
    /// The X25519 private key read from `private_key_file`; `None` only when every connection
    /// speaks IKEv2, which needs no key.
    pub private_key: Option<SecretKey>,
    /// The file it came from, resolved (absolute or relative to the working directory).
    pub private_key_file: Option<PathBuf>,
    /// TUN interface name (default [`DEFAULT_TUN_NAME`]).
    pub tun_name: String,
    /// Inner MTU (default [`DEFAULT_MTU`], range [`MIN_MTU`]..=[`MAX_MTU`]).
    pub mtu: u16,
    /// Optional address put on the TUN (host bits allowed: it is an interface address).
    pub address: Option<IpNet>,
}

/// `[control]`: the admin surfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// Unix control socket (default [`DEFAULT_CONTROL_SOCKET`]).
    pub socket: PathBuf,
    /// Optional Prometheus text endpoint.
    pub metrics_listen: Option<SocketAddr>,
}

/// Default `[hooks] timeout`: a hook still running after this is killed.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `[hooks] timeout`: a hook is a notification, not a job runner.
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// `[hooks]`: commands run when a tunnel comes Up or goes Down (docs/configuration.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    /// Run when a tunnel enters Up.
    pub on_up: Option<PathBuf>,
    /// Run when a tunnel leaves Up.
    pub on_down: Option<PathBuf>,
    /// Kill a hook still running after this (default [`DEFAULT_HOOK_TIMEOUT`]).
    pub timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            on_up: None,
            on_down: None,
            timeout: DEFAULT_HOOK_TIMEOUT,
        }
    }
}

/// How a connection spreads traffic over its tunnels: the engine's type (one definition).
pub use tandem_engine::Mode;
/// Shared TUN with routes, or one interface per tunnel: the engine's type (one definition).
pub use tandem_engine::Routing;
/// A connection's protocol and IKEv2 settings: the engine's types (one definition).
pub use tandem_engine::{IkeProbe, IkeSettings, IkeTunnelConfig, Protocol};

/// `[[connection]]`: one site-to-site link carried by redundant tunnels.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Unique among connections.
    pub name: String,
    /// Traffic selectors: what may come from us (non-empty, no host bits).
    pub local_subnets: Vec<IpNet>,
    /// What is routed into this connection and may arrive from it (non-empty, no host bits,
    /// disjoint from every other connection's `remote_subnets` and from `local_subnets`).
    pub remote_subnets: Vec<IpNet>,
    /// Default [`Mode::ActiveStandby`].
    pub mode: Mode,
    /// Default [`Routing::Static`]; with [`Routing::Interfaces`] every tunnel has an
    /// [`Tunnel::interface`] and `remote_subnets` may overlap other connections' and
    /// `local_subnets`.
    pub routing: Routing,
    /// Stable time before returning to a better tunnel; `None` = "never". Default 10 s.
    pub failback: Option<Duration>,
    /// The `timers` profile the two DPD timers default to.
    pub timers: TimerProfile,
    /// Keepalive / DPD interval (default: the profile's, 250 ms; at least [`MIN_DPD_INTERVAL`]).
    pub dpd_interval: Duration,
    /// No authenticated packet for this long => Down (default: the profile's, 1 s;
    /// > `dpd_interval`).
    pub dpd_timeout: Duration,
    /// Clamp TCP MSS of SYNs to fit the inner MTU (default true).
    pub mss_clamp: bool,
    /// New handshake after this SA age (default 2 min, below [`REJECT_AFTER`]); tandem
    /// protocol only (an IKEv2 connection has `[connection.ike]` lifetimes).
    pub rekey_after: Duration,
    /// `protocol = "tandem"` (default) or `"ikev2"` with its `[connection.ike]` settings.
    pub protocol: Protocol,
    /// At least one; in file order.
    pub tunnels: Vec<Tunnel>,
}

/// `[[connection.tunnel]]`: one path to the peer with its own keys. `Debug` never shows the PSK.
#[derive(Clone)]
pub struct Tunnel {
    /// Unique within its connection.
    pub name: String,
    /// Bind address (`None`: any address, ephemeral port).
    pub local: Option<SocketAddr>,
    /// Peer address (`None`: responder-only, learned from authenticated packets).
    pub remote: Option<SocketAddr>,
    /// The peer's static public key: the tunnel's own, or else the connection's.
    pub peer_public_key: [u8; 32],
    /// The tunnel's pre-shared key read from `psk_file`.
    pub psk: SecretKey,
    /// The file it came from, resolved.
    pub psk_file: PathBuf,
    /// Lower is preferred; default: the tunnel's 1-based position in its connection. Unique
    /// within an active-standby connection.
    pub priority: u32,
    /// The tunnel's own interface: `Some` exactly when its connection has
    /// `routing = "interfaces"`.
    pub interface: Option<TunnelInterface>,
    /// The IKEv2 PSK (ASCII, as read from `psk_file`) and identities: `Some` exactly when its
    /// connection has `protocol = "ikev2"` (then `peer_public_key` and `psk` are unused zeros).
    pub ike: Option<IkeTunnelConfig>,
}

/// A tunnel's own TUN interface (`routing = "interfaces"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelInterface {
    /// `ifname`, or `<connection>-<tunnel>` cut to 15 bytes; unique over the gateway.
    pub ifname: String,
    /// `inside` addresses: at most one IPv4 /30 and one IPv6 /126.
    pub inside: Vec<IpNet>,
}

/// What `Debug` prints instead of secret bytes.
const REDACTED: &str = "<32 secret bytes>";

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("private_key", &format_args!("{REDACTED}"))
            .field("private_key_file", &self.private_key_file)
            .field("tun_name", &self.tun_name)
            .field("mtu", &self.mtu)
            .field("address", &self.address)
            .finish()
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("name", &self.name)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("peer_public_key", &self.peer_public_key)
            .field("psk", &format_args!("{REDACTED}"))
            .field("psk_file", &self.psk_file)
            .field("priority", &self.priority)
            .field("interface", &self.interface)
            .field("ike", &self.ike)
            .finish()
    }
}

impl Config {
    /// Total number of tunnels over all connections.
    pub fn tunnel_count(&self) -> usize {
        self.connections.iter().map(|c| c.tunnels.len()).sum()
    }
}

/// Reads, parses and validates the config file at `path` and the files its `include` names
/// ([`FsIncludeFiles`]: patterns relative to the config file's directory), and reads the key and
/// PSK files they name from the filesystem ([`FsKeyFiles`] rooted at the config file's directory,
/// honouring `$CREDENTIALS_DIRECTORY`). Errors are reported with `path` as given, and with an
/// included file's path joined to that directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_config_text(path)?;
    let keys = FsKeyFiles::for_config(path);
    let includes = FsIncludeFiles::for_config(path);
    parse_str_with(&path.display().to_string(), &text, &keys, &includes)
}

/// Parses and validates `text` as if it were the file `name`, reading key and PSK files through
/// `keys` (pass a [`MemoryKeyFiles`] to stay off the filesystem, as the fuzz target does). No
/// included file exists: an `include` pattern matches nothing.
pub fn parse_str(name: &str, text: &str, keys: &dyn KeyFiles) -> Result<Config, ConfigError> {
    schema::parse(name, text, keys, &MemoryIncludeFiles::new())
}

/// [`parse_str`] with included files read through `includes`.
pub fn parse_str_with(
    name: &str,
    text: &str,
    keys: &dyn KeyFiles,
    includes: &dyn IncludeFiles,
) -> Result<Config, ConfigError> {
    schema::parse(name, text, keys, includes)
}

/// The `[control] socket` of the config file at `path` (`None` when the key is absent), without
/// validating the rest or reading any key file: control commands use it to find the daemon.
pub fn control_socket_of(path: &Path) -> Result<Option<PathBuf>, ConfigError> {
    let text = read_config_text(path)?;
    schema::control_socket(&path.display().to_string(), &text)
}

fn read_config_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.display().to_string(),
        source,
    })
}
