//! One tunnel of an IKEv2 connection (docs/protocol.md, "IKEv2"): the `tandem-ike` state
//! machine drives the handshake and the Child SAs, this module installs them as the tunnel's ESP
//! SAs and keeps the tunnel's liveness, so the gateway's selector, failover, status and metrics
//! work as for a tandem-protocol tunnel.
//!
//! Flow of a received datagram (all on the NAT-T port, RFC 3948): the non-ESP marker then an IKE
//! message -> the IKE SA it belongs to (a peer's new IKE_SA_INIT gets a fresh responder SA that
//! replaces the current one only once it is authenticated); otherwise ESP: SPI -> inbound Child
//! SA -> `open` (replay pre-check, AEAD, replay commit in `tandem_crypto`) -> liveness.
//!
//! Invariants:
//! - **Liveness** is what the peer proves: an ESP packet that opened, or an authenticated IKE
//!   response (an answer to our empty INFORMATIONAL probe, a rekey, a delete) — the answer to a
//!   request of ours proves both directions. A probe goes out at every `dpd_interval` in which
//!   nothing authenticated arrived; if one is already in flight, its bytes are resent instead
//!   (RFC 7296 §2.1: the peer answers a duplicate from its cache). Up while the peer was heard
//!   within `dpd_timeout` and a Child SA is installed. Requests from the peer are answered but
//!   prove nothing by themselves (a replayed request gets its cached answer).
//! - **Make-before-break**: a new Child SA receives at once. When we initiated its rekey, the peer
//!   installed it before answering, so we send on it at once; when the peer initiated it, we send
//!   on it from the first packet that opens on it, or once the old one is deleted. The old inbound
//!   SA receives until its DELETE, and for a short grace period after it (packets in flight).
//! - A peer's DELETE of the IKE SA is the closing notice: the tunnel is Down at once.
//! - **The peer's NAT-T port** is followed from fresh, authenticated packets only (an ESP packet
//!   the replay window took, an IKE message the current IKE SA authenticated for the first time);
//!   the address never moves. A response goes where its request came from.
//! - Nothing here allocates on the data path (seal, open); IKE messages are rare and may.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use rand_core::Rng;
use tandem_crypto::esp::{
    self, InboundParams, NEXT_HEADER_DUMMY, NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, PeerIv, SeqMode,
};
use tandem_crypto::{InboundSa, OpenError, OutboundSa, SealError, Spi, WindowSize};
use tandem_ike::cookie::{Admission, AdmissionPolicy, CookieJar, Refused};
use tandem_ike::nat::{NON_ESP_MARKER, NatT, Transport};
use tandem_ike::wire::{ExchangeType, parse_header};
use tandem_ike::{ChildSa, Dropped, Event as IkeEvent, Failure, FirstChild, IkeSa, Psk, Role};

use crate::config::{ConnectionConfig, IkeProbe, IkeSettings, Protocol, TunnelConfig};
use crate::drop::DropReason;
use crate::ike_probe::{self, ProbeReply};
use crate::ring::Ring;
use crate::router::ConnectionId;
use crate::tunnel::{Ctx, Received};
use crate::tunnel_core::{self, TunnelCore};
use crate::types::{Direction, Event, Silence, StateCause, TunnelId, TunnelState};

/// Tuning: inbound Child SAs per tunnel: the current one, a rekey's new one, and one more for a
/// simultaneous rekey (RFC 7296 §2.8.1) before the redundant one is deleted.
const IKE_IN_SLOTS: usize = 4;
/// Tuning: a deleted inbound Child SA still opens packets for this long: the peer may have sent
/// on it just before it processed the DELETE, and an IPsec stack with separate IKE and ESP
/// threads (strongSwan's libipsec) may send such packets after its answer to the DELETE
/// (strongSwan itself keeps a rekeyed inbound SA 5 s for the same reason). Never used to send.
const RETIRED_INBOUND_GRACE: Duration = Duration::from_secs(5);
/// Tuning: drill probes queued per tunnel between two `poll_transmit` drains (drill probes run
/// at 1 ms; the daemon drains after every batch), as for tandem-protocol echoes.
const PROBE_QUEUE: usize = 8;
/// Tuning: a failed or refused IKE SA is tried again after this, doubling ...
const RETRY_BASE: Duration = Duration::from_secs(1);
/// ... up to this (a peer that refuses us is not asked more often).
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Tuning: new responder IKE SAs (a peer's IKE_SA_INIT we would answer with a DH) per second
/// before cookies are demanded (RFC 7296 §2.6). A peer starts one IKE SA at a time (two with an
/// INVALID_KE_PAYLOAD retry); more in one second means someone sends IKE_SA_INITs in its name.
const COOKIE_THRESHOLD: usize = 4;
/// Tuning: new responder IKE SAs per second at which even a request with a valid cookie is
/// refused: bounds the DH work of one tunnel under a flood from an on-path attacker (who can
/// read the cookies).
const MAX_RESPONDERS_PER_SECOND: usize = 16;
/// Tuning: once cookies were demanded, they stay demanded this long: a flood that pauses
/// cannot slip a request past the threshold at the start of each second and so replace the
/// legitimate peer's half-open IKE SA.
const COOKIE_HOLD: Duration = Duration::from_secs(10);

/// The cookie gate in front of a tunnel's responder IKE SAs: every IKE_SA_INIT request that
/// would create one passes [`CookieJar::admit`] first (ike/src/cookie.rs).
struct Gate {
    jar: CookieJar,
    /// Start of the current one-second window and responder SAs made in it.
    window: Instant,
    made: usize,
    /// Cookies are demanded until then.
    hold_until: Option<Instant>,
}

impl Gate {
    fn new(now: Instant, rng: &mut (impl rand_core::CryptoRng + ?Sized)) -> Self {
        Gate {
            jar: CookieJar::new(
                AdmissionPolicy {
                    threshold: COOKIE_THRESHOLD,
                    max_half_open: MAX_RESPONDERS_PER_SECOND,
                },
                now,
                rng,
            ),
            window: now,
            made: 0,
            hold_until: None,
        }
    }

    /// What to do with the IKE_SA_INIT request `msg` from `from` at `now`.
    fn admit(&mut self, msg: &[u8], from: IpAddr, now: Instant) -> Admission {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.made = 0;
        }
        if self.made >= COOKIE_THRESHOLD {
            self.hold_until = now.checked_add(COOKIE_HOLD);
        }
        let held = self.hold_until.is_some_and(|t| now < t);
        let load = if held {
            self.made.max(COOKIE_THRESHOLD)
        } else {
            self.made
        };
        let a = self.jar.admit(msg, from, load);
        if a == Admission::Admit {
            self.made += 1;
        }
        a
    }
}

