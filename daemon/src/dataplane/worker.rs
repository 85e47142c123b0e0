//! The data-plane thread: owns the engine, the TUN and the tunnel sockets, and runs the
//! epoll loop described in the [module doc of `dataplane`](super).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tandem_engine::{
    Direction, DropReason, Engine, EngineConfig, Event, FailoverTarget, TunnelId, TunnelState,
};
use tun_rs::VIRTIO_NET_HDR_LEN;

use super::batch::{BATCH, Batch, SlotDest};
use super::drill::Drill;
use super::gro::TunGro;
use super::ifaces::{IfaceSpec, Ifaces, TOKEN_IFACE_BASE};
use super::path::{Receiver, open_batch_routed, open_coalesced, seal_batch, seal_batch_on};
use super::sys::{self, EMPTY_EVENT, Epoll, EventFd, RouteOp};
use crate::admin::metrics::{Lateness, MetricsSnapshot, TunnelMetric};
use crate::admin::{ErrorKind, Event as Notice, EventRecord, Reply};
use crate::notify::Notifier;

/// epoll token of the TUN.
const TOKEN_TUN: u64 = 0;
/// epoll token of the wake-up eventfd.
const TOKEN_WAKE: u64 = 1;
/// epoll token of the socket at slot `i` of the socket table: `TOKEN_SOCKET_BASE + i`.
const TOKEN_SOCKET_BASE: u64 = 2;

/// Ready events taken per `epoll_wait`: the TUN, the doorbell and a few sockets; more ready fds
/// are simply reported by the next (level-triggered) wait.
const EPOLL_EVENTS: usize = 16;

/// Batches taken from one ready fd before looking at the others: bounds the time one busy
/// direction can starve the other (4 x 128 packets, ~0.5 ms of 1400-byte packets at 10 Gbit/s).
const BATCHES_PER_WAKE: usize = 4;

/// Free slots needed before another offloaded TUN read: a TSO super-packet of 64 KiB splits
/// into at most 48 segments at an MSS of 1360 (inner MTU 1400); 64 leaves room down to an MSS of
/// ~1000. A super-packet with a smaller MSS that does not fit is dropped (TCP retransmits it);
/// MSS clamping keeps the MSS near the inner MTU.
const SEGMENT_RESERVE: usize = 64;

/// Kernel socket buffers for each tunnel socket: room for several full batches in flight both
/// ways, so a burst from the TUN does not overflow the send queue (the default ~200 KB holds only
/// ~150 datagrams).
const SOCKET_BUFFER: usize = 4 << 20;

/// Messages per `recvmmsg` on a socket with `UDP_GRO`. Each needs a buffer of a whole
/// coalesced message ([`sys::GRO_MSG_MAX`], up to 64 datagrams), so this trades datagrams per
/// syscall when nothing coalesces (a slow or mixed-size flow: 32 instead of [`BATCH`]) against
/// memory: 32 x 64 KiB = 2 MiB of address space, of which only the pages a receive touches
/// become resident (the buffer is zero-allocated, so the kernel maps pages lazily). 32 full
/// messages are ~2.9 MB, about what the 4 MiB socket buffer ([`SOCKET_BUFFER`], half of it
/// payload) can hold, so one call can drain a full queue.
const GRO_MSGS: usize = 32;

/// Bytes between two message buffers of the GRO receive area.
const GRO_STRIDE: usize = sys::GRO_MSG_MAX;

/// After the last packet, how long the loop keeps polling (a non-blocking `epoll_wait`, yielding
/// the CPU between polls) before it goes to sleep: the answer to a packet just forwarded (a ping
/// reply, a TCP ACK) is then picked up without a wake-up, which on a VM costs tens of µs per hop.
/// Idle links never poll (the window starts at the last packet); under load the loop rarely runs
/// dry. Only data opens the window (a packet from the TUN, or one delivered to it): keepalives
/// and handshakes expect no prompt answer, and a head-end with 1000 tunnels receives 8000
/// keepalives a second, each of which would otherwise buy 100 µs of polling.
/// `TANDEM_BUSY_POLL_US` overrides it (0 turns polling off).
const BUSY_POLL: Duration = Duration::from_micros(100);

/// Control-only wake-ups in a row, each within twice the hold of the one before, after which the
/// loop holds control datagrams ([`ControlHold`]): about 200 a second at the default
/// timers, which a head-end with tens of tunnels reaches and a site gateway (~9 keepalives a second
/// in) never does, so its first data packet after a quiet spell is never held.
const HOLD_STREAK: u32 = 8;

/// Events the data plane has published that a `tandem events` listener (or the hook runner) has
/// not taken yet. The data plane never waits: it pushes into a ring of this size
/// (`tokio::sync::broadcast`), and a listener that falls this far behind is dropped by the
/// control plane (docs/cli.md, "tandem events"). 1024 lines is minutes of a flapping gateway's
/// events and about 200 KB per the slowest listener.
pub const EVENT_QUEUE: usize = 1024;

/// When a timer is due and the loop last looked at its fds longer ago than this (it was busy
/// with batches, or not scheduled), the ready sockets are read first: a liveness deadline is
/// judged only after what the peer sent has been read, not while it waits in our own receive
/// queue. 1 ms is a few batches; a loop that just woke from its wait never pays the extra poll.
const POLL_STALE: Duration = Duration::from_millis(1);

/// Timers this late are logged (a warning, at most every [`LATE_WARN_EVERY`]): a third of the
/// shortest `dpd_timeout` the `fast` profile uses, so a loop that is late by this much is
/// already eating into that profile's margin (docs/failover-profiles.md).
const LATE_WARN: Duration = Duration::from_millis(10);
/// At most one "timers ran late" line per this period.
const LATE_WARN_EVERY: Duration = Duration::from_secs(1);

/// Longest the loop sleeps with no timer due: bounds the watchdog ping period when systemd does
/// not ask for one, and how stale a sleeping loop's view of time can get.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// How long the loop may sleep at `now`: until `deadline` (the engine's or the drill's next
/// timer), at most `MAX_SLEEP` and one watchdog period. Not rounded: the wait takes it to the
/// nanosecond ([`Epoll::wait_timeout`]), so a timer fires within the timer slack of its deadline
/// whatever its setting (docs/protocol.md, timers).
pub fn sleep_budget(
    deadline: Option<Instant>,
    watchdog: Option<Duration>,
    now: Instant,
) -> Duration {
    let d = deadline.map_or(MAX_SLEEP, |t| {
        t.saturating_duration_since(now).min(MAX_SLEEP)
    });
    match watchdog {
        Some(w) => d.min(w.max(Duration::from_millis(1))),
        None => d,
    }
}

/// When the loop lets arriving control datagrams wait in their sockets (docs/protocol.md,
/// "Timers"). A wake-up that read only control datagrams (keepalives, handshakes) within twice
/// the hold of the previous one extends a streak; `HOLD_STREAK` in a row start holding: the
/// loop then sleeps without watching the tunnel sockets and reads them once per hold, instead of
/// once per arriving keepalive (a head-end with 1000 tunnels receives 8000 a second). Any data
/// packet ends it, and the busy-poll window takes over; so a data datagram waits for the hold
/// only when it is the first after a spell of nothing but control traffic, on a gateway that
/// busy with it. The TUN, the tunnel interfaces and commands are watched throughout.
#[derive(Debug, Clone, Copy)]
pub struct ControlHold {
    /// How long a control datagram may wait: the shortest keepalive slack
    /// ([`Engine::keepalive_slack`], 2.5 ms at the default timers, 100 µs at `fast`); zero never
    /// holds. `TANDEM_CONTROL_HOLD_US` overrides it.
    hold: Duration,
    /// While holding: when the sockets are read next.
    until: Option<Instant>,
    /// The last wake-up that read only control datagrams.
    last: Instant,
    /// Such wake-ups in a row, each within twice `hold` of the one before.
    streak: u32,
}

impl ControlHold {
    /// Not holding, with `hold` as the longest wait.
    pub fn new(hold: Duration, now: Instant) -> Self {
        ControlHold {
            hold,
            until: None,
            last: now,
            streak: 0,
        }
    }

    /// While holding at `now`: until when the sockets are left unwatched.
    pub fn until(&mut self, now: Instant) -> Option<Instant> {
        self.until = self.until.filter(|&u| u > now);
        self.until
    }

    /// After a wake-up from sleep at `now` that read the tunnel sockets (`sockets`) and
    /// whether any of it was data (`data`).
    pub fn after_wake(&mut self, now: Instant, sockets: bool, data: bool) {
        if data {
            self.until = None;
            self.streak = 0;
            return;
        }
        if !sockets || self.hold.is_zero() {
            return;
        }
        self.streak = if now.saturating_duration_since(self.last) <= 2 * self.hold {
            self.streak.saturating_add(1)
        } else {
            1
        };
        self.last = now;
        self.until = (self.streak >= HOLD_STREAK).then(|| now + self.hold);
    }
}

/// What the data plane hands the control plane for `tandem status`: copies of the engine's
/// figures and of each tunnel interface's name and carrier, keyed by (connection, tunnel).
#[derive(Debug)]
pub struct StatusReport {
    pub engine: tandem_engine::Status,
    pub ifaces: HashMap<(String, String), (String, bool)>,
}

impl StatusReport {
    /// The docs/cli.md status document: the engine's status with `ifname` and `carrier` on every
    /// tunnel (`null` for tunnels without an interface).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        let mut doc = serde_json::to_value(&self.engine).unwrap_or(Value::Null);
        let Some(conns) = doc.get_mut("connections").and_then(Value::as_array_mut) else {
            return doc;
        };
        for c in conns {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let Some(tunnels) = c.get_mut("tunnels").and_then(Value::as_array_mut) else {
                continue;
            };
            for t in tunnels.iter_mut().filter_map(Value::as_object_mut) {
                let tname = t
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let (ifname, carrier) = match self.ifaces.get(&(name.clone(), tname)) {
                    Some((ifname, carrier)) => {
                        (Value::from(ifname.as_str()), Value::from(*carrier))
                    }
                    None => (Value::Null, Value::Null),
                };
                t.insert("ifname".into(), ifname);
                t.insert("carrier".into(), carrier);
            }
        }
        doc
    }
}

/// A command from the control plane, answered on its channel.
#[derive(Debug)]
pub enum Command {
    /// The figures of the docs/cli.md status document. The data plane only copies them out of
    /// the engine; the control plane turns them into JSON, so a status call holds the packet
    /// loop for a copy, not for building a document of ~500 bytes per tunnel.
    Status(tokio::sync::oneshot::Sender<StatusReport>),
    /// Prometheus figures.
    Metrics(tokio::sync::oneshot::Sender<MetricsSnapshot>),
    /// `tandem failover`.
    Failover {
        /// Connection name.
        connection: String,
        /// What to switch to.
        target: FailoverTarget,
        /// Answer.
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// A new, already validated configuration.
    Reload {
        /// Engine half.
        cfg: Box<EngineConfig>,
        /// The routes the TUN must carry afterwards.
        routes: Vec<IpNet>,
        /// Each tunnel's own interface, by tunnel id (`routing = "interfaces"`).
        ifaces: Vec<Option<IfaceSpec>>,
        /// Answer.
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// `tandem drill`.
    Drill {
        /// Connection name.
        connection: String,
        /// Silence duration.
        duration: Duration,
        /// Closing notice instead of silence.
        graceful: bool,
        /// Answer (sent when the drill ends).
        reply: tokio::sync::oneshot::Sender<Reply>,
    },
    /// SIGTERM: send closing notices and stop.
    Shutdown,
}

/// The control plane's handle on the data-plane thread.
#[derive(Debug)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    wake: EventFd,
    events: tokio::sync::broadcast::Sender<EventRecord>,
}

impl Handle {
    /// Queue a command and ring the doorbell. Fails only when the data plane has exited.
    pub fn send(&self, cmd: Command) -> Result<(), Command> {
        self.tx.send(cmd).map_err(|e| e.0)?;
        self.wake.notify();
        Ok(())
    }

    /// A new listener to the data plane's events (from now on; [`EVENT_QUEUE`] behind at most).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<EventRecord> {
        self.events.subscribe()
    }
}

/// A tunnel's socket needs: display name, bind address, remote address.
/// A socket the configuration needs: one per distinct fixed `local` address (shared by every
/// tunnel configured with it), and one per tunnel without a `local` (an ephemeral port).
#[derive(Debug, Clone)]
struct WantedSocket {
    /// `connection/tunnel` of its first tunnel (logs; matches ephemeral sockets on reload).
    name: String,
    local: Option<SocketAddr>,
    /// The first tunnel's remote (the address family of an ephemeral socket).
    remote: Option<SocketAddr>,
    tunnels: Vec<TunnelId>,
}

/// Groups the tunnels (in tunnel-id order: `connection/tunnel`, local, remote) into sockets.
fn wanted_sockets(
    tunnels: impl Iterator<Item = (String, Option<SocketAddr>, Option<SocketAddr>)>,
) -> Vec<WantedSocket> {
    let mut wanted: Vec<WantedSocket> = Vec::new();
    for (i, (name, local, remote)) in tunnels.enumerate() {
        let id = TunnelId(i as u16);
        if let Some(w) = wanted
            .iter_mut()
            .find(|w| local.is_some() && w.local == local)
        {
            w.tunnels.push(id);
            continue;
        }
        wanted.push(WantedSocket {
            name,
            local,
            remote,
            tunnels: vec![id],
        });
    }
    wanted
}

/// Adds a socket on the IKE port (500) of every IKEv2 tunnel with a bare local address
/// (`connection/tunnel`, that port, remote): IKE_SA_INIT arrives and leaves there without a
/// marker (RFC 7296 §2.23); it belongs to no tunnel (the engine finds the tunnel by the peer).
fn add_ike_ports(
    wanted: &mut Vec<WantedSocket>,
    ports: impl Iterator<Item = (String, Option<SocketAddr>, Option<SocketAddr>)>,
) {
    for (name, ike_local, remote) in ports {
        let Some(local) = ike_local else { continue };
        if wanted.iter().any(|w| w.local == Some(local)) {
            continue;
        }
        wanted.push(WantedSocket {
            name,
            local: Some(local),
            remote,
            tunnels: Vec::new(),
        });
    }
}

/// Where a tunnel's socket comes from after a reload.
#[derive(Debug)]
enum SocketPlan {
    /// The current socket at this index.
    Keep(usize),
    /// A socket bound for the new configuration.
    New(TunnelSocket),
}

/// One UDP socket per tunnel, indexed by tunnel id.
#[derive(Debug)]
struct TunnelSocket {
    sock: UdpSocket,
    /// The address asked for at bind time.
    bind: SocketAddr,
    /// Bound to the tunnel's configured `local` (else an ephemeral port).
    fixed: bool,
    /// `connection/tunnel` of the (first) tunnel it was bound for (matches ephemeral sockets on
    /// reload).
    name: String,
    /// What the engine is told a datagram arrived on.
    receiver: Receiver,
    /// Send runs of equal-size datagrams as UDP GSO sends (cleared if the kernel refuses).
    gso: bool,
    /// `UDP_GRO` is on: receives go through the GRO area, one coalesced message per entry.
    gro: bool,
}

/// Everything the data-plane thread owns.
pub struct DataPlane {
    engine: Engine,
    tun: tun_rs::SyncDevice,
    tun_index: u32,
    /// The TUN's current MTU, and the largest one the slots were sized for.
    mtu: u16,
    slot_mtu: u16,
    /// Indexed by `TunnelId.0`.
    /// The socket table; a tunnel's socket is `sockets[tunnel_socket[tunnel id]]`.
    sockets: Vec<Option<TunnelSocket>>,
    tunnel_socket: Vec<u16>,
    /// Per-tunnel interfaces (`routing = "interfaces"`), indexed by `TunnelId.0`.
    ifaces: Ifaces,
    /// Open new per-tunnel interfaces with offloads (as the shared TUN was asked to).
    offload: bool,
    routes: Vec<IpNet>,
    /// Per connection (by `ConnectionId.0`): failback hold-down, for drills.
    failback: Vec<Option<Duration>>,
    epoll: Epoll,
    wake: EventFd,
    commands: mpsc::Receiver<Command>,
    tx: Batch,
    rx: Batch,
    /// Control datagrams the engine queued, sent one `sendmmsg` per socket and batch (a
    /// head-end's keepalives of one timer wake-up go out in one system call).
    ctl: Batch,
    /// The fds the loop sleeps on while it holds control datagrams: the TUN, the doorbell and the
    /// tunnel interfaces, not the tunnel sockets ([`Self::sleep`]).
    quiet: Epoll,
    /// Whether, and until when, arriving control datagrams wait in their sockets.
    hold: ControlHold,
    notifier: Option<Notifier>,
    watchdog: Option<Duration>,
    last_watchdog: Instant,
    stall_after: Option<Instant>,
    /// Poll this long after the last packet before sleeping ([`BUSY_POLL`]).
    busy_poll: Duration,
    /// When the last data packet was read (from the TUN, or a socket's that carried data).
    last_packet: Instant,
    /// When the loop last learned which fds are ready (an epoll wait returned).
    last_poll: Instant,
    /// How late due timers ran (metrics: `tandem_timer_lateness_seconds`).
    lateness: Lateness,
    /// The last "timers ran late" line, and the worst lateness and count since.
    late_warn: (Option<Instant>, Duration, u32),
    drill: Option<Drill>,
    /// Where `tandem events` listeners and the hook runner take events from.
    events: tokio::sync::broadcast::Sender<EventRecord>,
    status_dirty: bool,
    /// `TANDEM_KEYLOG` file (docs/protocol.md), debugging only.
    keylog: Option<std::fs::File>,
    /// The TUN has `IFF_VNET_HDR`: reads may be TSO/USO super-packets, writes need a header.
    vnet: bool,
    /// One TUN read with offloads: virtio-net header + up to 64 KiB super-packet.
    tun_super: Box<[u8]>,
    /// Segment sizes of one split super-packet.
    sizes: Box<[usize]>,
    /// Coalesces decrypted TCP segments into TUN super-packets (with offloads only).
    gro: TunGro,
    /// Receive area of the sockets with `UDP_GRO`: [`GRO_MSGS`] buffers of [`GRO_STRIDE`] bytes.
    gro_area: Box<[u8]>,
    /// What each message of the last GRO receive holds.
    gro_msgs: Box<[sys::GroMsg]>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("tun_index", &self.tun_index)
            .field("sockets", &self.sockets)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// What the TUN looks like (from `[gateway]`).
#[derive(Debug, Clone)]
pub struct TunSettings {
    /// Interface name.
    pub name: String,
    /// Inner MTU.
    pub mtu: u16,
    /// Optional inside address.
    pub address: Option<IpNet>,
    /// Try `IFF_VNET_HDR` offloads (TSO/USO super-packets from the TUN).
    pub offload: bool,
}

/// Packets the kernel may queue on a TUN for the data plane to read (its `txqueuelen`); Linux
/// gives a TUN 500. The queue fills only while the data plane is off its core: with 500, a
/// gateway that shares two cores with busy neighbours (`lab fastpath`: the sending and
/// receiving hosts as well) dropped up to half of a full-rate UDP flow there. 5000 holds ~14 ms
/// at 350 kpps, as long as the scheduler keeps a task waiting on a busy core; only a sender
/// outrunning the data plane for longer fills it. Same-run A/B in docs/performance.md.
const TUN_TX_QUEUE_LEN: u32 = 5000;

/// The TUN's `txqueuelen`: [`TUN_TX_QUEUE_LEN`], or `TANDEM_TUN_TXQUEUELEN` (a positive count;
/// for A/B runs).
fn tun_tx_queue_len() -> u32 {
    match std::env::var("TANDEM_TUN_TXQUEUELEN") {
        Err(_) => TUN_TX_QUEUE_LEN,
        Ok(v) => match v.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => {
                tracing::warn!(value = %v, default = TUN_TX_QUEUE_LEN, "TANDEM_TUN_TXQUEUELEN is not a positive count; using the default");
                TUN_TX_QUEUE_LEN
            }
        },
    }
}