/// Tuning: the IKE SA's responder rekeys this much later than its initiator, so that normally
/// only one end starts a rekey (a collision is still resolved, RFC 7296 §2.8.1).
fn responder_delay(lifetime: Duration) -> Duration {
    lifetime / 20
}
/// When the IKE SA's initiator rekeys: at nine tenths of the lifetime, leaving the rest for the
/// exchange and the responder's own attempt.
fn rekey_age(lifetime: Duration, role: Role) -> Duration {
    let base = lifetime / 10 * 9;
    match role {
        Role::Initiator => base,
        Role::Responder => base + responder_delay(lifetime),
    }
}

#[derive(Debug, Clone, Copy)]
enum Timer {
    /// Start (or retry) an IKE SA.
    Connect = 0,
    /// A liveness probe is due if nothing was heard.
    Probe = 1,
    /// The peer was last heard `dpd_timeout` ago: recompute the state.
    Dpd = 2,
    /// Rekey the Child SA.
    ChildRekey = 3,
    /// Rekey the IKE SA.
    IkeRekey = 4,
    /// A deleted inbound Child SA's grace period ends.
    Retire = 5,
    /// The cookie secret rotates.
    Cookie = 6,
}
const TIMER_COUNT: usize = 7;

impl From<Timer> for usize {
    fn from(t: Timer) -> usize {
        t as usize
    }
}

type Timers = tunnel_core::Timers<Timer, TIMER_COUNT>;

/// An inbound Child SA; `retire_at` once the Child SA is deleted (it then opens packets until
/// that time only).
struct InSa {
    sa: InboundSa,
    retire_at: Option<Instant>,
}

/// Where an IKE SA's exchange started (RFC 7296 §2.23): on the NAT-T port (every message
/// behind the non-ESP marker, to the tunnel's `remote`), or on the IKE port with this peer
/// address (IKE_SA_INIT there without a marker; later messages move to the NAT-T port once
/// NAT-D found a NAT or encapsulation is forced, see [`IkeSa::transport_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    NatT,
    Ike(SocketAddr),
}

impl Start {
    fn transport(self) -> Transport {
        match self {
            Start::NatT => Transport::NatT,
            Start::Ike(_) => Transport::Ike,
        }
    }
}

/// An IKE message to send: on the NAT-T port to the peer's endpoint (`remote`), on the NAT-T
/// port to this address (a response goes where its request came from, RFC 7296 §2.11), or on
/// the IKE port to this address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    NatT,
    NatTTo(SocketAddr),
    Ike(SocketAddr),
}

/// An outbound Child SA and the inbound SPI of the same Child SA.
struct OutSa {
    sa: OutboundSa,
    in_spi: u32,
    /// The ESP proposal negotiated for it (for status).
    proposal: tandem_ike::EspProposal,
}

/// One IKEv2 tunnel. See the module documentation.
pub(crate) struct IkeTunnel {
    core: TunnelCore,
    settings: IkeSettings,
    dpd_interval: Duration,
    dpd_timeout: Duration,
    /// What each IKE SA of this tunnel is made with.
    ike: tandem_ike::Config,
    /// While a message from the NAT-T port is handled: its source, where responses go.
    reply_to: Option<SocketAddr>,
    /// The IKE SA in use: established, or our attempt.
    sa: Option<IkeSa>,
    /// Where `sa`'s exchange started.
    sa_start: Start,
    /// A peer's IKE_SA_INIT we answered: replaces `sa` once authenticated.
    incoming: Option<IkeSa>,
    /// Where `incoming`'s exchange started.
    incoming_start: Start,
    /// Our port 500 (IKE_SA_INIT without the marker), when `local` was a bare address.
    local_ike: Option<SocketAddr>,
    /// The peer's port 500, where our IKE_SA_INIT goes, when `remote` was a bare address.
    remote_ike: Option<SocketAddr>,
    /// The cookie gate, made at the first IKE_SA_INIT request from the peer.
    gate: Option<Box<Gate>>,
    inbound: [Option<InSa>; IKE_IN_SLOTS],
    current: Option<OutSa>,
    /// A peer-initiated rekey's outbound SA, used from the first packet on its inbound SA.
    next: Option<OutSa>,
    /// The inbound SPI of the Child SA we are rekeying.
    rekeying: Option<u32>,
    last_rx: Option<Instant>,
    peer_closed: bool,
    heard: bool,
    timers: Timers,
    attempt: u32,
    /// IKE messages to send (without the marker), oldest first, and how each travels.
    out: VecDeque<(Route, Vec<u8>)>,
    /// Drill probe addresses (`None`: this tunnel sends no probes).
    probe: Option<IkeProbe>,
    /// Drill probes to send: (id, send time in ns since the engine's epoch).
    probes: Ring<(u64, u64), PROBE_QUEUE>,
    /// The negotiated IKE proposal of the current IKE SA.
    ike_proposal: Option<tandem_ike::IkeProposal>,
}

impl std::fmt::Debug for IkeTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IkeTunnel")
            .field("id", &self.core.id)
            .field("name", &self.core.cfg.name)
            .field("state", &self.core.state)
            .field("remote", &self.core.remote)
            .field("sa", &self.sa)
            .finish_non_exhaustive()
    }
}