pub(super) fn build_tun(t: &TunSettings, offload: bool) -> io::Result<tun_rs::SyncDevice> {
    let mut b = tun_rs::DeviceBuilder::new()
        .name(&t.name)
        .mtu(t.mtu)
        .packet_information(false)
        .offload(offload)
        .tx_queue_len(tun_tx_queue_len());
    match t.address {
        Some(IpNet::V4(n)) => b = b.ipv4(n.addr(), n.prefix_len(), None),
        Some(IpNet::V6(n)) => b = b.ipv6(n.addr(), n.prefix_len()),
        None => {}
    }
    let dev = b.build_sync()?;
    dev.set_nonblocking(true)?;
    Ok(dev)
}

/// Open the TUN, with `IFF_VNET_HDR` + TSO/USO offloads when asked and the kernel allows, else
/// plain. Returns the device and whether reads/writes carry a virtio-net header.
pub(super) fn open_tun(t: &TunSettings) -> io::Result<(tun_rs::SyncDevice, bool, bool)> {
    if t.offload {
        match build_tun(t, true) {
            Ok(dev) => {
                let vnet = dev.tcp_gso();
                let uso = vnet && dev.udp_gso();
                tracing::info!(tso = vnet, uso, "TUN offloads");
                return Ok((dev, vnet, uso));
            }
            Err(e) => tracing::warn!(error = %e, "TUN offloads unavailable; plain TUN"),
        }
    }
    Ok((build_tun(t, false)?, false, false))
}

/// Open the `TANDEM_KEYLOG` file when the variable is set ([`crate::keylog`]: created 0600 or
/// our own 0600 file emptied; anything else refused, and the daemon runs without a key log).
fn open_keylog() -> Option<std::fs::File> {
    let path = std::env::var_os("TANDEM_KEYLOG").filter(|p| !p.is_empty())?;
    let path = std::path::Path::new(&path);
    match crate::keylog::open(path) {
        Ok(f) => {
            tracing::warn!(path = %path.display(), "TANDEM_KEYLOG is set: SA keys are written to a key log (debugging only; anyone who reads it can decrypt the tunnels)");
            Some(f)
        }
        Err(e) => {
            tracing::error!("{e}; running without a key log");
            None
        }
    }
}

fn bind_socket(
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
) -> io::Result<(UdpSocket, SocketAddr)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = local.unwrap_or(match remote {
        Some(SocketAddr::V6(_)) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    });
    let sock = Socket::new(
        Domain::for_address(bind),
        Type::DGRAM.cloexec(),
        Some(Protocol::UDP),
    )?;
    if bind.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // Best effort: a smaller buffer only costs throughput under bursts.
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    // Never block the loop on one path: a send that finds the buffer full (a neighbour that
    // never resolves holds every datagram, charged to this buffer) is dropped and counted
    // (`send_queue_full`), and every other tunnel keeps being served.
    sock.set_nonblocking(true)?;
    sock.bind(&bind.into())?;
    Ok((sock.into(), bind))
}

/// Whether tunnel sockets ask for `UDP_GRO`: yes, unless `TANDEM_UDP_GRO=0` (a same-run A/B
/// of the receive path, or a kernel whose GRO misbehaves). A kernel without it (< 5.0) refuses
/// the option and that socket receives one datagram per message.
fn udp_gro_wanted() -> bool {
    std::env::var("TANDEM_UDP_GRO").map_or(true, |v| v != "0")
}

/// Startup failures of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The TUN could not be created or configured.
    #[error("cannot create TUN {name}: {source}")]
    Tun {
        /// Interface name.
        name: String,
        /// Cause.
        source: io::Error,
    },
    /// A tunnel's UDP socket could not be bound.
    #[error("cannot bind UDP socket {addr} for tunnel {tunnel}: {source}")]
    Bind {
        /// Tunnel name.
        tunnel: String,
        /// Address.
        addr: String,
        /// Cause.
        source: io::Error,
    },
    /// A route could not be installed.
    #[error("cannot install route {route} on {tun}: {source}")]
    Route {
        /// Prefix.
        route: IpNet,
        /// TUN name.
        tun: String,
        /// Cause.
        source: io::Error,
    },
    /// epoll / eventfd.
    #[error("event loop setup: {0}")]
    Io(#[from] io::Error),
}

impl DataPlane {
    /// Open the TUN, bind every tunnel's socket, open the per-tunnel interfaces (`ifaces`, by
    /// tunnel id), install the routes. On success the gateway is ready to move packets (READY=1
    /// may be sent).
    pub fn start(
        engine: Engine,
        tun: &TunSettings,
        routes: Vec<IpNet>,
        ifaces: Vec<Option<IfaceSpec>>,
        failback: Vec<Option<Duration>>,
    ) -> Result<(Self, Handle), StartError> {
        let (dev, vnet, uso) = open_tun(tun).map_err(|source| StartError::Tun {
            name: tun.name.clone(),
            source,
        })?;
        let tun_name = dev.name().unwrap_or_else(|_| tun.name.clone());
        let tun_index = sys::if_index(&tun_name).map_err(|source| StartError::Tun {
            name: tun_name.clone(),
            source,
        })?;
        let epoll = Epoll::new()?;
        let wake = EventFd::new()?;
        epoll.add(dev.as_fd(), TOKEN_TUN)?;
        epoll.add(wake.as_fd(), TOKEN_WAKE)?;
        let (tx, commands) = mpsc::channel();
        let (events, _) = tokio::sync::broadcast::channel(EVENT_QUEUE);
        let handle = Handle {
            tx,
            wake: wake.try_clone()?,
            events: events.clone(),
        };
        let slot_len = Batch::slot_len(
            tandem_engine::HEADROOM,
            tun.mtu.max(1500),
            tandem_engine::TAILROOM,
        );
        let watchdog = crate::notify::watchdog_interval();
        let mut dp = DataPlane {
            engine,
            tun: dev,
            tun_index,
            mtu: tun.mtu,
            slot_mtu: tun.mtu.max(1500),
            sockets: Vec::new(),
            tunnel_socket: Vec::new(),
            ifaces: Ifaces::default(),
            offload: tun.offload,
            routes: Vec::new(),
            failback,
            epoll,
            wake,
            commands,
            tx: Batch::new(slot_len),
            rx: Batch::new(slot_len),
            ctl: Batch::new(tandem_engine::MAX_CONTROL_DATAGRAM),
            quiet: Epoll::new()?,
            hold: ControlHold::new(Duration::ZERO, Instant::now()),
            notifier: Notifier::from_env(),
            watchdog,
            last_watchdog: Instant::now(),
            stall_after: None,
            busy_poll: std::env::var("TANDEM_BUSY_POLL_US")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(BUSY_POLL, Duration::from_micros),
            last_packet: Instant::now(),
            last_poll: Instant::now(),
            lateness: Lateness::default(),
            late_warn: (None, Duration::ZERO, 0),
            drill: None,
            events,
            status_dirty: true,
            keylog: open_keylog(),
            vnet,
            tun_super: vec![
                0u8;
                // Per-tunnel interfaces share it, and are opened with offloads when the TUN was.
                if vnet || tun.offload {
                    VIRTIO_NET_HDR_LEN + usize::from(u16::MAX)
                } else {
                    0
                }
            ]
            .into_boxed_slice(),
            sizes: vec![0usize; BATCH].into_boxed_slice(),
            gro: TunGro::new().with_udp(uso),
            gro_area: vec![0u8; GRO_MSGS * GRO_STRIDE].into_boxed_slice(),
            gro_msgs: vec![
                sys::GroMsg {
                    len: 0,
                    seg: 1,
                    addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                };
                GRO_MSGS
            ]
            .into_boxed_slice(),
        };
        if dp.keylog.is_some() {
            dp.engine.set_keylog(true);
        }
        dp.sync_sockets()?;
        let plan = dp
            .ifaces
            .plan(&ifaces, tun.mtu, dp.offload)
            .map_err(|(name, source)| StartError::Tun { name, source })?;
        dp.ifaces.install(plan, &dp.epoll)?;
        dp.sync_quiet()?;
        dp.sync_routes(routes)
            .map_err(|(route, source)| StartError::Route {
                route,
                tun: tun_name.clone(),
                source,
            })?;
        Ok((dp, handle))
    }

    /// The quiet epoll set ([`Self::sleep`]) after the interfaces changed: a fresh set with the
    /// TUN, the doorbell and every tunnel interface; and the hold, from the engine's timers.
    fn sync_quiet(&mut self) -> io::Result<()> {
        let quiet = Epoll::new()?;
        quiet.add(self.tun.as_fd(), TOKEN_TUN)?;
        quiet.add(self.wake.as_fd(), TOKEN_WAKE)?;
        for (fd, token) in self.ifaces.tokens() {
            quiet.add(fd, token)?;
        }
        self.quiet = quiet;
        let hold = std::env::var("TANDEM_CONTROL_HOLD_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or_else(|| self.engine.keepalive_slack(), Duration::from_micros);
        self.hold = ControlHold::new(hold, Instant::now());
        Ok(())
    }

    /// The TUN's interface name.
    pub fn tun_name(&self) -> String {
        self.tun.name().unwrap_or_default()
    }

    /// Bind a socket for every tunnel of the engine's current configuration (start-up).
    fn sync_sockets(&mut self) -> Result<(), StartError> {
        let mut wanted = wanted_sockets(self.engine.tunnels().map(|(_, info)| {
            (
                format!("{}/{}", info.connection, info.name),
                info.local,
                info.remote,
            )
        }));
        add_ike_ports(
            &mut wanted,
            self.engine.tunnels().map(|(_, info)| {
                (
                    format!("{}/{}", info.connection, info.name),
                    info.ike_local,
                    info.remote,
                )
            }),
        );
        let plan = self.plan_sockets(&wanted)?;
        self.install_sockets(plan, &wanted)
    }

    /// The sockets `wanted` needs, binding only what no current socket can serve. Nothing changes until [`Self::install_sockets`]: a bind that
    /// fails (address in use, not local) leaves the running configuration untouched.
    ///
    /// Identity, not position: a tunnel with a fixed `local` takes the socket bound there,
    /// whichever tunnel had it (a tunnel keeps its socket when others before it are removed); a
    /// tunnel without one keeps the ephemeral socket of the same connection/tunnel name (so its
    /// source port, which the peer knows, does not change).
    fn plan_sockets(&self, wanted: &[WantedSocket]) -> Result<Vec<SocketPlan>, StartError> {
        let mut taken = vec![false; self.sockets.len()];
        let mut plan = Vec::with_capacity(wanted.len());
        for w in wanted {
            let (name, local, remote) = (&w.name, &w.local, &w.remote);
            let reuse = self.sockets.iter().enumerate().position(|(j, s)| {
                !taken[j]
                    && s.as_ref().is_some_and(|s| match local {
                        Some(l) => s.fixed && s.bind == *l,
                        None => {
                            !s.fixed
                                && s.name == *name
                                && s.bind.is_ipv6() == remote.is_some_and(|r| r.is_ipv6())
                        }
                    })
            });
            if let Some(j) = reuse {
                taken[j] = true;
                plan.push(SocketPlan::Keep(j));
                continue;
            }
            let (sock, bind) = bind_socket(*local, *remote).map_err(|source| StartError::Bind {
                tunnel: name.clone(),
                addr: local.map_or_else(|| "(any)".to_owned(), |a| a.to_string()),
                source,
            })?;
            let gro = udp_gro_wanted() && sys::set_udp_gro(sock.as_fd()).is_ok();
            plan.push(SocketPlan::New(TunnelSocket {
                sock,
                bind,
                fixed: local.is_some(),
                name: name.clone(),
                receiver: Receiver::Port(bind),
                gso: true,
                gro,
            }));
        }
        Ok(plan)
    }

    /// Makes `plan` (one entry per `wanted` socket) the socket table: kept sockets move to their
    /// new slot, new ones join the epoll set, the rest are closed.
    fn install_sockets(
        &mut self,
        plan: Vec<SocketPlan>,
        wanted: &[WantedSocket],
    ) -> Result<(), StartError> {
        let mut old = std::mem::take(&mut self.sockets);
        let mut table: Vec<Option<TunnelSocket>> = Vec::with_capacity(plan.len());
        let mut tunnel_socket = Vec::new();
        for (i, (p, w)) in plan.into_iter().zip(wanted).enumerate() {
            for t in &w.tunnels {
                let t = usize::from(t.0);
                if tunnel_socket.len() <= t {
                    tunnel_socket.resize(t + 1, u16::MAX);
                }
                tunnel_socket[t] = i as u16;
            }
            let mut s = match p {
                SocketPlan::Keep(j) => {
                    let s = old[j].take();
                    if let Some(s) = &s {
                        // Re-register under the new index's token.
                        let _ = self.epoll.delete(s.sock.as_fd());
                    }
                    s
                }
                SocketPlan::New(s) => {
                    tracing::info!(tunnel = %s.name, local = %s.sock.local_addr().map_or_else(|_| s.bind.to_string(), |a| a.to_string()), "tunnel socket bound");
                    Some(s)
                }
            };
            if let Some(s) = &mut s {
                // A fixed local port is the engine's shared port (even with one tunnel on it);
                // an ephemeral socket belongs to its one tunnel.
                s.receiver = match w.local {
                    Some(local) => Receiver::Port(local),
                    None => Receiver::Tunnel(w.tunnels[0]),
                };
                self.epoll
                    .add(s.sock.as_fd(), TOKEN_SOCKET_BASE + i as u64)?;
            }
            table.push(s);
        }
        for s in old.into_iter().flatten() {
            let _ = self.epoll.delete(s.sock.as_fd());
            tracing::info!(tunnel = %s.name, local = %s.bind, "tunnel socket closed");
        }
        self.sockets = table;
        self.tunnel_socket = tunnel_socket;
        Ok(())
    }

    /// Make the TUN's routes exactly `routes`.
    fn sync_routes(&mut self, routes: Vec<IpNet>) -> Result<(), (IpNet, io::Error)> {
        for r in &self.routes {
            if !routes.contains(r) {
                if let Err(e) =
                    sys::route(RouteOp::Delete, self.tun_index, r.network(), r.prefix_len())
                {
                    tracing::warn!(route = %r, error = %e, "cannot remove route");
                }
            }
        }
        for r in &routes {
            sys::route(RouteOp::Add, self.tun_index, r.network(), r.prefix_len())
                .map_err(|e| (*r, e))?;
            tracing::debug!(route = %r, "route installed");
        }
        self.routes = routes;
        Ok(())
    }

    /// Run until shutdown. Sends READY=1 first (the caller only starts this once the TUN, the
    /// sockets and the routes are in place).
    pub fn run(mut self) {
        // ---- systemd notify hook (daemon/src/notify.rs): READY=1 + STATUS after start-up. ----
        if let Some(n) = &self.notifier {
            if let Err(e) = n.ready_with_status(&self.summary()) {
                tracing::debug!(error = %e, "sd_notify READY failed");
            }
        }
        self.status_dirty = false;
        self.stall_after = std::env::var("TANDEM_TEST_STALL_AFTER")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let mut events = [EMPTY_EVENT; EPOLL_EVENTS];
        loop {
            self.run_due_timers();
            let now = Instant::now();
            if let Some(d) = self.drill.as_mut() {
                if let Some(reply) = d.on_tick(&mut self.engine, now) {
                    let connection = d.connection().to_owned();
                    self.drill = None;
                    // The figures and settings; the timeline (thousands of buckets) stays in
                    // the drill's own reply, to keep an event one short line.
                    let report = reply.1.data.clone().map(|mut r| {
                        if let Some(o) = r.as_object_mut() {
                            o.remove("timeline");
                        }
                        r
                    });
                    self.publish(|| Notice::DrillEnd { connection, report });
                    reply.0.send(reply.1).ok();
                }
            }
            self.flush_control();
            self.handle_events(now);
            self.feed_watchdog(now);

            let deadline = [
                self.engine.poll_timeout(),
                self.drill.as_ref().map(Drill::next_deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            let mut slept = false;
            let n = match self.busy_poll(&mut events).and_then(|n| match n {
                0 => {
                    slept = true;
                    self.sleep(&mut events, deadline)
                }
                n => Ok(n),
            }) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait failed; data plane stops");
                    return;
                }
            };
            self.last_poll = Instant::now();
            let last_packet = self.last_packet;
            let mut sockets = false;
            for ev in &events[..n] {
                match sys::event_token(ev) {
                    TOKEN_TUN => self.on_tun_readable(),
                    TOKEN_WAKE => {
                        self.wake.drain();
                        if self.on_commands() {
                            return;
                        }
                    }
                    t if t >= TOKEN_IFACE_BASE => {
                        self.on_iface_readable((t - TOKEN_IFACE_BASE) as u16);
                    }
                    t => {
                        sockets = true;
                        self.on_socket_readable((t - TOKEN_SOCKET_BASE) as u16, true);
                    }
                }
            }
            if slept {
                let data = self.last_packet != last_packet;
                self.hold.after_wake(Instant::now(), sockets, data);
            }
        }
    }

    /// Sleeps until the next deadline or a ready fd. While holding control datagrams it sleeps
    /// on the quiet set (the TUN, the doorbell, the tunnel interfaces: data from the LAN and
    /// commands still wake it at once) until the hold ends or a timer is due, then collects every
    /// ready fd, the tunnel sockets' included, without waiting.
    fn sleep(
        &mut self,
        events: &mut [libc::epoll_event],
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        let now = Instant::now();
        if let Some(until) = self.hold.until(now) {
            let wake = deadline.map_or(until, |d| d.min(until));
            let timeout = sleep_budget(Some(wake), self.watchdog, now);
            self.quiet.wait_timeout(events, timeout)?;
            return self.epoll.wait(events, 0);
        }
        let timeout = sleep_budget(deadline, self.watchdog, now);
        self.epoll.wait_timeout(events, timeout)
    }

    /// Runs the engine's timers if one is due, and sends what they queued (keepalives first of
    /// all). Called at the top of every loop turn and between batches, so a keepalive or a
    /// liveness check waits for at most one batch, not a whole turn of the loop. If the loop has
    /// not polled its fds for [`POLL_STALE`], the ready sockets are read first.
    fn run_due_timers(&mut self) {
        let Some(due) = self.engine.poll_timeout() else {
            return;
        };
        let mut now = Instant::now();
        if due > now {
            return;
        }
        if now.saturating_duration_since(self.last_poll) > POLL_STALE {
            self.read_ready_sockets();
            now = Instant::now();
        }
        let late = now.saturating_duration_since(due);
        self.lateness.record(late);
        if late >= LATE_WARN {
            self.warn_late(late, now);
        }
        self.engine.handle_timeout(now);
        self.flush_control();
    }

    /// Logs (at most once per [`LATE_WARN_EVERY`]) that timers ran [`LATE_WARN`] or more after
    /// their deadline, with the worst lateness since the last such line.
    fn warn_late(&mut self, late: Duration, now: Instant) {
        let (last, worst, count) = &mut self.late_warn;
        *worst = (*worst).max(late);
        *count += 1;
        if last.is_some_and(|t| now.saturating_duration_since(t) < LATE_WARN_EVERY) {
            return;
        }
        tracing::warn!(
            late_ms = format_args!("{:.1}", worst.as_secs_f64() * 1e3),
            times = *count,
            "timers ran late: the data plane did not run in time (a busy or starved host); a late keepalive or liveness check can look like a dead path at a short dpd_timeout"
        );
        *last = Some(now);
        *worst = Duration::ZERO;
        *count = 0;
    }

    /// One non-blocking look at the fds; reads the sockets that are ready (the TUN and the rest
    /// wait for the loop's next turn: level-triggered, they are reported again).
    fn read_ready_sockets(&mut self) {
        let mut events = [EMPTY_EVENT; EPOLL_EVENTS];
        let n = match self.epoll.wait(&mut events, 0) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "epoll_wait before timers failed");
                return;
            }
        };
        self.last_poll = Instant::now();
        for ev in &events[..n] {
            match sys::event_token(ev) {
                TOKEN_TUN | TOKEN_WAKE => {}
                t if t >= TOKEN_IFACE_BASE => {}
                t => self.on_socket_readable((t - TOKEN_SOCKET_BASE) as u16, false),
            }
        }
    }

    /// Poll the fds without sleeping until one is ready or [`BUSY_POLL`] has passed since the
    /// last packet; 0 events when the window is closed (then the caller sleeps in `epoll_wait`).
    fn busy_poll(&self, events: &mut [libc::epoll_event]) -> io::Result<usize> {
        if self.busy_poll.is_zero() {
            return Ok(0);
        }
        let until = self.last_packet + self.busy_poll;
        while Instant::now() < until {
            let n = self.epoll.wait(events, 0)?;
            if n > 0 {
                return Ok(n);
            }
            // Let whatever else wants this CPU (the peer daemon, softirq work, the sender) run.
            std::thread::yield_now();
        }
        Ok(0)
    }

    fn feed_watchdog(&mut self, now: Instant) {
        if let Some(stall) = self.stall_after {
            if now >= stall {
                tracing::warn!("TANDEM_TEST_STALL_AFTER reached: data plane stalls (test hook)");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        }
        // ---- systemd notify hook: WATCHDOG=1 from the data-plane loop itself. ----
        if let (Some(w), Some(n)) = (self.watchdog, &self.notifier) {
            if now.duration_since(self.last_watchdog) >= w {
                self.last_watchdog = now;
                if let Err(e) = n.watchdog() {
                    tracing::debug!(error = %e, "sd_notify WATCHDOG failed");
                }
            }
        }
    }

    /// TUN -> (split super-packets) -> seal -> sendmmsg, up to [`BATCHES_PER_WAKE`] batches.
    fn on_tun_readable(&mut self) {
        for _ in 0..BATCHES_PER_WAKE {
            let (filled, more) = if self.vnet {
                self.read_tun_offload()
            } else {
                self.read_tun_plain()
            };
            if filled == 0 {
                return;
            }
            self.tx.filled = filled;
            let now = Instant::now();
            self.last_packet = now;
            let _ = seal_batch(&mut self.engine, &mut self.tx, now);
            let full = flush_batch(
                &self.tun,
                self.vnet,
                None,
                None,
                &mut self.sockets,
                &self.tunnel_socket,
                &mut self.tx,
            );
            self.count_queue_full(full);
            if !more {
                return;
            }
            self.run_due_timers();
        }
    }

    /// TUN -> seal on tunnel `id` -> sendmmsg for a tunnel's own interface, up to
    /// [`BATCHES_PER_WAKE`] batches.
    fn on_iface_readable(&mut self, id: u16) {
        for _ in 0..BATCHES_PER_WAKE {
            let Some(iface) = self.ifaces.get(id) else {
                return;
            };
            let (filled, more) = if iface.vnet {
                read_offload(
                    &iface.dev,
                    &mut self.tx,
                    &mut self.tun_super,
                    &mut self.sizes,
                )
            } else {
                read_plain(&iface.dev, &mut self.tx)
            };
            if filled == 0 {
                return;
            }
            self.tx.filled = filled;
            let now = Instant::now();
            self.last_packet = now;
            let _ = seal_batch_on(&mut self.engine, TunnelId(id), &mut self.tx, now);
            let full = flush_batch(
                &iface.dev,
                iface.vnet,
                None,
                None,
                &mut self.sockets,
                &self.tunnel_socket,
                &mut self.tx,
            );
            self.count_queue_full(full);
            if !more {
                return;
            }
            self.run_due_timers();
        }
    }

    /// One packet per read. Returns (slots filled, whether the TUN may have more).
    fn read_tun_plain(&mut self) -> (usize, bool) {
        read_plain(&self.tun, &mut self.tx)
    }

    /// With offloads: each read is one (super-)packet, split into MTU-size segments straight
    /// into the slots (checksums completed). Reads stop while fewer than
    /// [`SEGMENT_RESERVE`] slots are free, so a split always finds room.
    fn read_tun_offload(&mut self) -> (usize, bool) {
        read_offload(
            &self.tun,
            &mut self.tx,
            &mut self.tun_super,
            &mut self.sizes,
        )
    }
    /// recvmmsg -> open -> TUN, up to [`BATCHES_PER_WAKE`] batches; due timers run between
    /// batches when `timers` is set (not when this is itself the read before the timers).
    fn on_socket_readable(&mut self, slot: u16, timers: bool) {
        let Some(Some(s)) = self.sockets.get(usize::from(slot)) else {
            return;
        };
        let fd = s.sock.as_raw_fd();
        let receiver = s.receiver;
        if s.gro {
            self.on_gro_socket_readable(fd, receiver, timers);
            return;
        }
        for _ in 0..BATCHES_PER_WAKE {
            let n = match sys::recv_mmsg(fd, &mut self.rx.slots, tandem_engine::HEADROOM) {
                Ok(n) => n,
                Err(e) => {
                    // ICMP errors reported on the socket (ECONNREFUSED…): nothing to read now.
                    tracing::trace!(error = %e, "recvmmsg");
                    0
                }
            };
            if n == 0 {
                break;
            }
            self.rx.filled = n;
            let now = Instant::now();
            let ifaces = &self.ifaces;
            let out = open_batch_routed(
                &mut self.engine,
                receiver,
                &mut self.rx,
                |t| ifaces.get(t.0).is_some(),
                now,
            );
            if out.to_tun > 0 {
                self.last_packet = now;
            }
            let gro = self.vnet.then_some(&mut self.gro);
            let full = flush_batch(
                &self.tun,
                self.vnet,
                gro,
                Some(&mut self.ifaces),
                &mut self.sockets,
                &self.tunnel_socket,
                &mut self.rx,
            );
            self.count_queue_full(full);
            if out.consumed > 0 {
                self.flush_control();
            }
            if n < BATCH {
                break;
            }
            if timers {
                self.run_due_timers();
            }
        }
    }

    /// As [`Self::on_socket_readable`] for a socket with `UDP_GRO`: each message of one
    /// `recvmmsg` is a run of datagrams from one sender, opened in place where it landed
    /// ([`open_coalesced`]) and written to the TUN (coalesced again by [`TunGro`]) or to its
    /// tunnel's interface; up to [`BATCHES_PER_WAKE`] receives.
    fn on_gro_socket_readable(&mut self, fd: std::os::fd::RawFd, receiver: Receiver, timers: bool) {
        for _ in 0..BATCHES_PER_WAKE {
            let n = match sys::recv_mmsg_gro(fd, &mut self.gro_area, GRO_STRIDE, &mut self.gro_msgs)
            {
                Ok(n) => n,
                Err(e) => {
                    // ICMP errors reported on the socket (ECONNREFUSED…): nothing to read now.
                    tracing::trace!(error = %e, "recvmmsg");
                    0
                }
            };
            if n == 0 {
                break;
            }
            let now = Instant::now();
            let tun = &self.tun;
            let vnet = self.vnet;
            let mut write = |b: &[u8]| {
                if let Err(e) = tun.send(b) {
                    tracing::trace!(error = %e, "TUN write failed");
                }
            };
            let gro = &mut self.gro;
            let ifaces = &mut self.ifaces;
            let mut delivered = 0;
            let mut consumed = 0;
            for (m, area) in self.gro_msgs[..n]
                .iter()
                .zip(self.gro_area.chunks_exact_mut(GRO_STRIDE))
            {
                let out = open_coalesced(
                    &mut self.engine,
                    receiver,
                    m.addr,
                    &mut area[..m.len],
                    m.seg,
                    now,
                    |d, pkt, tunnel| match ifaces.get_mut(tunnel.0) {
                        Some(f) => {
                            let dev = &f.dev;
                            let mut write = |b: &[u8]| {
                                if let Err(e) = dev.send(b) {
                                    tracing::trace!(error = %e, "TUN write failed");
                                }
                            };
                            if !(f.vnet && f.gro.push(&d[pkt.clone()], &mut write)) {
                                write_inner_at(d, pkt, f.vnet, &mut write);
                            }
                        }
                        None => {
                            // Decrypted segments of one flow are coalesced (and written when
                            // the run ends).
                            if !(vnet && gro.push(&d[pkt.clone()], &mut write)) {
                                write_inner_at(d, pkt, vnet, &mut write);
                            }
                        }
                    },
                );
                delivered += out.to_tun;
                consumed += out.consumed;
            }
            if vnet {
                gro.flush(&mut write);
            }
            ifaces.flush_gro();
            if delivered > 0 {
                self.last_packet = now;
            }
            if consumed > 0 {
                self.flush_control();
            }
            if n < GRO_MSGS {
                break;
            }
            if timers {
                self.run_due_timers();
            }
        }
    }

    /// The socket table entry of `tunnel`'s socket.
    fn socket_of(&self, tunnel: TunnelId) -> Option<&Option<TunnelSocket>> {
        let slot = *self.tunnel_socket.get(usize::from(tunnel.0))?;
        self.sockets.get(usize::from(slot))
    }

    /// Send every control datagram the engine has queued: up to [`BATCH`] at a time into the
    /// control slots, then one `sendmmsg` per socket (in order per tunnel, as [`flush_batch`]
    /// sends data). Never blocks: the sockets are non-blocking, so a cookie reply to an address
    /// whose neighbour never resolves cannot stall every tunnel by filling the send buffer; what
    /// a full buffer refuses is lost, as on a full link, and counted `send_queue_full` (the
    /// protocol retries handshakes and keepalives).
    fn flush_control(&mut self) {
        loop {
            let mut n = 0;
            while n < BATCH {
                let slot = &mut self.ctl.slots[n];
                let Some(t) = self.engine.poll_transmit(&mut slot.buf) else {
                    break;
                };
                if let Some(via) = t.via {
                    // An IKEv2 tunnel's port 500 (rare): straight out of the socket bound there.
                    let sock = self
                        .sockets
                        .iter()
                        .flatten()
                        .find(|s| s.fixed && s.bind == via);
                    if let Some(s) = sock {
                        match socket2::SockRef::from(&s.sock).send_to_with_flags(
                            &slot.buf[..t.len],
                            &t.dst.into(),
                            libc::MSG_DONTWAIT,
                        ) {
                            Ok(_) => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                self.engine.count_drops(DropReason::SendQueueFull, 1);
                            }
                            Err(e) => {
                                tracing::trace!(error = %e, dst = %t.dst, "control send failed");
                            }
                        }
                    }
                    continue;
                }
                slot.start = 0;
                slot.len = t.len;
                slot.addr = t.dst;
                slot.dest = SlotDest::Socket(t.tunnel.0);
                n += 1;
            }
            if n == 0 {
                return;
            }
            self.ctl.filled = n;
            let full = send_control(&mut self.sockets, &self.tunnel_socket, &mut self.ctl);
            self.count_queue_full(full);
            if n < BATCH {
                return;
            }
        }
    }

    /// Counts sealed datagrams a full socket send buffer refused.
    fn count_queue_full(&mut self, n: u64) {
        if n > 0 {
            self.engine.count_drops(DropReason::SendQueueFull, n);
        }
    }

    /// Drain engine events into logs, notify STATUS and the drill.
    fn handle_events(&mut self, now: Instant) {
        while let Some(ev) = self.engine.poll_event() {
            if let Some(d) = self.drill.as_mut() {
                d.on_event(&ev, now);
            }
            match &ev {
                Event::TunnelState {
                    connection: _,
                    tunnel,
                    from,
                    to,
                    cause,
                } => {
                    let (conn, name) = self.names(*tunnel);
                    tracing::info!(connection = %conn, tunnel = %name, from = from.as_str(), to = to.as_str(), cause = ?cause, "tunnel state changed");
                    self.status_dirty = true;
                    let ifname = self.ifaces.get(tunnel.0).map(|i| i.ifname().to_owned());
                    self.publish(|| Notice::State {
                        connection: conn,
                        tunnel: name,
                        from: from.as_str().to_owned(),
                        to: to.as_str().to_owned(),
                        cause: serde_json::to_value(cause)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        ifname,
                    });
                }
                Event::ActiveChanged {
                    connection,
                    from,
                    to,
                    reason,
                } => {
                    let conn = self.connection_name(connection.0);
                    let from = from
                        .map(|t| self.names(t).1)
                        .unwrap_or_else(|| "none".into());
                    let to = to.map(|t| self.names(t).1).unwrap_or_else(|| "none".into());
                    tracing::info!(connection = %conn, from = %from, to = %to, reason = reason.as_str(), "active tunnel switched");
                    self.status_dirty = true;
                    let some = |n: String| (n != "none").then_some(n);
                    self.publish(|| Notice::Switch {
                        connection: conn,
                        from: some(from),
                        to: some(to),
                        reason: reason.as_str().to_owned(),
                    });
                }
                Event::HandshakeCompleted {
                    tunnel,
                    initiator,
                    rekey,
                } => {
                    let (conn, name) = self.names(*tunnel);
                    tracing::info!(connection = %conn, tunnel = %name, initiator, rekey, "handshake completed");
                    self.publish(|| Notice::Handshake {
                        connection: conn,
                        tunnel: name,
                        initiator: *initiator,
                        rekey: *rekey,
                    });
                }
                Event::PeerEndpoint { tunnel, addr } => {
                    let (conn, name) = self.names(*tunnel);
                    tracing::info!(connection = %conn, tunnel = %name, peer = %addr, "peer endpoint learned");
                }
                Event::ProbeReply { .. } => {}
                Event::SaInstalled {
                    tunnel,
                    direction,
                    spi,
                    keylog,
                } => {
                    // Never log the key material: only the key-log file gets it.
                    let (conn, name) = self.names(*tunnel);
                    tracing::debug!(connection = %conn, tunnel = %name, direction = direction.as_str(), spi = format_args!("{spi:#010x}"), "SA installed");
                    self.write_keylog(*tunnel, *direction, *spi, keylog, &conn, &name);
                }
                Event::IkeSaInstalled {
                    tunnel,
                    spi_i,
                    spi_r,
                    keylog,
                } => {
                    let (conn, name) = self.names(*tunnel);
                    tracing::debug!(connection = %conn, tunnel = %name, spi_i = format_args!("{spi_i:016x}"), spi_r = format_args!("{spi_r:016x}"), "IKE SA installed");
                    if let Some(file) = self.keylog.as_mut() {
                        use std::io::Write as _;
                        let secs = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        let line = format!(
                            "{secs} {conn} {name} ike {spi_i:016x} {spi_r:016x} {keylog}\n"
                        );
                        if let Err(e) = file.write_all(line.as_bytes()) {
                            tracing::warn!(error = %e, "cannot write the key log");
                        }
                    }
                }
                Event::IkeFailed { tunnel, reason } => {
                    let (conn, name) = self.names(*tunnel);
                    tracing::warn!(connection = %conn, tunnel = %name, "IKE: {reason}");
                }
                other => tracing::debug!(event = ?other, "engine event"),
            }
        }
        // Cheap when nothing changed (no syscall): carriers follow states and pins.
        self.ifaces.sync_carrier(&self.engine);
        if let Some(d) = self.drill.as_mut() {
            if let Some(f) = self.ifaces.get(d.tunnel().0) {
                d.on_carrier(f.carrier(), now);
            }
        }
        if self.status_dirty {
            self.status_dirty = false;
            // ---- systemd notify hook: STATUS=<one-line summary> on every change. ----
            if let Some(n) = &self.notifier {
                if let Err(e) = n.status(&self.summary()) {
                    tracing::debug!(error = %e, "sd_notify STATUS failed");
                }
            }
        }
    }

    /// Hand an event to `tandem events` listeners and the hook runner. Never waits: the ring
    /// overwrites what a lagging listener has not read ([`EVENT_QUEUE`]), and with no listener
    /// the event is not even built.
    fn publish(&self, event: impl FnOnce() -> Notice) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let _ = self.events.send(EventRecord {
            unix_ms,
            event: event(),
        });
    }

    fn write_keylog(
        &mut self,
        tunnel: TunnelId,
        direction: Direction,
        spi: u32,
        key: &str,
        conn: &str,
        name: &str,
    ) {
        use std::io::Write as _;
        let local = self
            .socket_of(tunnel)
            .and_then(|s| s.as_ref())
            .and_then(|s| s.sock.local_addr().ok())
            .map(|a| a.ip());
        let remote = self.engine.tunnel_remote(tunnel).map(|a| a.ip());
        let (Some(file), Some(local), Some(remote)) = (self.keylog.as_mut(), local, remote) else {
            return;
        };
        let (src, dst) = match direction {
            Direction::In => (remote, local),
            Direction::Out => (local, remote),
        };
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let line = format!(
            "{secs} {conn} {name} {} {src} {dst} 0x{spi:08x} aes256gcm16 {key}\n",
            direction.as_str()
        );
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "cannot write the key log");
        }
    }

    fn names(&self, tunnel: TunnelId) -> (String, String) {
        self.engine
            .tunnels()
            .find(|(id, _)| *id == tunnel)
            .map(|(_, i)| (i.connection.clone(), i.name.clone()))
            .unwrap_or_else(|| ("?".into(), format!("#{}", tunnel.0)))
    }

    fn connection_name(&self, id: u16) -> String {
        self.engine
            .tunnels()
            .find(|(_, i)| i.connection_id.0 == id)
            .map(|(_, i)| i.connection.clone())
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// `prod-vpc: tunnel1 up (active), tunnel2 up` (one line, for STATUS=).
    pub fn summary(&self) -> String {
        let st = self.engine.status(Instant::now());
        let parts: Vec<String> = st
            .connections
            .iter()
            .map(|c| {
                let ts: Vec<String> = c
                    .tunnels
                    .iter()
                    .map(|t| {
                        let active = if c.active_tunnel.as_deref() == Some(t.name.as_str()) {
                            " (active)"
                        } else {
                            ""
                        };
                        format!("{} {}{}", t.name, t.state.as_str(), active)
                    })
                    .collect();
                format!("{}: {}", c.name, ts.join(", "))
            })
            .collect();
        if parts.is_empty() {
            "no connections".into()
        } else {
            parts.join("; ")
        }
    }

    /// Returns true on shutdown.
    fn on_commands(&mut self) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            let now = Instant::now();
            match cmd {
                Command::Status(reply) => {
                    let _ = reply.send(self.status_report(now));
                }
                Command::Metrics(reply) => {
                    let _ = reply.send(self.metrics(now));
                }
                Command::Failover {
                    connection,
                    target,
                    reply,
                } => {
                    let r = match self.engine.failover(&connection, target, now) {
                        Ok(()) => {
                            self.flush_control();
                            self.handle_events(now);
                            let st = self.engine.status(now);
                            let active = st
                                .connections
                                .iter()
                                .find(|c| c.name == connection)
                                .and_then(|c| c.active_tunnel.clone());
                            Reply::ok(Some(
                                serde_json::json!({ "connection": connection, "active_tunnel": active }),
                            ))
                        }
                        Err(e) => Reply::error(ErrorKind::User, e.to_string()),
                    };
                    let _ = reply.send(r);
                }
                Command::Reload {
                    cfg,
                    routes,
                    ifaces,
                    reply,
                } => {
                    let r = self.reload(*cfg, routes, &ifaces, now);
                    let _ = reply.send(r);
                }
                Command::Drill {
                    connection,
                    duration,
                    graceful,
                    reply,
                } => {
                    if self.drill.is_some() {
                        let _ =
                            reply.send(Reply::error(ErrorKind::User, "a drill is already running"));
                        continue;
                    }
                    let failback = self.connection_failback(&connection);
                    match Drill::start(
                        &mut self.engine,
                        &connection,
                        duration,
                        graceful,
                        failback,
                        reply,
                        now,
                    ) {
                        Ok(mut d) => {
                            if self.ifaces.get(d.tunnel().0).is_some() {
                                d.watch_routes();
                            }
                            let (tunnel, duration_ms) = (
                                d.tunnel_name().to_owned(),
                                u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                            );
                            self.publish(|| Notice::DrillStart {
                                connection: connection.clone(),
                                tunnel,
                                duration_ms,
                                graceful,
                            });
                            self.drill = Some(d);
                        }
                        Err((reply, e)) => {
                            let _ = reply.send(Reply::error(ErrorKind::User, e.to_string()));
                        }
                    }
                }
                Command::Shutdown => {
                    self.shutdown(now);
                    return true;
                }
            }
        }
        false
    }

    fn connection_failback(&self, connection: &str) -> Option<Duration> {
        self.engine
            .tunnels()
            .find(|(_, i)| i.connection == connection)
            .and_then(|(_, i)| {
                self.failback
                    .get(usize::from(i.connection_id.0))
                    .copied()
                    .flatten()
            })
    }

    fn reload(
        &mut self,
        cfg: EngineConfig,
        routes: Vec<IpNet>,
        ifaces: &[Option<IfaceSpec>],
        now: Instant,
    ) -> Reply {
        let failback: Vec<Option<Duration>> = cfg.connections.iter().map(|c| c.failback).collect();
        let new_mtu = cfg.mtu;
        if new_mtu > self.slot_mtu {
            return Reply::error(
                ErrorKind::User,
                format!(
                    "reload refused: mtu {new_mtu} exceeds {} (the buffers' size): restart the daemon",
                    self.slot_mtu
                ),
            );
        }
        // Bind what the new configuration needs before anything is committed: a socket that
        // cannot be bound refuses the reload and the running configuration stays as it was.
        let mut wanted = wanted_sockets(cfg.connections.iter().flat_map(|c| {
            c.tunnels
                .iter()
                .map(move |t| (format!("{}/{}", c.name, t.name), t.local, t.remote))
        }));
        add_ike_ports(
            &mut wanted,
            cfg.connections.iter().flat_map(|c| {
                c.tunnels.iter().map(move |t| {
                    (
                        format!("{}/{}", c.name, t.name),
                        t.ike.as_ref().and_then(|i| i.local_ike),
                        t.remote,
                    )
                })
            }),
        );
        let plan = match self.plan_sockets(&wanted) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "reload refused: socket setup failed");
                return Reply::error(ErrorKind::User, format!("reload refused: {e}"));
            }
        };
        let iface_plan = match self.ifaces.plan(ifaces, self.mtu, self.offload) {
            Ok(p) => p,
            Err((name, e)) => {
                tracing::error!(ifname = %name, error = %e, "reload refused: cannot create a tunnel interface");
                return Reply::error(
                    ErrorKind::User,
                    format!("reload refused: cannot create interface {name}: {e}"),
                );
            }
        };
        let summary = match self.engine.reconfigure(cfg, now) {
            Ok(s) => s,
            Err(e) => return Reply::error(ErrorKind::User, e.to_string()),
        };
        self.failback = failback;
        if new_mtu != self.mtu {
            match self.tun.set_mtu(new_mtu) {
                Ok(()) => {
                    tracing::info!(from = self.mtu, to = new_mtu, "TUN MTU changed");
                    self.mtu = new_mtu;
                    self.ifaces.set_mtu(new_mtu);
                }
                Err(e) => tracing::error!(error = %e, "reload: cannot set the TUN MTU"),
            }
        }
        if let Err(e) = self.install_sockets(plan, &wanted) {
            tracing::error!(error = %e, "reload: socket setup failed");
            return Reply::error(ErrorKind::Internal, e.to_string());
        }
        if let Err(e) = self.ifaces.install(iface_plan, &self.epoll) {
            tracing::error!(error = %e, "reload: tunnel interface setup failed");
            return Reply::error(ErrorKind::Internal, e.to_string());
        }
        if let Err(e) = self.sync_quiet() {
            tracing::error!(error = %e, "reload: event loop setup failed");
            return Reply::error(ErrorKind::Internal, e.to_string());
        }
        // The tunnel set may have changed: systemd's STATUS= line says so at the next turn.
        self.status_dirty = true;
        if let Err((r, e)) = self.sync_routes(routes) {
            tracing::error!(route = %r, error = %e, "reload: route install failed");
            return Reply::error(
                ErrorKind::Internal,
                format!("cannot install route {r}: {e}"),
            );
        }
        self.flush_control();
        self.handle_events(now);
        let name = |id: &TunnelId| self.names(*id);
        let fmt = |v: &[TunnelId]| {
            v.iter()
                .map(|i| {
                    let (c, t) = name(i);
                    format!("{c}/{t}")
                })
                .collect::<Vec<_>>()
        };
        let (kept, added, removed) = (
            fmt(&summary.kept),
            fmt(&summary.added),
            summary.removed.len(),
        );
        tracing::info!(kept = ?kept, added = ?added, removed, "configuration reloaded");
        Reply::ok(Some(
            serde_json::json!({ "kept": kept, "added": added, "removed": removed }),
        ))
    }

    fn shutdown(&mut self, now: Instant) {
        tracing::info!("shutting down: sending closing notices");
        self.engine.close(now);
        self.flush_control();
        self.handle_events(now);
    }

    /// The `tandem status --json` document (docs/cli.md "Status"): the engine's status, and per
    /// tunnel its interface, `ifname` and `carrier` (both `null` for a tunnel without one).
    /// The figures of a status call: the engine's, plus each tunnel interface's name and
    /// carrier. Copies only; [`StatusReport::to_json`] builds the document off this thread.
    fn status_report(&self, now: Instant) -> StatusReport {
        let ifaces = self
            .engine
            .tunnels()
            .filter_map(|(id, info)| {
                let f = self.ifaces.get(id.0)?;
                Some((
                    (info.connection.clone(), info.name.clone()),
                    (f.ifname().to_owned(), f.carrier()),
                ))
            })
            .collect();
        StatusReport {
            engine: self.engine.status(now),
            ifaces,
        }
    }

    fn metrics(&self, now: Instant) -> MetricsSnapshot {
        let st = self.engine.status(now);
        let mut tunnels = Vec::new();
        let mut by_name: HashMap<(&str, &str), (TunnelState, bool, Option<f64>)> = HashMap::new();
        for c in &st.connections {
            for t in &c.tunnels {
                let active = c.active_tunnel.as_deref() == Some(t.name.as_str());
                by_name.insert(
                    (c.name.as_str(), t.name.as_str()),
                    (t.state, active, t.rtt_ms),
                );
            }
        }
        for (id, info) in self.engine.tunnels() {
            let c = self.engine.tunnel_counters(id).copied().unwrap_or_default();
            let (state, active, rtt_ms) = by_name
                .get(&(info.connection.as_str(), info.name.as_str()))
                .copied()
                .unwrap_or((TunnelState::Connecting, false, None));
            tunnels.push(TunnelMetric {
                connection: info.connection.clone(),
                tunnel: info.name.clone(),
                up: state == TunnelState::Up,
                active,
                rx_bytes: c.rx_bytes,
                tx_bytes: c.tx_bytes,
                rx_packets: c.rx_packets,
                tx_packets: c.tx_packets,
                rtt_seconds: rtt_ms.map(|ms| ms / 1000.0),
                handshakes: c.handshakes,
                failovers: c.failovers,
                priority: info.priority,
            });
        }
        let drops = self
            .engine
            .drop_counters()
            .iter()
            .map(|(r, n)| (r.as_str(), n))
            .collect();
        MetricsSnapshot {
            tunnels,
            drops,
            timer_lateness: self.lateness,
        }
    }
}