fn ike_settings(conn_cfg: &ConnectionConfig) -> Option<&IkeSettings> {
    match &conn_cfg.protocol {
        Protocol::Ikev2(s) => Some(s),
        Protocol::Tandem => None,
    }
}

/// Whether `conn_cfg` is an IKEv2 connection whose tunnels this module drives.
pub(crate) fn is_ikev2(conn_cfg: &ConnectionConfig) -> bool {
    ike_settings(conn_cfg).is_some()
}

fn traffic_selectors(nets: &[ipnet::IpNet]) -> Vec<tandem_ike::TrafficSelector> {
    nets.iter()
        .map(|n| match n {
            ipnet::IpNet::V4(v4) => tandem_ike::ts::ipv4_prefix(v4.network(), v4.prefix_len()),
            ipnet::IpNet::V6(v6) => tandem_ike::ts::ipv6_prefix(v6.network(), v6.prefix_len()),
        })
        .collect()
}

fn unspecified_like(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// The readable reason of a failed IKE SA, for the log.
fn describe(f: &Failure) -> String {
    match f {
        Failure::NoProposalChosen { offered } => {
            format!(
                "no acceptable proposal: NO_PROPOSAL_CHOSEN answered; the peer offered {offered}"
            )
        }
        Failure::PeerNotify(n) => format!("the peer answered {n}"),
        Failure::AuthenticationFailed { reason } => {
            format!("AUTHENTICATION_FAILED: {reason}")
        }
        Failure::Timeout => "no answer from the peer after every retransmission".into(),
        Failure::HalfOpenExpired => "the peer never sent IKE_AUTH".into(),
        Failure::Protocol(why) => format!("protocol error: {why}"),
    }
}

fn open_drop(e: OpenError) -> DropReason {
    match e {
        OpenError::Replay(_) | OpenError::SeqLimit => DropReason::Replay,
        OpenError::BadTag => DropReason::Auth,
        _ => DropReason::Malformed,
    }
}

/// A response on the NAT-T port goes back where its request came from (`reply_to`, set while
/// a message from the NAT-T port is handled), whatever the peer's endpoint: RFC 7296 §2.11.
fn reply_route(r: Route, msg: &[u8], reply_to: Option<SocketAddr>) -> Route {
    match (r, reply_to) {
        (Route::NatT, Some(to)) if parse_header(msg).is_ok_and(|(h, _)| h.is_response()) => {
            Route::NatTTo(to)
        }
        _ => r,
    }
}

/// How a message `sa` handed out travels, for an exchange that started at `start`.
fn route(sa: &IkeSa, msg: &[u8], start: Start) -> Route {
    match (sa.transport_for(msg, start.transport()), start) {
        (Transport::Ike, Start::Ike(peer)) => Route::Ike(peer),
        _ => Route::NatT,
    }
}

fn ike_drop(e: Dropped) -> DropReason {
    match e {
        Dropped::Malformed(_) => DropReason::Malformed,
        Dropped::DecryptFailed => DropReason::Auth,
        _ => DropReason::Handshake,
    }
}

impl IkeTunnel {
    /// The protocol-independent part (name, config, state, endpoint, counters, silence).
    pub fn core(&self) -> &TunnelCore {
        &self.core
    }

    pub fn core_mut(&mut self) -> &mut TunnelCore {
        &mut self.core
    }

    /// A tunnel of the IKEv2 connection `conn_cfg`; `None` if the connection is not IKEv2 or
    /// the tunnel has no IKE settings (the config never builds such a tunnel).
    pub fn new(
        id: TunnelId,
        conn: ConnectionId,
        cfg: &TunnelConfig,
        conn_cfg: &ConnectionConfig,
        now: Instant,
    ) -> Option<Self> {
        let settings = ike_settings(conn_cfg)?.clone();
        let tike = cfg.ike.as_ref()?;
        let remote = cfg.remote;
        let nat_t = remote.map(|r| NatT {
            local: cfg
                .local
                .unwrap_or_else(|| SocketAddr::new(unspecified_like(r.ip()), r.port())),
            remote: r,
            force: true,
        });
        let ike = tandem_ike::Config {
            psk: Psk::new(tike.psk.to_vec()),
            local_id: tike.local_id.clone(),
            remote_id: tike.remote_id.clone(),
            ike_proposals: settings.proposals.clone(),
            esp_proposals: settings.esp_proposals.clone(),
            local_ts: traffic_selectors(&conn_cfg.local_subnets),
            remote_ts: traffic_selectors(&conn_cfg.remote_subnets),
            nat_t,
        };
        let mut t = IkeTunnel {
            core: TunnelCore::new(id, conn, cfg),
            dpd_interval: conn_cfg.dpd_interval.max(Duration::from_millis(1)),
            dpd_timeout: conn_cfg.dpd_timeout.max(Duration::from_millis(1)),
            ike,
            reply_to: None,
            sa: None,
            sa_start: Start::NatT,
            incoming: None,
            incoming_start: Start::NatT,
            local_ike: tike.local_ike,
            remote_ike: tike.remote_ike,
            gate: None,
            inbound: Default::default(),
            current: None,
            next: None,
            rekeying: None,
            last_rx: None,
            peer_closed: false,
            heard: false,
            timers: Timers::default(),
            attempt: 0,
            out: VecDeque::new(),
            probe: tike.probe,
            probes: Ring::default(),
            ike_proposal: None,
            settings,
        };
        if t.settings.initiate && t.core.remote.is_some() {
            t.timers.set(Timer::Connect, Some(now));
        }
        Some(t)
    }

    /// Whether the settings equal these (reload keeps such tunnels with their SAs).
    pub fn same_settings(&self, cfg: &TunnelConfig, conn_cfg: &ConnectionConfig) -> bool {
        self.core.cfg == *cfg
            && ike_settings(conn_cfg) == Some(&self.settings)
            && (self.dpd_interval, self.dpd_timeout)
                == (conn_cfg.dpd_interval, conn_cfg.dpd_timeout)
            && self.ike.local_ts == traffic_selectors(&conn_cfg.local_subnets)
            && self.ike.remote_ts == traffic_selectors(&conn_cfg.remote_subnets)
    }

    pub fn spi_in(&self) -> Option<u32> {
        self.current.as_ref().map(|c| c.in_spi)
    }

    pub fn spi_out(&self) -> Option<u32> {
        self.current.as_ref().map(|c| c.sa.spi().get())
    }

    /// The negotiated (IKE, ESP) proposals of the current IKE SA and Child SA, for status.
    pub fn proposals(&self) -> (Option<String>, Option<String>) {
        (
            self.sa
                .as_ref()
                .filter(|s| s.is_established())
                .and(self.ike_proposal)
                .map(|p| p.to_string()),
            self.current.as_ref().map(|c| c.proposal.to_string()),
        )
    }

    /// Queues drill probe `id` (sent at `timestamp`, ns since the engine's epoch); nothing when
    /// the tunnel has no probe addresses.
    pub fn queue_probe(&mut self, id: u64, timestamp: u64) {
        if self.probe.is_some() {
            self.probes.push((id, timestamp));
        }
    }

    /// (SPIi, SPIr, state) of the IKE SA for status.
    pub fn ike_status(&self) -> (Option<u64>, Option<u64>, &'static str) {
        match &self.sa {
            Some(sa) => (
                Some(sa.spi_i()).filter(|s| *s != 0),
                Some(sa.spi_r()).filter(|s| *s != 0),
                sa.state_name(),
            ),
            None => (None, None, "none"),
        }
    }

    pub fn inbound_spis(&self) -> impl Iterator<Item = u32> + '_ {
        self.inbound.iter().flatten().map(|s| s.sa.spi().get())
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let sa = self.sa.as_ref().and_then(IkeSa::poll_timeout);
        let inc = self.incoming.as_ref().and_then(IkeSa::poll_timeout);
        [self.timers.next(), sa, inc].into_iter().flatten().min()
    }

    fn hears(&self, now: Instant) -> bool {
        self.last_rx
            .is_some_and(|t| now.saturating_duration_since(t) < self.dpd_timeout)
    }

    fn heard_at(&mut self, now: Instant) {
        self.last_rx = Some(now);
        self.peer_closed = false;
    }

    fn backoff(&self, rng: &mut impl Rng) -> Duration {
        let base = RETRY_BASE
            .saturating_mul(1u32 << self.attempt.min(8))
            .min(RETRY_MAX);
        // Up to an eighth less: two ends that failed together do not retry in lockstep.
        let span = (base / 8).as_nanos() as u64;
        base - Duration::from_nanos(if span == 0 { 0 } else { rng.next_u64() % span })
    }

    /// Acts on due timers (the tunnel's and its IKE SAs'). The engine calls `refresh` after.
    pub fn handle_timeout(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        if let Some(sa) = self.sa.as_mut()
            && sa.poll_timeout().is_some_and(|t| t <= now)
        {
            sa.handle_timeout(now);
        }
        if let Some(sa) = self.incoming.as_mut()
            && sa.poll_timeout().is_some_and(|t| t <= now)
        {
            sa.handle_timeout(now);
        }
        if self.timers.due(Timer::Dpd, now) {
            self.timers.set(Timer::Dpd, None); // refresh() re-arms it
        }
        if self.timers.due(Timer::Retire, now) {
            self.retire_due(now, ctx);
        }
        if self.timers.due(Timer::Cookie, now)
            && let Some(g) = self.gate.as_mut()
        {
            g.jar.handle_timeout(now, ctx.rng);
            self.timers.set(Timer::Cookie, Some(g.jar.poll_timeout()));
        }
        if self.timers.due(Timer::Connect, now) {
            self.timers.set(Timer::Connect, None);
            self.connect(now, ctx);
        }
        if self.timers.due(Timer::Probe, now) {
            self.probe(now);
        }
        if self.timers.due(Timer::ChildRekey, now) {
            self.timers.set(Timer::ChildRekey, None);
            self.rekey_child(now, ctx);
        }
        if self.timers.due(Timer::IkeRekey, now) {
            self.timers.set(Timer::IkeRekey, None);
            if let Some(sa) = self.sa.as_mut().filter(|s| s.is_established()) {
                sa.rekey_ike(now, ctx.rng);
            }
        }
        self.drain(now, ctx);
    }

    /// The IKE SA config for an exchange that starts at `start` with the peer at `peer`: NAT-D
    /// hashes the addresses IKE_SA_INIT really travels between (RFC 7296 §2.23), so the peer
    /// sees only the NAT we fake (`force`), not one the port move would suggest.
    fn config_for(&self, start: Start, peer: Option<SocketAddr>) -> tandem_ike::Config {
        let mut cfg = self.ike.clone();
        if let Some(n) = cfg.nat_t.as_mut() {
            match (start, self.local_ike) {
                (Start::Ike(p), Some(l)) => {
                    n.local = l;
                    n.remote = p;
                }
                _ => {
                    if let Some(p) = peer {
                        n.remote = p;
                    }
                }
            }
        }
        cfg
    }

    /// Starts a new IKE SA as initiator, replacing whatever we had.
    fn connect(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        if self.core.is_silenced() || self.core.remote.is_none() {
            return;
        }
        self.drop_children(ctx);
        // RFC 7296 §2.23: start on port 500 when both ends are bare addresses, then move.
        self.sa_start = match (self.local_ike, self.remote_ike) {
            (Some(_), Some(peer)) => Start::Ike(peer),
            _ => Start::NatT,
        };
        let cfg = self.config_for(self.sa_start, self.core.remote);
        self.sa = Some(IkeSa::initiate(cfg, now, ctx.rng));
        self.attempt = self.attempt.saturating_add(1);
        // If this attempt fails silently (lost, or the peer is gone), try again.
        self.timers
            .set(Timer::Connect, now.checked_add(self.backoff(ctx.rng)));
        self.timers
            .set(Timer::Probe, now.checked_add(self.dpd_interval));
    }

    /// The liveness probe of one `dpd_interval`: nothing if the peer was heard in it.
    fn probe(&mut self, now: Instant) {
        self.timers
            .set(Timer::Probe, now.checked_add(self.dpd_interval));
        if self.core.is_silenced() {
            return;
        }
        let quiet = self
            .last_rx
            .is_none_or(|t| now.saturating_duration_since(t) >= self.dpd_interval);
        let Some(sa) = self.sa.as_mut().filter(|s| s.is_established()) else {
            return;
        };
        if quiet && !sa.resend_request() {
            sa.send_liveness(now);
        }
    }

    fn rekey_child(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        if self.rekeying.is_some() {
            return;
        }
        let Some(spi) = self.current.as_ref().map(|c| c.in_spi) else {
            return;
        };
        if let Some(sa) = self.sa.as_mut().filter(|s| s.is_established())
            && sa.rekey_child(now, spi, ctx.rng)
        {
            self.rekeying = Some(spi);
        }
    }

    /// Moves the IKE SAs' output to `out` and acts on their events.
    fn drain(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        loop {
            let mut progressed = false;
            if let Some(sa) = self.incoming.as_mut() {
                while let Some(d) = sa.poll_transmit() {
                    let r = reply_route(route(sa, &d, self.incoming_start), &d, self.reply_to);
                    self.out.push_back((r, d));
                }
                if let Some(e) = sa.poll_event() {
                    progressed = true;
                    self.on_incoming_event(e, now, ctx);
                }
            }
            if let Some(sa) = self.sa.as_mut() {
                while let Some(d) = sa.poll_transmit() {
                    let r = reply_route(route(sa, &d, self.sa_start), &d, self.reply_to);
                    self.out.push_back((r, d));
                }
                if let Some(e) = sa.poll_event() {
                    progressed = true;
                    self.on_event(e, now, ctx);
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn on_incoming_event(&mut self, e: IkeEvent, now: Instant, ctx: &mut Ctx<'_>) {
        match e {
            IkeEvent::Established(_) => {
                // The peer's new IKE SA is authenticated: it replaces ours (the peer restarted,
                // reauthenticated, or it initiated first). Its event is handled as the current
                // SA's. The old Child SAs still open what the peer sent on them before it
                // switched (a make-before-break reauthentication), for the grace period.
                self.retire_children(now);
                self.sa = self.incoming.take();
                self.sa_start = self.incoming_start;
                self.on_event(e, now, ctx);
            }
            IkeEvent::Failed(f) => {
                self.incoming = None;
                ctx.events.push_back(Event::IkeFailed {
                    tunnel: self.core.id,
                    reason: describe(&f),
                });
            }
            _ => {}
        }
    }

    fn on_event(&mut self, e: IkeEvent, now: Instant, ctx: &mut Ctx<'_>) {
        match e {
            IkeEvent::Established(est) => {
                self.heard_at(now);
                self.attempt = 0;
                self.timers.set(Timer::Connect, None);
                self.keylog_ike(est.spi_i, est.spi_r, &est.keys, ctx);
                self.ike_proposal = Some(est.proposal);
                let lifetime = self.settings.ike_lifetime;
                self.timers.set(
                    Timer::IkeRekey,
                    now.checked_add(rekey_age(lifetime, est.role)),
                );
                self.timers
                    .set(Timer::Probe, now.checked_add(self.dpd_interval));
                match est.child {
                    FirstChild::Created(child) => {
                        let rekey = self.current.is_some();
                        self.install(&child, true, now, ctx);
                        self.completed(est.role == Role::Initiator, rekey, now, ctx);
                    }
                    FirstChild::Refused(n) => ctx.events.push_back(Event::IkeFailed {
                        tunnel: self.core.id,
                        reason: format!(
                            "the IKE SA is up but its Child SA was refused: {n} (traffic selectors or ESP proposals differ)"
                        ),
                    }),
                }
            }
            IkeEvent::Failed(f) => {
                ctx.events.push_back(Event::IkeFailed {
                    tunnel: self.core.id,
                    reason: describe(&f),
                });
                self.lost_ike_sa(now, ctx);
            }
            IkeEvent::Alive => self.heard_at(now),
            IkeEvent::ChildRekeyed {
                old_inbound_spi,
                new,
            } => {
                self.heard_at(now);
                let ours = self.rekeying == Some(old_inbound_spi);
                if ours {
                    self.rekeying = None;
                }
                self.install(&new, ours, now, ctx);
                self.completed(ours, true, now, ctx);
            }
            IkeEvent::ChildDeleted { inbound_spi } => {
                self.heard_at(now);
                self.retire_inbound(inbound_spi, now);
                if self
                    .current
                    .as_ref()
                    .is_some_and(|c| c.in_spi == inbound_spi)
                {
                    self.current = self.next.take();
                }
                if self.next.as_ref().is_some_and(|c| c.in_spi == inbound_spi) {
                    self.next = None;
                }
                if self.rekeying == Some(inbound_spi) {
                    self.rekeying = None;
                }
            }
            IkeEvent::IkeRekeyed {
                spi_i,
                spi_r,
                keys,
                proposal,
            } => {
                self.heard_at(now);
                self.ike_proposal = Some(proposal);
                self.keylog_ike(spi_i, spi_r, &keys, ctx);
                let role = self.sa.as_ref().map_or(Role::Initiator, IkeSa::role);
                self.timers.set(
                    Timer::IkeRekey,
                    now.checked_add(rekey_age(self.settings.ike_lifetime, role)),
                );
            }
            IkeEvent::Closed => {
                // The peer deleted the IKE SA (its closing notice), or our own close finished.
                self.peer_closed = true;
                self.last_rx = None;
                self.lost_ike_sa(now, ctx);
            }
        }
    }

    /// The IKE SA is gone: so are its Child SAs; an initiator starts over after a backoff.
    fn lost_ike_sa(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        self.sa = None;
        self.drop_children(ctx);
        self.timers.set(Timer::ChildRekey, None);
        self.timers.set(Timer::IkeRekey, None);
        if self.settings.initiate && !self.core.is_silenced() {
            self.timers
                .set(Timer::Connect, now.checked_add(self.backoff(ctx.rng)));
        }
    }

    /// Every inbound Child SA opens packets for [`RETIRED_INBOUND_GRACE`] more, then goes;
    /// nothing is sent on them.
    fn retire_children(&mut self, now: Instant) {
        let at = now.checked_add(RETIRED_INBOUND_GRACE);
        for s in self.inbound.iter_mut().flatten() {
            if s.retire_at.is_none() {
                s.retire_at = at;
            }
        }
        self.arm_retire();
        self.current = None;
        self.next = None;
        self.rekeying = None;
    }

    fn drop_children(&mut self, ctx: &mut Ctx<'_>) {
        for slot in &mut self.inbound {
            if let Some(s) = slot.take() {
                ctx.spis.remove(&s.sa.spi().get());
            }
        }
        self.current = None;
        self.next = None;
        self.rekeying = None;
    }

    /// A deleted Child SA's inbound side: kept for [`RETIRED_INBOUND_GRACE`], then removed.
    fn retire_inbound(&mut self, spi: u32, now: Instant) {
        let at = now.checked_add(RETIRED_INBOUND_GRACE);
        for s in self.inbound.iter_mut().flatten() {
            if s.sa.spi().get() == spi {
                s.retire_at = at;
            }
        }
        self.arm_retire();
    }

    fn arm_retire(&mut self) {
        let next = self
            .inbound
            .iter()
            .flatten()
            .filter_map(|s| s.retire_at)
            .min();
        self.timers.set(Timer::Retire, next);
    }

    fn retire_due(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        for slot in &mut self.inbound {
            if let Some(s) = slot.take_if(|s| s.retire_at.is_some_and(|t| t <= now)) {
                ctx.spis.remove(&s.sa.spi().get());
            }
        }
        self.arm_retire();
    }

    /// Installs a Child SA: its inbound side at once; its outbound side now (`send_now`) or
    /// once the peer is seen using it.
    fn install(&mut self, child: &ChildSa, send_now: bool, now: Instant, ctx: &mut Ctx<'_>) {
        let (Some(in_spi), Some(out_spi)) =
            (Spi::new(child.inbound_spi), Spi::new(child.outbound_spi))
        else {
            return;
        };
        let params = InboundParams {
            seq: SeqMode::Bits32,
            window: WindowSize::new(self.settings.replay_window).unwrap_or_default(),
            peer_iv: PeerIv::Any,
        };
        let inbound = InboundSa::with_params(in_spi, child.inbound.clone(), params);
        let outbound = OutboundSa::with_mode(out_spi, child.outbound.clone(), SeqMode::Bits32);
        if ctx.keylog {
            ctx.events.push_back(Event::SaInstalled {
                tunnel: self.core.id,
                direction: Direction::In,
                spi: in_spi.get(),
                keylog: inbound.keys().keylog_hex(),
            });
            ctx.events.push_back(Event::SaInstalled {
                tunnel: self.core.id,
                direction: Direction::Out,
                spi: out_spi.get(),
                keylog: outbound.keys().keylog_hex(),
            });
        }
        // A free slot, else the oldest that is neither sending's pair nor the next one's.
        let keep = [
            self.current.as_ref().map(|c| c.in_spi),
            self.next.as_ref().map(|c| c.in_spi),
        ];
        let idx = self
            .inbound
            .iter()
            .position(Option::is_none)
            .or_else(|| {
                self.inbound.iter().position(|s| {
                    s.as_ref()
                        .is_some_and(|s| !keep.contains(&Some(s.sa.spi().get())))
                })
            })
            .unwrap_or(0);
        if let Some(old) = self.inbound[idx].take() {
            ctx.spis.remove(&old.sa.spi().get());
        }
        ctx.spis.insert(in_spi.get(), self.core.id);
        self.inbound[idx] = Some(InSa {
            sa: inbound,
            retire_at: None,
        });
        self.arm_retire();
        let out = OutSa {
            sa: outbound,
            in_spi: in_spi.get(),
            proposal: child.proposal,
        };
        if send_now || self.current.is_none() {
            self.current = Some(out);
        } else {
            self.next = Some(out);
        }
        let role = self.sa.as_ref().map_or(Role::Initiator, IkeSa::role);
        self.timers.set(
            Timer::ChildRekey,
            now.checked_add(rekey_age(self.settings.child_lifetime, role)),
        );
    }

    fn completed(&mut self, initiator: bool, rekey: bool, now: Instant, ctx: &mut Ctx<'_>) {
        self.core.counters.handshakes += 1;
        self.core.counters.last_handshake_unix = Some(ctx.unix_at(now).as_secs());
        ctx.events.push_back(Event::HandshakeCompleted {
            tunnel: self.core.id,
            initiator,
            rekey,
        });
    }

    fn keylog_ike(&self, spi_i: u64, spi_r: u64, keys: &tandem_ike::IkeKeys, ctx: &mut Ctx<'_>) {
        if !ctx.keylog {
            return;
        }
        ctx.events.push_back(Event::IkeSaInstalled {
            tunnel: self.core.id,
            spi_i,
            spi_r,
            keylog: format!(
                "aes256gcm16 {} {}",
                keys.sk_ei.keylog_hex(),
                keys.sk_er.keylog_hex()
            ),
        });
    }

    /// A datagram that starts with the non-ESP marker: an IKE message from `from` on the
    /// NAT-T port.
    pub fn handle_ike(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), DropReason> {
        let msg = datagram
            .strip_prefix(&NON_ESP_MARKER[..])
            .ok_or(DropReason::Malformed)?;
        self.reply_to = Some(from);
        let r = self.handle_ike_message(from, msg, Start::NatT, now, ctx);
        self.reply_to = None;
        r
    }

    /// A datagram on our IKE port (500): an IKE message without a marker from `from`.
    pub fn handle_ike_plain(
        &mut self,
        from: SocketAddr,
        msg: &[u8],
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), DropReason> {
        if self.local_ike.is_none() {
            return Err(DropReason::Handshake);
        }
        self.handle_ike_message(from, msg, Start::Ike(from), now, ctx)
    }

    fn handle_ike_message(
        &mut self,
        from: SocketAddr,
        msg: &[u8],
        start: Start,
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), DropReason> {
        if self.core.remote.map(|r| r.ip()) != Some(from.ip()) {
            // IKE is spoken only with the configured peer.
            return Err(DropReason::Handshake);
        }
        let (h, _) = parse_header(msg).map_err(|_| DropReason::Malformed)?;
        let new_peer_sa = h.exchange == ExchangeType::IkeSaInit && !h.is_response() && h.spi_r == 0;
        let to_incoming = if new_peer_sa {
            if self.incoming.as_ref().is_none_or(|s| s.spi_i() != h.spi_i) {
                // A new responder SA costs a DH: the cookie gate first (RFC 7296 §2.6).
                if self.gate.is_none() {
                    let g = Gate::new(now, ctx.rng);
                    self.timers.set(Timer::Cookie, Some(g.jar.poll_timeout()));
                    self.gate = Some(Box::new(g));
                }
                let admission = match self.gate.as_mut() {
                    Some(g) => g.admit(msg, from.ip(), now),
                    None => Admission::Drop(Refused::NotInit),
                };
                match admission {
                    Admission::Admit => {}
                    Admission::Cookie(reply) => {
                        let route = match start {
                            Start::Ike(peer) => Route::Ike(peer),
                            Start::NatT => Route::NatTTo(from),
                        };
                        self.out.push_back((route, reply));
                        return Err(DropReason::IkeCookie);
                    }
                    Admission::Drop(Refused::Full) => return Err(DropReason::IkeHalfOpen),
                    Admission::Drop(Refused::NotInit) => return Err(DropReason::Malformed),
                }
                self.incoming = Some(IkeSa::respond(self.config_for(start, Some(from))));
            }
            self.incoming_start = start;
            true
        } else {
            self.incoming.as_ref().is_some_and(|s| s.spi_i() == h.spi_i)
        };
        let target = if to_incoming {
            self.incoming.as_mut()
        } else {
            self.sa.as_mut()
        };
        let Some(sa) = target else {
            self.drain(now, ctx);
            return Err(DropReason::Handshake);
        };
        let before = (sa.spi_i(), sa.fresh_peer_messages());
        let r = sa.handle_datagram(now, msg, ctx.rng).map_err(ike_drop);
        self.drain(now, ctx);
        // Fresh and authenticated on the SA now in use (a peer's new IKE SA once its IKE_AUTH
        // made it current): the peer sends from `from`.
        let proved = self.sa.as_ref().is_some_and(|s| {
            s.is_established() && s.spi_i() == before.0 && s.fresh_peer_messages() > before.1
        });
        if proved && start == Start::NatT {
            self.follow(from, ctx);
        }
        r
    }

    /// The peer was proved to send from `from` on the NAT-T port: a NAT in front of it may
    /// have moved it to another port, and we follow it there (RFC 7296 §2.23). Only ports
    /// move: IKE is spoken with the configured address alone.
    fn follow(&mut self, from: SocketAddr, ctx: &mut Ctx<'_>) {
        if self
            .core
            .remote
            .is_some_and(|r| r.ip() == from.ip() && r != from)
        {
            self.core.remote = Some(from);
            ctx.events.push_back(Event::PeerEndpoint {
                tunnel: self.core.id,
                addr: from,
            });
        }
    }

    /// An ESP datagram at `buf[range]` from `from`.
    pub fn handle_esp(
        &mut self,
        from: SocketAddr,
        buf: &mut [u8],
        range: Range<usize>,
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<Received, DropReason> {
        let len = range.len() as u64;
        let spi = esp::peek_spi(&buf[range.clone()]).ok_or(DropReason::Malformed)?;
        let slot = self
            .inbound
            .iter_mut()
            .flatten()
            .find(|s| s.sa.spi().get() == spi)
            .ok_or(DropReason::UnknownSpi)?;
        let opened = slot.sa.open(buf, range).map_err(open_drop)?;
        // Authenticated and fresh (the replay window took it) from here on.
        self.heard_at(now);
        self.follow(from, ctx);
        self.core.counters.rx_packets += 1;
        self.core.counters.rx_bytes += len;
        if self.next.as_ref().is_some_and(|n| n.in_spi == spi) {
            // The peer sends on the Child SA it made: it has installed it, we may send on it.
            self.current = self.next.take();
        }
        match opened.next_header {
            NEXT_HEADER_IPV4 | NEXT_HEADER_IPV6 => {
                let Some(addrs) = self.probe.as_ref() else {
                    return Ok(Received::Inner(opened.payload, opened.next_header));
                };
                match ike_probe::match_reply(&buf[opened.payload.clone()], addrs) {
                    ProbeReply::NotOurs => Ok(Received::Inner(opened.payload, opened.next_header)),
                    ProbeReply::Ours { id, timestamp } => {
                        let sent = ctx.epoch.checked_add(Duration::from_nanos(timestamp));
                        let rtt = sent.map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
                        ctx.events.push_back(Event::ProbeReply {
                            connection: self.core.conn,
                            tunnel: self.core.id,
                            id,
                            rtt,
                        });
                        Ok(Received::Consumed)
                    }
                    ProbeReply::Malformed => Err(DropReason::Malformed),
                }
            }
            NEXT_HEADER_DUMMY => Ok(Received::Consumed),
            _ => Err(DropReason::Malformed),
        }
    }

    /// Recomputes the state at `now`; returns the change, if any.
    pub fn refresh(&mut self, now: Instant) -> Option<(TunnelState, TunnelState, StateCause)> {
        let hears = self.hears(now);
        self.heard = hears;
        self.timers.set(
            Timer::Dpd,
            self.last_rx
                .filter(|_| hears)
                .and_then(|t| t.checked_add(self.dpd_timeout)),
        );
        let established = self.sa.as_ref().is_some_and(IkeSa::is_established);
        let new = if self.core.silence == Silence::Graceful {
            TunnelState::AdminDown
        } else if hears && established && self.current.is_some() {
            TunnelState::Up
        } else if self.core.ever_up {
            TunnelState::Down
        } else {
            TunnelState::Connecting
        };
        if new == self.core.state {
            return None;
        }
        let old = self.core.state;
        self.core.state = new;
        if new == TunnelState::Up {
            self.core.ever_up = true;
        }
        let cause = match new {
            TunnelState::Up => StateCause::Liveness,
            TunnelState::AdminDown => StateCause::Admin,
            _ if old == TunnelState::AdminDown => StateCause::AdminRestore,
            _ if self.peer_closed => StateCause::PeerClosing,
            _ => StateCause::DpdTimeout,
        };
        Some((old, new, cause))
    }

    /// Seals an inner packet in place for sending.
    pub fn seal_data(
        &mut self,
        buf: &mut [u8],
        packet: Range<usize>,
        next_header: u8,
        now: Instant,
    ) -> Result<(SocketAddr, Range<usize>), DropReason> {
        if self.core.is_silenced() {
            return Err(DropReason::Silenced);
        }
        let dst = self.core.remote.ok_or(DropReason::NoTunnel)?;
        let cur = self.current.as_mut().ok_or(DropReason::NoTunnel)?;
        match cur.sa.seal(buf, packet, next_header) {
            Ok(s) => {
                if s.rekey_due && self.rekeying.is_none() {
                    self.timers.set(Timer::ChildRekey, Some(now));
                }
                self.core.counters.tx_packets += 1;
                self.core.counters.tx_bytes += s.datagram.len() as u64;
                Ok((dst, s.datagram))
            }
            Err(SealError::Exhausted) => {
                if self.rekeying.is_none() {
                    self.timers.set(Timer::ChildRekey, Some(now));
                }
                Err(DropReason::SaExpired)
            }
            Err(_) => Err(DropReason::Malformed),
        }
    }

    /// Writes the next IKE message into `buf`: its destination, length, and the local address
    /// to send it from when that is our IKE port rather than the tunnel's socket. On the NAT-T
    /// port it goes behind the non-ESP marker, on the IKE port as is. With no IKE message
    /// waiting, the next drill probe, sealed into the current Child SA.
    pub fn poll_transmit(
        &mut self,
        buf: &mut [u8],
        now: Instant,
    ) -> Option<(SocketAddr, usize, Option<SocketAddr>)> {
        let remote = self.core.remote?;
        if self.core.silence == Silence::Silent {
            self.out.clear();
            self.probes.clear();
            return None;
        }
        while let Some((route, msg)) = self.out.pop_front() {
            let (dst, marker, via) = match route {
                Route::NatT => (remote, &NON_ESP_MARKER[..], None),
                Route::NatTTo(to) => (to, &NON_ESP_MARKER[..], None),
                Route::Ike(peer) => match self.local_ike {
                    Some(l) => (peer, &[][..], Some(l)),
                    None => continue,
                },
            };
            let len = marker.len() + msg.len();
            // A message too big for the buffer is not sent (IKE fragmentation is not offered).
            if let Some(b) = buf.get_mut(..len) {
                b[..marker.len()].copy_from_slice(marker);
                b[marker.len()..].copy_from_slice(&msg);
                return Some((dst, len, via));
            }
        }
        while let Some((id, timestamp)) = self.probes.pop() {
            if self.core.is_silenced() {
                continue;
            }
            let addrs = self.probe?;
            let packet = ike_probe::write_request(buf, esp::HEADROOM, &addrs, id, timestamp)?;
            let nh = if addrs.source.is_ipv4() {
                NEXT_HEADER_IPV4
            } else {
                NEXT_HEADER_IPV6
            };
            // A probe that cannot be sealed (no Child SA yet, SA spent) is a lost probe.
            if let Ok((to, datagram)) = self.seal_data(buf, packet, nh, now) {
                debug_assert_eq!(datagram.start, 0);
                return Some((to, datagram.end, None));
            }
        }
        None
    }

    /// Test hook: jumps the current outbound SA's send counter.
    pub fn set_send_counter_for_testing(&mut self, seq: u64) {
        if let Some(c) = self.current.as_mut() {
            c.sa.set_next_seq_for_testing(seq);
        }
    }

    /// Drill / admin silence. `Graceful` deletes the IKE SA (the peer's closing notice).
    pub fn set_silence(&mut self, mode: Silence, now: Instant, ctx: &mut Ctx<'_>) {
        match mode {
            Silence::Off => {
                if self.core.silence != Silence::Off {
                    let was = self.core.silence;
                    self.core.silence = Silence::Off;
                    self.last_rx = None;
                    if was == Silence::Graceful || self.sa.is_none() {
                        self.lost_ike_sa(now, ctx);
                        if self.settings.initiate {
                            self.attempt = 0;
                            self.timers.set(Timer::Connect, Some(now));
                        }
                    } else {
                        // The peer may still hold the IKE SA: probe it at once.
                        self.timers.set(Timer::Probe, Some(now));
                    }
                }
            }
            Silence::Silent => {
                self.core.silence = mode;
                self.out.clear();
            }
            Silence::Graceful => {
                self.out.clear();
                if self.core.silence == Silence::Off
                    && let Some(sa) = self.sa.as_mut().filter(|s| s.is_established())
                {
                    sa.close(now);
                    while let Some(d) = sa.poll_transmit() {
                        self.out.push_back((route(sa, &d, self.sa_start), d));
                    }
                }
                self.core.silence = mode;
                self.timers.set(Timer::Connect, None);
            }
        }
    }

    /// Shutdown: delete the IKE SA, then silence.
    pub fn close(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        self.set_silence(Silence::Graceful, now, ctx);
    }
}