/// One packet per read from `dev` into `batch`'s slots. Returns (slots filled, whether the TUN
/// may have more).
fn read_plain(dev: &tun_rs::SyncDevice, batch: &mut Batch) -> (usize, bool) {
    let head = tandem_engine::HEADROOM;
    let tail = tandem_engine::TAILROOM;
    let mut filled = 0;
    while filled < BATCH {
        let slot = &mut batch.slots[filled];
        let end = slot.buf.len() - tail;
        match dev.recv(&mut slot.buf[head..end]) {
            Ok(0) => break,
            Ok(len) => {
                slot.start = head;
                slot.len = len;
                filled += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (filled, false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "TUN read failed");
                return (filled, false);
            }
        }
    }
    (filled, true)
}

/// With offloads: each read from `dev` is one (super-)packet, split into MTU-size segments
/// straight into `batch`'s slots (checksums completed), through `tun_super` and `sizes`. Reads
/// stop while fewer than [`SEGMENT_RESERVE`] slots are free, so a split always finds room.
fn read_offload(
    dev: &tun_rs::SyncDevice,
    batch: &mut Batch,
    tun_super: &mut [u8],
    sizes: &mut [usize],
) -> (usize, bool) {
    let head = tandem_engine::HEADROOM;
    let mut filled = 0;
    let mut reads = 0;
    while BATCH - filled >= SEGMENT_RESERVE && reads < BATCH {
        reads += 1;
        let slots = &mut batch.slots[filled..];
        match dev.recv_multiple(tun_super, slots, &mut sizes[filled..], head) {
            Ok(n) => {
                let fresh = batch.slots[filled..filled + n].iter_mut();
                for (slot, &len) in fresh.zip(&sizes[filled..filled + n]) {
                    slot.start = head;
                    slot.len = len;
                    // tun-rs completes a checksum-offloaded packet's checksum, and writes a UDP
                    // one that computes to zero as zero (IPv6 receivers drop it).
                    if let Some(pkt) = slot.buf.get_mut(head..head + len) {
                        tandem_engine::inner::udp_zero_checksum_to_ones(pkt);
                    }
                }
                filled += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (filled, false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error().is_some() => {
                tracing::warn!(error = %e, "TUN read failed");
                return (filled, false);
            }
            // A malformed super-packet (bad header, no room to split): that packet is lost.
            Err(e) => tracing::debug!(error = %e, "TUN super-packet dropped"),
        }
    }
    (filled, true)
}

/// Writes one inner packet (`slot`) with `write`: with IFF_VNET_HDR every write starts with a
/// virtio-net header, an all-zero one (no GSO, checksums complete) written into the bytes just
/// before the packet.
fn write_inner(slot: &mut super::batch::Slot, vnet: bool, write: &mut impl FnMut(&[u8])) {
    write_inner_at(
        &mut slot.buf,
        slot.start..slot.start + slot.len,
        vnet,
        write,
    );
}

/// [`write_inner`] for the packet at `pkt` in `buf`.
fn write_inner_at(
    buf: &mut [u8],
    pkt: std::ops::Range<usize>,
    vnet: bool,
    write: &mut impl FnMut(&[u8]),
) {
    let start = if vnet {
        pkt.start.checked_sub(VIRTIO_NET_HDR_LEN)
    } else {
        Some(pkt.start)
    };
    if let (Some(start), true) = (start, pkt.end <= buf.len()) {
        if vnet {
            buf[start..pkt.start].fill(0);
        }
        write(&buf[start..pkt.end]);
    }
}

/// Which slots of a batch go out in one `sendmmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendGroup {
    /// Those of one tunnel, sent with UDP GSO: its run of sealed datagrams to one address
    /// stays together.
    Tunnel,
    /// Every one on the same socket, without GSO: the tunnels of a hub share one, so the
    /// keepalives of one timer wake-up (different addresses) are one system call.
    Socket,
}

/// Sends every slot of `batch` tagged `Socket(tunnel id)` on that tunnel's socket, one
/// `sendmmsg` per `group`, in slot order (so per-tunnel order is kept), and clears their tags;
/// per tunnel, runs to one address go as UDP GSO sends while the kernel takes them. Returns how many datagrams a full send buffer refused.
#[must_use]
fn send_to_sockets(
    sockets: &mut [Option<TunnelSocket>],
    tunnel_socket: &[u16],
    batch: &mut Batch,
    group: SendGroup,
) -> u64 {
    let socket_of = |dest: SlotDest| match dest {
        SlotDest::Socket(t) => tunnel_socket.get(usize::from(t)).copied(),
        _ => None,
    };
    let key = |dest: SlotDest| match (group, dest) {
        (SendGroup::Tunnel, SlotDest::Socket(t)) => Some(t),
        (SendGroup::Socket, d) => socket_of(d),
        _ => None,
    };
    let filled = batch.filled;
    let mut queue_full = 0u64;
    for i in 0..filled {
        let dest = batch.slots[i].dest;
        let Some(k) = key(dest) else {
            continue;
        };
        if let Some(Some(sock)) = socket_of(dest).and_then(|s| sockets.get_mut(usize::from(s))) {
            let slots = &batch.slots[..filled];
            let which = (i..filled).filter(|&j| key(slots[j].dest) == Some(k));
            let fd = sock.sock.as_raw_fd();
            let sent = if group == SendGroup::Tunnel {
                let was = sock.gso;
                let sent = sys::send_mmsg_gso(fd, slots, which, &mut sock.gso);
                if was && !sock.gso {
                    tracing::info!(
                        "UDP GSO refused by the kernel on this path; sending datagrams one by one"
                    );
                }
                sent
            } else {
                sys::send_mmsg(fd, slots, which)
            };
            queue_full += sent.queue_full as u64;
        }
        for slot in &mut batch.slots[i..filled] {
            if key(slot.dest) == Some(k) {
                slot.dest = SlotDest::None;
            }
        }
    }
    queue_full
}

/// Sends the control datagrams in `ctl` (slots tagged `Socket(tunnel id)`): one `sendmmsg` per
/// socket ([`SendGroup::Socket`]). Returns how many datagrams a full send buffer refused.
#[must_use]
fn send_control(
    sockets: &mut [Option<TunnelSocket>],
    tunnel_socket: &[u16],
    ctl: &mut Batch,
) -> u64 {
    let queue_full = send_to_sockets(sockets, tunnel_socket, ctl, SendGroup::Socket);
    for slot in &mut ctl.slots[..ctl.filled] {
        slot.dest = SlotDest::None;
    }
    ctl.filled = 0;
    queue_full
}

/// Write every slot tagged `Socket` to its socket (one `sendmmsg` per tunnel with UDP GSO, in
/// slot order: [`send_to_sockets`]) and every slot tagged `Tun` to the TUN (in order).
///
/// Returns how many sealed datagrams were dropped on a full socket send buffer (the caller
/// counts them as `send_queue_full`).
#[must_use]
fn flush_batch(
    tun: &tun_rs::SyncDevice,
    vnet: bool,
    mut gro: Option<&mut TunGro>,
    mut ifaces: Option<&mut Ifaces>,
    sockets: &mut [Option<TunnelSocket>],
    tunnel_socket: &[u16],
    batch: &mut Batch,
) -> u64 {
    // Sealed datagrams: one `sendmmsg` per tunnel, with GSO.
    let queue_full = send_to_sockets(sockets, tunnel_socket, batch, SendGroup::Tunnel);
    let mut write = |b: &[u8]| {
        if let Err(e) = tun.send(b) {
            tracing::trace!(error = %e, "TUN write failed");
        }
    };
    let filled = batch.filled;
    let mut i = 0;
    while i < filled {
        match batch.slots[i].dest {
            SlotDest::Tun => {
                let slot = &mut batch.slots[i];
                slot.dest = SlotDest::None;
                // TCP segments of one flow are coalesced (and written when the run ends).
                if let Some(g) = gro.as_deref_mut() {
                    if g.push(&slot.buf[slot.start..slot.start + slot.len], &mut write) {
                        i += 1;
                        continue;
                    }
                }
                write_inner(slot, vnet, &mut write);
            }
            SlotDest::Iface(t) => {
                let slot = &mut batch.slots[i];
                slot.dest = SlotDest::None;
                if let Some(f) = ifaces.as_deref_mut().and_then(|x| x.get_mut(t)) {
                    let dev = &f.dev;
                    let mut write = |b: &[u8]| {
                        if let Err(e) = dev.send(b) {
                            tracing::trace!(error = %e, "TUN write failed");
                        }
                    };
                    // Each interface coalesces its own flows (flushed below).
                    let pkt = &slot.buf[slot.start..slot.start + slot.len];
                    if !(f.vnet && f.gro.push(pkt, &mut write)) {
                        write_inner(slot, f.vnet, &mut write);
                    }
                }
            }
            SlotDest::Socket(_) | SlotDest::None => {}
        }
        i += 1;
    }
    if let Some(g) = gro {
        g.flush(&mut write);
    }
    if let Some(x) = ifaces {
        x.flush_gro();
    }
    batch.filled = 0;
    queue_full
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::unwrap_used)] // base instants; tests may panic
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Wake-ups that read only control datagrams, `gap` apart, starting at `t0`; returns
    /// whether the loop was holding after each.
    fn control_wakes(h: &mut ControlHold, t0: Instant, gap: Duration, n: u32) -> Vec<bool> {
        (1..=n)
            .map(|i| {
                let now = t0 + gap * i;
                h.after_wake(now, true, false);
                h.until(now).is_some()
            })
            .collect()
    }

    #[test]
    fn a_head_end_busy_with_keepalives_holds_them_and_data_ends_the_hold() {
        let t0 = Instant::now();
        let hold = Duration::from_micros(2500);
        let mut h = ControlHold::new(hold, t0);
        // 2400 control wake-ups a second (1000 tunnels): holding from the HOLD_STREAK-th on.
        let held = control_wakes(&mut h, t0, Duration::from_micros(400), 12);
        let first = held.iter().position(|&b| b).expect("never held");
        assert_eq!(first + 1, HOLD_STREAK as usize, "{held:?}");
        assert!(held[first..].iter().all(|&b| b), "{held:?}");
        // While holding, the wake-ups come once per hold: the streak goes on.
        let now = t0 + Duration::from_micros(400) * 12 + hold;
        h.after_wake(now, true, false);
        assert_eq!(h.until(now), Some(now + hold));
        // Data ends it at once.
        h.after_wake(now + MS, true, true);
        assert_eq!(h.until(now + MS), None);
        // A hold ends by itself once its time has passed.
        let later = now + 2 * MS;
        let _ = control_wakes(&mut h, later, Duration::from_micros(400), HOLD_STREAK);
        let end = later + Duration::from_micros(400) * HOLD_STREAK;
        assert!(h.until(end).is_some());
        assert_eq!(h.until(end + hold), None);
    }

    #[test]
    fn a_site_gateway_never_holds_and_a_zero_hold_never_holds() {
        let t0 = Instant::now();
        // Two tunnels at the default timers: ~9 keepalives a second in, ~110 ms apart; even
        // bunched at 10 ms they are never held.
        let mut h = ControlHold::new(Duration::from_micros(2500), t0);
        assert!(!control_wakes(&mut h, t0, 10 * MS, 100).contains(&true));
        let mut h = ControlHold::new(Duration::ZERO, t0);
        assert!(!control_wakes(&mut h, t0, Duration::from_micros(10), 100).contains(&true));
        // Wake-ups for timers or commands (no socket read) neither start nor extend a streak.
        let mut h = ControlHold::new(Duration::from_micros(2500), t0);
        for i in 1..100u32 {
            h.after_wake(t0 + Duration::from_micros(100) * i, false, false);
        }
        assert_eq!(h.until(t0 + 10 * MS), None);
    }

    fn udp() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    fn tunnel_socket(sock: UdpSocket) -> Option<TunnelSocket> {
        let bind = sock.local_addr().unwrap();
        Some(TunnelSocket {
            sock,
            bind,
            fixed: true,
            name: "c/t".into(),
            receiver: Receiver::Port(bind),
            gso: false,
            gro: false,
        })
    }

    #[test]
    fn control_datagrams_go_out_once_each_in_order_per_socket() {
        // Tunnels 0 and 2 share socket 0 (a hub's port), tunnel 1 has socket 1.
        let mut sockets = vec![tunnel_socket(udp()), tunnel_socket(udp())];
        let tunnel_socket_of = [0u16, 1, 0];
        let (peer_a, peer_b) = (udp(), udp());
        let mut ctl = Batch::new(tandem_engine::MAX_CONTROL_DATAGRAM);
        let plan: [(u16, &UdpSocket); 5] = [
            (0, &peer_a),
            (1, &peer_b),
            (2, &peer_a),
            (0, &peer_b),
            (1, &peer_b),
        ];
        for (i, (tunnel, peer)) in plan.iter().enumerate() {
            let slot = &mut ctl.slots[i];
            slot.buf[0] = i as u8;
            slot.start = 0;
            slot.len = 1;
            slot.addr = peer.local_addr().unwrap();
            slot.dest = SlotDest::Socket(*tunnel);
        }
        ctl.filled = plan.len();
        assert_eq!(send_control(&mut sockets, &tunnel_socket_of, &mut ctl), 0);
        assert_eq!(ctl.filled, 0);
        assert!(ctl.slots.iter().all(|s| s.dest == SlotDest::None));
        let recv = |peer: &UdpSocket, n: usize| {
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            for _ in 0..n {
                let (len, from) = peer.recv_from(&mut buf).unwrap();
                assert_eq!(len, 1);
                got.push((buf[0], from));
            }
            peer.set_nonblocking(true).unwrap();
            assert!(
                peer.recv_from(&mut buf).is_err(),
                "a datagram went out twice"
            );
            got
        };
        let s0 = sockets[0].as_ref().unwrap().sock.local_addr().unwrap();
        let s1 = sockets[1].as_ref().unwrap().sock.local_addr().unwrap();
        assert_eq!(recv(&peer_a, 2), [(0, s0), (2, s0)]);
        let mut b = recv(&peer_b, 3);
        // Across sockets the kernel may interleave; per socket the order is the slots'.
        b.sort_by_key(|(i, _)| *i);
        assert_eq!(b, [(1, s1), (3, s0), (4, s1)]);
    }
}
