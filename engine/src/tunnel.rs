//! One tunnel (one path of a connection) of the tandem protocol: Noise handshake driving, SAs,
//! keepalives/DPD, liveness. IKEv2 tunnels are `ike_tunnel`'s; `any_tunnel` puts both behind one
//! interface for the gateway.
//!
//! Flow of a received datagram: handshake marker -> handshake message (responder / initiator),
//! or ESP: SPI -> inbound SA (up to [`IN_SLOTS`] confirmed ones, plus the one unconfirmed SA of
//! the latest answered initiation) -> `open` (replay pre-check, AEAD, replay commit, all in
//! `tandem_crypto`) -> only then: liveness time, roaming, key confirmation, liveness message.
//! docs/protocol.md describes the protocol this drives.
//!
//! Invariants:
//! - **Liveness is bidirectional** (BFD-like): Up only while we received an authenticated packet
//!   within `dpd_timeout` AND the peer's latest liveness message says it hears us. Every liveness
//!   message carries our view; keepalives go out at least once per `dpd_interval` on every
//!   tunnel, standby included ([`keepalives_per_interval`], more often while the peer is
//!   overdue), and a change of view is sent at once, so a one-way cut takes both ends Down
//!   within `dpd_timeout` + one `dpd_interval`.
//! - **Only proven packets count as hearing the peer**: an ESP packet that opened, or a handshake
//!   response to our own initiation. An initiation proves nothing by itself (it may be a replay of
//!   one withheld earlier), so answering one commits nothing: its SAs stay *unconfirmed* until the
//!   first packet opens on the new inbound SA (key confirmation). Only then are the initiation's
//!   timestamp (the replay high-water mark), the peer's endpoint, its liveness and the new
//!   outbound SA taken, and the handshake reported complete.
//! - **SAs, make-before-break**: an initiator switches its outbound SA as soon as the response
//!   authenticates (the responder's inbound SA is ready since it sent it). A responder sends on
//!   the new keys only after key confirmation, so never on keys the initiator may not hold. Old
//!   inbound SAs stay until [`REJECT_AFTER_TIME`], so nothing in flight is lost at a rekey, and
//!   the inbound SA the peer is currently sending on is never evicted for a newer one.
//! - **Simultaneous initiations** are both accepted: each handshake yields an independent SA pair
//!   with receiver-chosen SPIs and fresh keys; each side sends on the newest confirmed one and
//!   receives on all of them. No tie-break is needed and none can deadlock.
//! - **Nothing an injector sends cancels a handshake**: a cookie reply is stored for the next
//!   retry only (the pending initiation stays, the retry timer is untouched); a response is
//!   considered only from the address the initiation went to, and at most
//!   [`RESPONSE_CHECKS_PER_SECOND`] responses per second cost a DH.
//! - An outbound SA is never used past [`REJECT_AFTER_TIME`] or the crypto hard packet limit, and
//!   each `(key, nonce)` is used once: the nonce is the SA's own 64-bit counter (crypto).
//! - A responder-only tunnel (`remote: None`) learns and updates its peer endpoint only from
//!   authenticated packets (an opened ESP packet).
//! - Time arithmetic is checked: a deadline that would overflow `Instant` is never (no timer).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use tandem_crypto::esp::{self, NEXT_HEADER_DUMMY, NEXT_HEADER_IPV4, NEXT_HEADER_IPV6};
use tandem_crypto::handshake::InitiationPreamble;
use tandem_crypto::handshake::{self, MAX_MESSAGE_LEN};
use tandem_crypto::{
    Cookie, HandshakeError, InboundSa, Initiator, MessageType, OpenError, OutboundSa, Psk,
    PublicKey, Responder, ResponderOutcome, SealError, Spi, StaticSecret, Tai64N,
};

use crate::config::{ConnectionConfig, TunnelConfig};
use crate::drop::DropReason;
use crate::liveness::{LIVENESS_MSG_LEN, LivenessKind, LivenessMsg, NEXT_HEADER_LIVENESS};
use crate::ring::{CookieOut, RateWindow, Ring};
use crate::router::ConnectionId;
use crate::schedule::Window;
use crate::tunnel_core::{self, TunnelCore};
use crate::types::{
    Direction, Event, MAX_CONTROL_DATAGRAM, Silence, StateCause, TunnelId, TunnelState,
};

/// An SA older than this is never used to send, and inbound SAs are dropped then.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// First handshake retry after 1 s ...
pub const HANDSHAKE_RETRY_BASE: Duration = Duration::from_secs(1);
/// ... doubling up to 5 s.
pub const HANDSHAKE_RETRY_MAX: Duration = Duration::from_secs(5);
/// Tuning: confirmed inbound SAs per tunnel. Two are needed for a rekey (old + new), one more for
/// a simultaneous initiation and one for a restarted peer; eight leave room for rekey storms in
/// tests (rekey every 2 s) — the oldest one the peer is not sending on is evicted when full.
pub const IN_SLOTS: usize = 8;
/// Tuning: handshake responses per tunnel per second that may cost a DH (two X25519). A genuine
/// peer sends one per initiation (at most about one per second); the rest of a flood of junk
/// responses with a valid mac1 (keyed by our *public* key, so anyone can make them) is dropped
/// before any DH, so it cannot starve the data plane.
pub const RESPONSE_CHECKS_PER_SECOND: u32 = 16;
/// Tuning: the side that *responded* to the current SA's handshake waits this much longer than
/// the initiator before rekeying itself, so normally only one side initiates a rekey.
fn responder_rekey_delay(rekey_after: Duration) -> Duration {
    (rekey_after / 4).min(Duration::from_secs(30))
}
/// Tuning: from this `dpd_interval` up a tunnel sends one keepalive per interval, and polls the
/// peer only when the peer's keepalive is overdue; below it, two per interval, always
/// ([`keepalives_per_interval`]).
///
/// Why: with the default 4:1 ratio of `dpd_timeout` to `dpd_interval`, one keepalive per
/// interval alone lets 4 consecutive losses take a healthy standby Down (at 5 % loss
/// (0.95)(0.05^4) = 6e-6 per keepalive, a few false Downs per tunnel per day). So when a side's
/// keepalive timer finds the peer's last packet more than an interval and an eighth old (its
/// keepalive, sent at least once per interval, is lost or late), it sends its keepalive as an
/// echo request, which the peer answers at once, and keeps doing so every half interval until
/// the peer is heard again. A false Down then needs the peer's three keepalives after the last
/// one heard lost and each of the polls from the first timer after that on (at least four
/// before `dpd_timeout`; a poll fails if either the request or the reply is lost): about
/// 16 p^7 per interval and direction, 1e-8 at 5 % loss (a false Down per tunnel every four
/// months or so, at a loss no WAN keeps up; BFD's usual multiplier of 3 is p^3, 1e-4). Two keepalives per interval, always,
/// need 8 consecutive losses (4e-11), for twice the datagrams on every idle tunnel: the cost a
/// head-end with a thousand tunnels pays in CPU. Short intervals keep two per interval: there a
/// stall of the sending host (tens of milliseconds under load) is a good part of an interval,
/// and a keepalive half an interval sooner is what rides it out. Detection time is unchanged
/// either way: it runs from the last packet heard, and a change of view is sent at once.
pub const SPARSE_KEEPALIVES_FROM: Duration = Duration::from_millis(250);

/// Keepalives a tunnel sends per `dpd_interval` while it hears the peer on time: 1 from
/// [`SPARSE_KEEPALIVES_FROM`] up, else 2.
#[must_use]
pub fn keepalives_per_interval(dpd_interval: Duration) -> u32 {
    if dpd_interval >= SPARSE_KEEPALIVES_FROM {
        1
    } else {
        2
    }
}
/// Tuning: each keepalive comes up to this percentage of the keepalive interval early (uniform,
/// from the engine's seeded RNG), so that tunnels and gateways started together do not send in
/// lockstep. Early only, as BFD does (RFC 5880 §6.8.7 reduces the interval by 0 to 25 %): the gap
/// between two keepalives never exceeds the interval, so the detection bound (`dpd_timeout` + one
/// `dpd_interval`) is unchanged; the cost is on average half this percentage more keepalives.
pub const KEEPALIVE_JITTER_PCT: u32 = 10;
/// Tuning: a keepalive due within this percentage of `dpd_interval` is sent when the gateway
/// handles a timer anyway (another tunnel's, or its own), instead of costing a wake-up of its
/// own: at 1000 tunnels, with thousands of keepalives a second, a head-end then wakes a few
/// hundred times a second for its keepalives and sends them in bursts (measured with `lab
/// scale`, docs/operations.md). Early only, as the jitter: the detection bound is unchanged.
/// Small beside the jitter, so that tunnels still drift apart (a coalesced keepalive was within
/// this distance of the other anyway) and the extra keepalives stay under 1 % (each is on
/// average at most half of this early).
pub const KEEPALIVE_SLACK_PCT: u32 = 1;
/// A tunnel's keepalive interval at this `dpd_interval`, while the peer is heard on time.
pub(crate) fn keepalive_interval(dpd_interval: Duration) -> Duration {
    dpd_interval / keepalives_per_interval(dpd_interval)
}

/// The keepalive interval while the peer is overdue ([`SPARSE_KEEPALIVES_FROM`]): half an
/// interval, as below it always.
fn poll_interval(dpd_interval: Duration) -> Duration {
    dpd_interval / 2
}

/// How far ahead of its deadline a keepalive may be sent at this `dpd_interval`
/// ([`KEEPALIVE_SLACK_PCT`] of it).
pub(crate) fn keepalive_slack(dpd_interval: Duration) -> Duration {
    dpd_interval * KEEPALIVE_SLACK_PCT / 100
}

/// Tuning: every n-th keepalive is sent as a DPD echo request, which measures the RTT (every 2 s
/// at default timers, every 40 ms at `fast`). Each costs the peer a reply.
const ECHO_EVERY: u32 = 8;
/// Tuning: closing notices are sent twice, so one lost datagram does not cost a DPD timeout.
const CLOSING_COPIES: u8 = 2;
/// Tuning: more initiations than this per second on one tunnel => "under load", answer with
/// cookie replies (mac2) before doing any DH.
const UNDER_LOAD_INITIATIONS: u32 = 50;
/// Cookie replies a tunnel holds between two `poll_transmit` drains: one full receive batch of
/// the daemon (128 datagrams) of initiations, so that a flood arriving in one batch cannot push
/// the real peer's cookie out before it is sent.
const COOKIE_QUEUE: usize = 128;
/// Tuning: queued echo requests/replies per tunnel (drill probes run at 1 ms; the daemon drains
/// `poll_transmit` after every batch).
const ECHO_QUEUE: usize = 8;

#[derive(Debug, Clone, Copy)]
enum Timer {
    Keepalive = 0,
    Dpd = 1,
    Handshake = 2,
    Expire = 3,
}
const TIMER_COUNT: usize = 4;

impl From<Timer> for usize {
    fn from(t: Timer) -> usize {
        t as usize
    }
}

type Timers = tunnel_core::Timers<Timer, TIMER_COUNT>;

#[derive(Debug, Clone, Copy, Default)]
struct Echo {
    id: u64,
    timestamp: u64,
    probe: bool,
}

/// A handshake message waiting to be sent once.
#[derive(Debug, Clone, Copy)]
struct Outgoing {
    bytes: [u8; MAX_MESSAGE_LEN],
    len: usize,
    /// `None`: to the tunnel's peer endpoint.
    to: Option<SocketAddr>,
}

impl Default for Outgoing {
    fn default() -> Self {
        Outgoing {
            bytes: [0; MAX_MESSAGE_LEN],
            len: 0,
            to: None,
        }
    }
}

#[derive(Debug)]
struct OutSa {
    sa: OutboundSa,
    installed: Instant,
    /// The SPI of the inbound SA of the same handshake.
    in_spi: u32,
    initiator: bool,
}

#[derive(Debug)]
struct InSa {
    /// Boxed: its replay window alone is 1 KiB, and a tunnel has room for [`IN_SLOTS`] of them
    /// but holds one or two (a head-end's memory per tunnel, docs/operations.md).
    sa: Box<InboundSa>,
    installed: Instant,
}

/// The SA pair of an initiation we answered, held until the initiator proves it holds the keys
/// (its first packet opens on `inbound`). Nothing of it is committed before.
#[derive(Debug)]
struct Unconfirmed {
    inbound: InSa,
    outbound: OutSa,
    /// The initiation's timestamp: the responder's replay mark once confirmed.
    timestamp: Tai64N,
}

/// The initiator side of the handshake driver.
#[derive(Debug)]
enum Initiating {
    /// No initiation of ours is in flight.
    Idle,
    /// Our initiation went to `sent_to`; a response (or a cookie reply) from there may come.
    AwaitingResponse {
        initiator: Box<Initiator>,
        sent_to: SocketAddr,
    },
}

/// What we know about the peer's liveness.
#[derive(Debug, Clone, Copy, Default)]
struct Liveness {
    /// When we last heard the peer: an ESP packet that opened, or a response to our initiation.
    last_rx: Option<Instant>,
    /// The peer's latest liveness message says it hears us.
    peer_hears_us: bool,
    /// The ESP SPI and sequence number of the message `peer_hears_us` came from: an older
    /// message of the same SA that arrives later (reordered on the path) carries an older view
    /// and is not taken (a stale "I do not hear you" would take a healed tunnel Down again).
    view_from: Option<(u32, u64)>,
    /// The peer sent a closing notice (cleared by its next data or liveness message).
    peer_closed: bool,
    /// Our view at the last `refresh` (a change is sent to the peer at once).
    heard: bool,
}

impl Liveness {
    fn hears(&self, now: Instant, dpd_timeout: Duration) -> bool {
        self.last_rx
            .is_some_and(|t| now.saturating_duration_since(t) < dpd_timeout)
    }

    /// Forget the peer: it must be heard anew (closing notice, restored drill).
    fn forget(&mut self) {
        self.last_rx = None;
        self.peer_hears_us = false;
        self.view_from = None;
    }

    /// Takes the peer's view from the message with ESP `(spi, seq)` unless a newer message of
    /// the same SA already gave one. Another SA's message is taken (a rekey restarts the
    /// sequence; its messages are the newer ones).
    fn take_view(&mut self, hears_you: bool, spi: u32, seq: u64) {
        if self.view_from.is_some_and(|(s, q)| s == spi && seq <= q) {
            return;
        }
        self.peer_hears_us = hears_you;
        self.view_from = Some((spi, seq));
    }
}

/// Shared engine state a tunnel works with.
pub(crate) struct Ctx<'a> {
    pub secret: &'a StaticSecret,
    /// Every inbound SPI of the gateway (confirmed and unconfirmed) and its tunnel: SPIs are
    /// unique per gateway, so a socket shared by many tunnels finds the tunnel of an ESP packet
    /// in O(1). Tunnels keep it current as they install and drop inbound SAs.
    pub spis: &'a mut HashMap<u32, TunnelId>,
    pub rng: &'a mut ChaCha20Rng,
    pub events: &'a mut std::collections::VecDeque<Event>,
    pub epoch: Instant,
    pub unix_epoch: Duration,
    pub keylog: bool,
}

impl Ctx<'_> {
    pub(crate) fn unix_at(&self, now: Instant) -> Duration {
        self.unix_epoch
            .saturating_add(now.saturating_duration_since(self.epoch))
    }
}

/// Outcome of an authenticated ESP packet.
pub(crate) enum Received {
    /// An inner IP packet at this range with this next header.
    Inner(Range<usize>, u8),
    /// Consumed (liveness message, dummy).
    Consumed,
}

/// One tunnel.
pub(crate) struct NoiseTunnel {
    core: TunnelCore,
    dpd_interval: Duration,
    dpd_timeout: Duration,
    rekey_after: Duration,
    peer: PublicKey,
    psk: Psk,
    responder: Option<Responder>,
    initiating: Initiating,
    attempt: u32,
    cookie: Option<Cookie>,
    /// The last timestamp we sent in an initiation (ours grow strictly).
    sent_timestamp: Duration,
    responses_checked: RateWindow,
    initiations_seen: RateWindow,
    inbound: [Option<InSa>; IN_SLOTS],
    /// The inbound SA the peer last sent an authenticated packet on (never evicted).
    rx_spi: Option<u32>,
    unconfirmed: Option<Unconfirmed>,
    current: Option<OutSa>,
    liveness: Liveness,
    timers: Timers,
    initiation_out: Outgoing,
    response_out: Outgoing,
    /// Where the responder writes its output before we know whether it is a response (kept in
    /// `response_out`) or a cookie reply (queued in `cookie_out`): a cookie reply must never
    /// overwrite a pending response, or a flood of initiations would starve the real peer.
    scratch: [u8; MAX_MESSAGE_LEN],
    /// Cookie replies waiting to be sent, each to the source of the initiation that caused it —
    /// which need not be the endpoint: a peer that roamed, or restarted behind a new NAT mapping,
    /// must be able to earn a cookie there (as in WireGuard). A cookie reply is smaller than the
    /// initiation that caused it, so this reflects nothing bigger than what the sender sent.
    /// Allocated at the first cookie reply (a tunnel under load): ~12 KiB a head-end's tunnels
    /// need not all carry.
    cookie_out: Option<Box<Ring<CookieOut, COOKIE_QUEUE>>>,
    closing: u8,
    want_keepalive: bool,
    /// The next keepalive goes as an echo request: the peer's own keepalive is overdue
    /// ([`SPARSE_KEEPALIVES_FROM`]).
    poll: bool,
    keepalives: u32,
    echo_seq: u64,
    echo_replies: Ring<Echo, ECHO_QUEUE>,
    echo_requests: Ring<Echo, ECHO_QUEUE>,
    /// The engine's epoch: echo timestamps are nanoseconds since it.
    epoch: Instant,
}

impl std::fmt::Debug for NoiseTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseTunnel")
            .field("id", &self.core.id)
            .field("name", &self.core.cfg.name)
            .field("state", &self.core.state)
            .field("remote", &self.core.remote)
            .finish_non_exhaustive()
    }
}

fn jittered(base: Duration, rng: &mut ChaCha20Rng) -> Duration {
    // Uniform in [base - base/8, base + base/8): desynchronises the two ends' retries.
    let span = base.as_nanos() as u64 / 4;
    if span == 0 {
        return base;
    }
    base - base / 8 + Duration::from_nanos(rng.next_u64() % span)
}

/// The timer values a tunnel runs with: the configured ones, floored so that a zero can never
/// make a timer fire in a loop (the config refuses such values; the engine does not rely on it).
fn timer_settings(conn_cfg: &ConnectionConfig) -> (Duration, Duration, Duration) {
    (
        conn_cfg.dpd_interval.max(Duration::from_millis(1)),
        conn_cfg.dpd_timeout.max(Duration::from_millis(1)),
        conn_cfg.rekey_after.max(Duration::from_millis(100)),
    )
}

impl NoiseTunnel {
    /// The protocol-independent part (name, config, state, endpoint, counters, silence).
    pub fn core(&self) -> &TunnelCore {
        &self.core
    }

    pub fn core_mut(&mut self) -> &mut TunnelCore {
        &mut self.core
    }

    pub fn new(
        id: TunnelId,
        conn: ConnectionId,
        cfg: &TunnelConfig,
        conn_cfg: &ConnectionConfig,
        secret: &StaticSecret,
        epoch: Instant,
        now: Instant,
    ) -> Self {
        let peer = PublicKey::from_bytes(cfg.peer_public_key);
        let psk = Psk::from_bytes(*cfg.psk);
        let responder = Responder::new(secret, peer, &psk).ok();
        let (dpd_interval, dpd_timeout, rekey_after) = timer_settings(conn_cfg);
        let mut t = NoiseTunnel {
            core: TunnelCore::new(id, conn, cfg),
            dpd_interval,
            dpd_timeout,
            rekey_after,
            peer,
            psk,
            responder,
            initiating: Initiating::Idle,
            attempt: 0,
            cookie: None,
            sent_timestamp: Duration::ZERO,
            responses_checked: RateWindow::default(),
            initiations_seen: RateWindow::default(),
            inbound: Default::default(),
            rx_spi: None,
            unconfirmed: None,
            current: None,
            liveness: Liveness::default(),
            timers: Timers::default(),
            initiation_out: Outgoing::default(),
            response_out: Outgoing::default(),
            scratch: [0; MAX_MESSAGE_LEN],
            cookie_out: None,
            closing: 0,
            want_keepalive: false,
            poll: false,
            keepalives: 0,
            echo_seq: 0,
            echo_replies: Ring::default(),
            echo_requests: Ring::default(),
            epoch,
        };
        if t.core.remote.is_some() && t.responder.is_some() {
            t.timers.set(Timer::Handshake, Some(now));
        }
        t
    }

    /// Whether the tunnel's settings equal `cfg` (reload keeps such tunnels with their SAs).
    pub fn same_settings(&self, cfg: &TunnelConfig, conn_cfg: &ConnectionConfig) -> bool {
        self.core.cfg == *cfg
            && (self.dpd_interval, self.dpd_timeout, self.rekey_after) == timer_settings(conn_cfg)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// How far ahead of its deadline a keepalive may be sent ([`KEEPALIVE_SLACK_PCT`]).
    fn keepalive_slack(&self) -> Duration {
        keepalive_slack(self.dpd_interval)
    }

    /// When the tunnel must be handled (its earliest timer) and the earliest it may be (a
    /// keepalive within its slack).
    pub fn poll_window(&self) -> Option<Window> {
        let due = self.timers.next()?;
        let keepalive = self
            .timers
            .get(Timer::Keepalive)
            .map(|at| at.checked_sub(self.keepalive_slack()).unwrap_or(at));
        let others = [Timer::Dpd, Timer::Handshake, Timer::Expire]
            .into_iter()
            .filter_map(|t| self.timers.get(t));
        let early = keepalive.into_iter().chain(others).min().unwrap_or(due);
        Some(Window { early, due })
    }

    fn keepalive_interval(&self) -> Duration {
        keepalive_interval(self.dpd_interval)
    }

    /// Whether the peer's keepalive is overdue at `now`, with one keepalive per interval
    /// ([`SPARSE_KEEPALIVES_FROM`]): its last packet is more than an interval and an eighth old.
    fn peer_overdue(&self, now: Instant) -> bool {
        keepalives_per_interval(self.dpd_interval) == 1
            && self.liveness.last_rx.is_some_and(|t| {
                now.saturating_duration_since(t) > self.dpd_interval + self.dpd_interval / 8
            })
    }

    /// The interval to the next keepalive at `now`: half an interval while polling an overdue
    /// peer, else the keepalive interval.
    fn next_keepalive_interval(&self, now: Instant) -> Duration {
        if self.peer_overdue(now) {
            poll_interval(self.dpd_interval)
        } else {
            self.keepalive_interval()
        }
    }

    /// The delay to the next keepalive at `now`: its interval less up to
    /// [`KEEPALIVE_JITTER_PCT`] of it.
    fn keepalive_delay(&self, now: Instant, rng: &mut ChaCha20Rng) -> Duration {
        let base = self.next_keepalive_interval(now);
        let span = (base * KEEPALIVE_JITTER_PCT / 100).as_nanos() as u64;
        if span == 0 {
            return base;
        }
        base - Duration::from_nanos(rng.next_u64() % span)
    }

    fn hears(&self, now: Instant) -> bool {
        self.liveness.hears(now, self.dpd_timeout)
    }

    pub fn spi_in(&self) -> Option<u32> {
        self.current.as_ref().map(|c| c.in_spi)
    }

    pub fn spi_out(&self) -> Option<u32> {
        self.current.as_ref().map(|c| c.sa.spi().get())
    }

    fn initiation_in_flight(&self) -> bool {
        matches!(self.initiating, Initiating::AwaitingResponse { .. })
    }

    fn rekey_at(&self) -> Option<Instant> {
        let c = self.current.as_ref()?;
        let delay = if c.initiator {
            Duration::ZERO
        } else {
            responder_rekey_delay(self.rekey_after)
        };
        c.installed
            .checked_add(self.rekey_after)?
            .checked_add(delay)
    }

    fn wants_handshake(&self, now: Instant) -> bool {
        self.current.as_ref().is_none_or(|c| c.sa.rekey_due())
            || !self.hears(now)
            || self.rekey_at().is_some_and(|at| at <= now)
    }

    fn backoff(&self, rng: &mut ChaCha20Rng) -> Duration {
        let base = HANDSHAKE_RETRY_BASE
            .saturating_mul(1u32 << self.attempt.min(8))
            .min(HANDSHAKE_RETRY_MAX);
        jittered(base, rng)
    }

    /// An SPI no inbound SA of the gateway has (nor an initiation of ours in flight).
    fn fresh_spi(&self, ctx: &mut Ctx<'_>) -> Spi {
        loop {
            let v = ctx.rng.next_u32();
            let in_flight = match &self.initiating {
                Initiating::AwaitingResponse { initiator, .. } => initiator.local_spi().get() == v,
                Initiating::Idle => false,
            };
            if let Some(spi) = Spi::new(v)
                && !ctx.spis.contains_key(&v)
                && !in_flight
            {
                return spi;
            }
        }
    }

    /// The SPIs of every inbound SA this tunnel holds, confirmed or not (to rebuild the
    /// gateway's SPI table after a reload renumbers tunnels).
    pub fn inbound_spis(&self) -> impl Iterator<Item = u32> + '_ {
        self.inbound
            .iter()
            .flatten()
            .map(|s| s.sa.spi().get())
            .chain(self.unconfirmed.iter().map(|u| u.inbound.sa.spi().get()))
    }

    /// Where our initiation in flight went, if one is.
    pub fn initiation_sent_to(&self) -> Option<SocketAddr> {
        match &self.initiating {
            Initiating::AwaitingResponse { sent_to, .. } => Some(*sent_to),
            Initiating::Idle => None,
        }
    }

    /// This tunnel's responder (None when the peer's key is unusable).
    pub fn responder(&self) -> Option<&Responder> {
        self.responder.as_ref()
    }

    fn next_timestamp(&mut self, now: Instant, ctx: &Ctx<'_>) -> Tai64N {
        let mut t = ctx.unix_at(now);
        if t <= self.sent_timestamp {
            t = self.sent_timestamp + Duration::from_nanos(1);
        }
        self.sent_timestamp = t;
        Tai64N::from_unix_duration(t)
    }

    /// Acts on due timers. The engine calls `refresh` afterwards.
    pub fn handle_timeout(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        if self.timers.due(Timer::Expire, now) {
            self.expire(now, ctx);
        }
        let slack = self.keepalive_slack();
        if self
            .timers
            .get(Timer::Keepalive)
            .is_some_and(|at| at <= now.checked_add(slack).unwrap_or(now))
        {
            self.want_keepalive = true;
            self.poll = self.peer_overdue(now);
            let delay = self.keepalive_delay(now, ctx.rng);
            self.timers.set(Timer::Keepalive, now.checked_add(delay));
        }
        if self.timers.due(Timer::Dpd, now) {
            self.timers.set(Timer::Dpd, None); // refresh() re-arms it from last_rx
        }
        if self.timers.due(Timer::Handshake, now) {
            self.on_handshake_timer(now, ctx);
        }
    }

    fn on_handshake_timer(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        let Some(dst) = self
            .core
            .remote
            .filter(|_| !self.core.is_silenced() && self.responder.is_some())
        else {
            self.timers.set(Timer::Handshake, None);
            return;
        };
        if !self.wants_handshake(now) {
            // E.g. the peer's simultaneous initiation gave us fresh SAs while ours was lost.
            self.initiating = Initiating::Idle;
            self.initiation_out.len = 0;
            self.attempt = 0;
            self.timers.set(Timer::Handshake, self.rekey_at());
            return;
        }
        let spi = self.fresh_spi(ctx);
        let ts = self.next_timestamp(now, ctx);
        let cookie = self.cookie.as_ref().filter(|c| !c.is_expired(now));
        match Initiator::start(
            ctx.secret,
            &self.peer,
            &self.psk,
            spi,
            ts,
            cookie,
            ctx.rng,
            &mut self.initiation_out.bytes,
        ) {
            Ok((init, len)) => {
                self.initiating = Initiating::AwaitingResponse {
                    initiator: Box::new(init),
                    sent_to: dst,
                };
                self.initiation_out.len = len;
                self.initiation_out.to = Some(dst);
            }
            Err(_) => {
                self.initiating = Initiating::Idle;
                self.initiation_out.len = 0;
            }
        }
        let wait = self.backoff(ctx.rng);
        self.attempt = self.attempt.saturating_add(1);
        self.timers.set(Timer::Handshake, now.checked_add(wait));
    }

    fn expire(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        let old = |at: Instant| now.saturating_duration_since(at) >= REJECT_AFTER_TIME;
        for slot in &mut self.inbound {
            if let Some(s) = slot.take_if(|s| old(s.installed)) {
                ctx.spis.remove(&s.sa.spi().get());
            }
        }
        if self.current.as_ref().is_some_and(|c| old(c.installed)) {
            self.current = None;
        }
        if let Some(u) = self.unconfirmed.take_if(|u| old(u.inbound.installed)) {
            ctx.spis.remove(&u.inbound.sa.spi().get());
        }
        self.arm_expire();
    }

    fn arm_expire(&mut self) {
        let earliest = self
            .inbound
            .iter()
            .flatten()
            .map(|s| s.installed)
            .chain(self.current.iter().map(|c| c.installed))
            .chain(self.unconfirmed.iter().map(|u| u.inbound.installed))
            .min();
        self.timers.set(
            Timer::Expire,
            earliest.and_then(|t| t.checked_add(REJECT_AFTER_TIME)),
        );
    }

    fn keylog(&self, inbound: &InboundSa, outbound: &OutboundSa, ctx: &mut Ctx<'_>) {
        if !ctx.keylog {
            return;
        }
        ctx.events.push_back(Event::SaInstalled {
            tunnel: self.core.id,
            direction: Direction::In,
            spi: inbound.spi().get(),
            keylog: inbound.keys().keylog_hex(),
        });
        ctx.events.push_back(Event::SaInstalled {
            tunnel: self.core.id,
            direction: Direction::Out,
            spi: outbound.spi().get(),
            keylog: outbound.keys().keylog_hex(),
        });
    }

    /// Puts a confirmed inbound SA in a free slot, else in place of the oldest one the peer is
    /// not sending on.
    fn insert_inbound(&mut self, sa: InSa, ctx: &mut Ctx<'_>) {
        let idx = match self.inbound.iter().position(Option::is_none) {
            Some(i) => i,
            None => (0..IN_SLOTS)
                .filter(|&i| {
                    self.inbound[i]
                        .as_ref()
                        .is_none_or(|s| Some(s.sa.spi().get()) != self.rx_spi)
                })
                .min_by_key(|&i| self.inbound[i].as_ref().map(|s| s.installed))
                .unwrap_or(0),
        };
        if let Some(evicted) = self.inbound[idx].take() {
            ctx.spis.remove(&evicted.sa.spi().get());
        }
        ctx.spis.insert(sa.sa.spi().get(), self.core.id);
        self.inbound[idx] = Some(sa);
    }

    /// A handshake completed (ours with its response, or the peer's with key confirmation):
    /// the new SA pair is in use.
    fn complete(&mut self, inbound: InSa, outbound: OutSa, now: Instant, ctx: &mut Ctx<'_>) {
        let rekey = self.current.is_some();
        let initiator = outbound.initiator;
        self.keylog(&inbound.sa, &outbound.sa, ctx);
        self.insert_inbound(inbound, ctx);
        self.current = Some(outbound);
        if initiator {
            // Key confirmation for the responder, and our view, at once.
            self.want_keepalive = true;
        }
        if self.timers.get(Timer::Keepalive).is_none() {
            let delay = self.keepalive_delay(now, ctx.rng);
            self.timers.set(Timer::Keepalive, now.checked_add(delay));
        }
        self.attempt = 0;
        if !self.initiation_in_flight() {
            self.timers.set(Timer::Handshake, self.rekey_at());
        }
        self.core.counters.handshakes += 1;
        self.core.counters.last_handshake_unix = Some(ctx.unix_at(now).as_secs());
        ctx.events.push_back(Event::HandshakeCompleted {
            tunnel: self.core.id,
            initiator,
            rekey,
        });
        self.arm_expire();
    }

    fn learn_endpoint(&mut self, from: SocketAddr, ctx: &mut Ctx<'_>) {
        if self.core.cfg.remote.is_none() && self.core.remote != Some(from) {
            self.core.remote = Some(from);
            ctx.events.push_back(Event::PeerEndpoint {
                tunnel: self.core.id,
                addr: from,
            });
        }
    }

    /// A datagram that starts with the non-ESP marker: a handshake message.
    pub fn handle_handshake(
        &mut self,
        from: SocketAddr,
        msg: &[u8],
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), DropReason> {
        match tandem_crypto::message_type(msg) {
            Some(MessageType::Initiation) => self.on_initiation(from, msg, now, ctx),
            Some(MessageType::Response) => self.on_response(from, msg, now, ctx),
            Some(MessageType::CookieReply) => self.on_cookie_reply(from, msg, now),
            None => Err(DropReason::Malformed),
        }
    }

    fn on_initiation(
        &mut self,
        from: SocketAddr,
        msg: &[u8],
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), DropReason> {
        let load = self.initiations_seen.count(now) > UNDER_LOAD_INITIATIONS;
        let spi = self.fresh_spi(ctx);
        let Some(responder) = self.responder.as_mut() else {
            return Err(DropReason::Auth);
        };
        let outcome = responder
            .handle_initiation(msg, from, load, spi, now, ctx.rng, &mut self.scratch)
            .map_err(handshake_drop)?;
        self.answered(from, outcome, now, ctx)
    }

    /// An initiation that arrived on a socket shared by many tunnels and that this tunnel's
    /// responder [`Responder::claims`]: the shared checks (mac1, cookie, the DH `es`) are done.
    pub fn handle_claimed_initiation(
        &mut self,
        from: SocketAddr,
        pre: &InitiationPreamble,
        msg: &[u8],
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), DropReason> {
        if self.core.is_silenced() {
            return Err(DropReason::Silenced);
        }
        let spi = self.fresh_spi(ctx);
        let Some(responder) = self.responder.as_mut() else {
            return Err(DropReason::Auth);
        };
        let outcome = responder
            .answer(pre, msg, spi, ctx.rng, &mut self.scratch)
            .map_err(handshake_drop)?;
        self.answered(from, outcome, now, ctx)
    }

    /// What the responder made of an initiation: a response to send (its SAs held unconfirmed)
    /// or a cookie reply.
    fn answered(
        &mut self,
        from: SocketAddr,
        outcome: ResponderOutcome,
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), DropReason> {
        match outcome {
            ResponderOutcome::Established {
                established,
                response_len,
            } => {
                let est = *established;
                if self
                    .unconfirmed
                    .as_ref()
                    .is_some_and(|u| u.timestamp >= est.timestamp)
                {
                    // An older (or the same) initiation than the one awaiting confirmation: a
                    // replay or a duplicate. The newest initiation is the genuine peer's.
                    return Err(DropReason::Handshake);
                }
                self.response_out.bytes[..response_len]
                    .copy_from_slice(&self.scratch[..response_len]);
                self.response_out.len = response_len;
                // To the configured peer, else back to the source: nothing is learned from an
                // initiation, which proves nothing until it is confirmed.
                self.response_out.to = Some(self.core.cfg.remote.unwrap_or(from));
                if let Some(old) = self.unconfirmed.take() {
                    ctx.spis.remove(&old.inbound.sa.spi().get());
                }
                ctx.spis.insert(est.local_spi.get(), self.core.id);
                self.unconfirmed = Some(Unconfirmed {
                    inbound: InSa {
                        sa: Box::new(est.inbound),
                        installed: now,
                    },
                    outbound: OutSa {
                        sa: est.outbound,
                        installed: now,
                        in_spi: est.local_spi.get(),
                        initiator: false,
                    },
                    timestamp: est.timestamp,
                });
                self.arm_expire();
                Ok(())
            }
            ResponderOutcome::CookieReply { len } => {
                // The cookie reply goes back to the initiation's source: only a sender that can
                // receive there can prove it with mac2.
                if let Ok(bytes) = self.scratch[..len].try_into() {
                    self.cookie_out
                        .get_or_insert_with(Box::default)
                        .push(CookieOut { to: from, bytes });
                }
                Ok(())
            }
        }
    }

    fn on_response(
        &mut self,
        from: SocketAddr,
        msg: &[u8],
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), DropReason> {
        let Initiating::AwaitingResponse { initiator, sent_to } = &mut self.initiating else {
            return Err(DropReason::Handshake);
        };
        if from != *sent_to {
            return Err(DropReason::Handshake);
        }
        if self.responses_checked.count(now) > RESPONSE_CHECKS_PER_SECOND {
            return Err(DropReason::Handshake);
        }
        let est = initiator.consume_response(msg).map_err(handshake_drop)?;
        self.initiating = Initiating::Idle;
        self.initiation_out.len = 0;
        // The response proves the peer (static key, PSK) and is fresh (bound to our ephemeral).
        self.liveness.last_rx = Some(now);
        self.liveness.peer_closed = false;
        self.learn_endpoint(from, ctx);
        let inbound = InSa {
            sa: Box::new(est.inbound),
            installed: now,
        };
        let outbound = OutSa {
            sa: est.outbound,
            installed: now,
            in_spi: est.local_spi.get(),
            initiator: true,
        };
        self.complete(inbound, outbound, now, ctx);
        Ok(())
    }

    fn on_cookie_reply(
        &mut self,
        from: SocketAddr,
        msg: &[u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        let Initiating::AwaitingResponse { initiator, sent_to } = &self.initiating else {
            return Err(DropReason::Handshake);
        };
        if from != *sent_to {
            return Err(DropReason::Handshake);
        }
        // Anyone who saw our initiation can make a valid cookie reply (its key and AAD are on
        // the wire), so it changes nothing but the cookie the next retry carries: the pending
        // initiation stays and the retry timer is untouched.
        self.cookie = Some(
            initiator
                .consume_cookie_reply(msg, now)
                .map_err(handshake_drop)?,
        );
        Ok(())
    }

    /// An ESP datagram at `buf[range]`.
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
        let open_err = |e| match e {
            OpenError::Replay(_) | OpenError::SeqLimit => DropReason::Replay,
            OpenError::BadTag => DropReason::Auth,
            _ => DropReason::Malformed,
        };
        let opened = if let Some(slot) = self
            .inbound
            .iter_mut()
            .flatten()
            .find(|s| s.sa.spi().get() == spi)
        {
            slot.sa.open(buf, range).map_err(open_err)?
        } else {
            let u = self
                .unconfirmed
                .as_mut()
                .filter(|u| u.inbound.sa.spi().get() == spi)
                .ok_or(DropReason::UnknownSpi)?;
            let opened = u.inbound.sa.open(buf, range).map_err(open_err)?;
            // Key confirmation: the initiator holds the keys of the initiation we answered.
            if let Some(u) = self.unconfirmed.take() {
                if let Some(r) = self.responder.as_mut() {
                    r.confirm(u.timestamp);
                }
                self.complete(u.inbound, u.outbound, now, ctx);
            }
            opened
        };
        // Authenticated from here on.
        self.liveness.last_rx = Some(now);
        self.rx_spi = Some(spi);
        self.core.counters.rx_packets += 1;
        self.core.counters.rx_bytes += len;
        self.learn_endpoint(from, ctx);
        match opened.next_header {
            NEXT_HEADER_IPV4 | NEXT_HEADER_IPV6 => {
                self.liveness.peer_closed = false;
                Ok(Received::Inner(opened.payload, opened.next_header))
            }
            NEXT_HEADER_DUMMY => Ok(Received::Consumed),
            NEXT_HEADER_LIVENESS => {
                let msg = LivenessMsg::parse(&buf[opened.payload]).ok_or(DropReason::Malformed)?;
                self.handle_liveness(msg, (spi, opened.seq), now, ctx);
                Ok(Received::Consumed)
            }
            _ => Err(DropReason::Malformed),
        }
    }

    /// A liveness message that opened on ESP `(spi, seq)`.
    fn handle_liveness(
        &mut self,
        msg: LivenessMsg,
        (spi, seq): (u32, u64),
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) {
        if msg.kind == LivenessKind::Closing {
            // Down at once: forget that we heard the peer; it must be heard anew.
            self.liveness.peer_closed = true;
            self.liveness.forget();
            return;
        }
        self.liveness.peer_closed = false;
        self.liveness.take_view(msg.hears_you, spi, seq);
        match msg.kind {
            LivenessKind::EchoRequest => self.echo_replies.push(Echo {
                id: msg.id,
                timestamp: msg.timestamp,
                probe: msg.probe,
            }),
            LivenessKind::EchoReply => {
                let sent = ctx.epoch.checked_add(Duration::from_nanos(msg.timestamp));
                let rtt = sent.map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
                if msg.probe {
                    ctx.events.push_back(Event::ProbeReply {
                        connection: self.core.conn,
                        tunnel: self.core.id,
                        id: msg.id,
                        rtt,
                    });
                } else {
                    self.core.counters.rtt = Some(rtt);
                }
            }
            LivenessKind::Keepalive | LivenessKind::Closing => {}
        }
    }

    /// Recomputes the state at `now`; returns the change, if any.
    pub fn refresh(
        &mut self,
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Option<(TunnelState, TunnelState, StateCause)> {
        let hears = self.hears(now);
        if hears != self.liveness.heard {
            self.liveness.heard = hears;
            if !self.core.is_silenced() {
                // Tell the peer our new view now, not at the next interval (BFD poll).
                self.want_keepalive = true;
                if !hears && !self.initiation_in_flight() && self.core.remote.is_some() {
                    // Lost the peer: re-handshake after the first retry interval, in case it
                    // restarted and lost its SAs (it may not know our endpoint).
                    let at = now.checked_add(self.backoff(ctx.rng));
                    let cur = self.timers.get(Timer::Handshake);
                    let next = match (cur, at) {
                        (Some(c), Some(a)) => Some(c.min(a)),
                        (c, a) => c.or(a),
                    };
                    self.timers.set(Timer::Handshake, next);
                }
            }
        }
        self.timers.set(
            Timer::Dpd,
            self.liveness
                .last_rx
                .filter(|_| hears)
                .and_then(|t| t.checked_add(self.dpd_timeout)),
        );
        let sendable = self.current.as_ref().is_some_and(|c| {
            now.saturating_duration_since(c.installed) < REJECT_AFTER_TIME && !c.sa.exhausted()
        });
        // A `Silent` drill is a dead path: the state follows liveness (Down after the DPD
        // timeout, as for a real blackhole). `Graceful` is an administrative shutdown.
        let new = if self.core.silence == Silence::Graceful {
            TunnelState::AdminDown
        } else if hears && self.liveness.peer_hears_us && sendable && self.core.remote.is_some() {
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
            _ if self.liveness.peer_closed => StateCause::PeerClosing,
            _ if !hears => StateCause::DpdTimeout,
            _ => StateCause::PeerDoesNotHearUs,
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
            // A silent drill: the packet vanishes as on a dead path (until DPD moves traffic).
            return Err(DropReason::Silenced);
        }
        let dst = self.core.remote.ok_or(DropReason::NoTunnel)?;
        let cur = self.current.as_mut().ok_or(DropReason::NoTunnel)?;
        if now.saturating_duration_since(cur.installed) >= REJECT_AFTER_TIME {
            return Err(DropReason::SaExpired);
        }
        match cur.sa.seal(buf, packet, next_header) {
            Ok(s) => {
                if s.rekey_due {
                    self.request_rekey(now);
                }
                self.core.counters.tx_packets += 1;
                self.core.counters.tx_bytes += s.datagram.len() as u64;
                Ok((dst, s.datagram))
            }
            Err(SealError::Exhausted) => {
                self.request_rekey(now);
                Err(DropReason::SaExpired)
            }
            Err(_) => Err(DropReason::Malformed),
        }
    }

    fn request_rekey(&mut self, now: Instant) {
        if !self.initiation_in_flight() {
            self.timers.set(Timer::Handshake, Some(now));
        }
    }

    /// Writes the next datagram this tunnel wants to send into `buf`; returns its destination
    /// and length.
    pub fn poll_transmit(&mut self, buf: &mut [u8], now: Instant) -> Option<(SocketAddr, usize)> {
        if self.core.is_silenced() {
            self.cookie_out = None;
        }
        if let Some(c) = self.cookie_out.as_mut().and_then(|r| r.pop())
            && let Some(out) = buf.get_mut(..c.bytes.len())
        {
            out.copy_from_slice(&c.bytes);
            return Some((c.to, c.bytes.len()));
        }
        if self.closing > 0
            && let Some(dst) = self.core.remote
        {
            self.closing -= 1;
            let msg = LivenessMsg {
                kind: LivenessKind::Closing,
                ..LivenessMsg::keepalive(false)
            };
            if let Some(len) = self.seal_liveness(buf, msg, now) {
                return Some((dst, len));
            }
        }
        if self.core.is_silenced() {
            self.clear_outbox();
            return None;
        }
        for out in [&mut self.response_out, &mut self.initiation_out] {
            if out.len > 0 {
                let n = std::mem::take(&mut out.len);
                if let Some(to) = out.to.or(self.core.remote)
                    && let Some(b) = buf.get_mut(..n)
                {
                    b.copy_from_slice(&out.bytes[..n]);
                    return Some((to, n));
                }
            }
        }
        let dst = self.core.remote?;
        self.current.as_ref()?;
        let hears = self.liveness.heard;
        // An echo carries our view as a keepalive does: one we send for its own sake (a reply,
        // a drill probe) stands in for the next keepalive.
        let mut stands_in = true;
        let msg = if let Some(e) = self.echo_replies.pop() {
            LivenessMsg {
                kind: LivenessKind::EchoReply,
                hears_you: hears,
                probe: e.probe,
                id: e.id,
                timestamp: e.timestamp,
            }
        } else if let Some(e) = self.echo_requests.pop() {
            LivenessMsg {
                kind: LivenessKind::EchoRequest,
                hears_you: hears,
                probe: e.probe,
                id: e.id,
                timestamp: e.timestamp,
            }
        } else if self.want_keepalive {
            self.want_keepalive = false;
            stands_in = false;
            self.keepalives = self.keepalives.wrapping_add(1);
            if std::mem::take(&mut self.poll) || self.keepalives % ECHO_EVERY == 0 {
                self.echo_seq += 1;
                let ts = now.saturating_duration_since(self.epoch).as_nanos() as u64;
                LivenessMsg {
                    kind: LivenessKind::EchoRequest,
                    hears_you: hears,
                    probe: false,
                    id: self.echo_seq,
                    timestamp: ts,
                }
            } else {
                LivenessMsg::keepalive(hears)
            }
        } else {
            return None;
        };
        let len = self.seal_liveness(buf, msg, now)?;
        if stands_in {
            self.keepalive_stood_in(now);
        }
        Some((dst, len))
    }

    /// A liveness message other than a keepalive went out: the next keepalive is due one
    /// keepalive interval after it, not at its own time, so the gap between two liveness
    /// messages still never exceeds the interval. Each side answers about one echo request per
    /// 8 of the peer's keepalives; without this every reply would be a datagram more (1/8 of
    /// the keepalive rate, each way, on every tunnel), with it a reply costs on average half
    /// that.
    fn keepalive_stood_in(&mut self, now: Instant) {
        if self.timers.get(Timer::Keepalive).is_some() {
            self.want_keepalive = false;
            self.poll = false;
            self.timers.set(
                Timer::Keepalive,
                now.checked_add(self.next_keepalive_interval(now)),
            );
        }
    }

    fn seal_liveness(&mut self, buf: &mut [u8], msg: LivenessMsg, now: Instant) -> Option<usize> {
        let start = esp::HEADROOM;
        if buf.len() < start + LIVENESS_MSG_LEN + esp::TAILROOM {
            return None;
        }
        let mut bytes = [0u8; LIVENESS_MSG_LEN];
        msg.write(&mut bytes);
        buf[start..start + LIVENESS_MSG_LEN].copy_from_slice(&bytes);
        let cur = self.current.as_mut()?;
        if now.saturating_duration_since(cur.installed) >= REJECT_AFTER_TIME {
            return None;
        }
        match cur
            .sa
            .seal(buf, start..start + LIVENESS_MSG_LEN, NEXT_HEADER_LIVENESS)
        {
            Ok(s) => {
                if s.rekey_due {
                    self.request_rekey(now);
                }
                self.core.counters.tx_packets += 1;
                self.core.counters.tx_bytes += s.datagram.len() as u64;
                debug_assert_eq!(s.datagram.start, 0);
                Some(s.datagram.end)
            }
            Err(_) => None,
        }
    }

    fn clear_outbox(&mut self) {
        self.initiation_out.len = 0;
        self.response_out.len = 0;
        self.cookie_out = None;
        self.want_keepalive = false;
        self.poll = false;
        self.echo_replies.clear();
        self.echo_requests.clear();
    }

    /// Test hook: jumps the current outbound SA's send counter.
    pub fn set_send_counter_for_testing(&mut self, seq: u64) {
        if let Some(c) = self.current.as_mut() {
            c.sa.set_next_seq_for_testing(seq);
        }
    }

    /// Queues a DPD echo request (drill probe or RTT).
    pub fn queue_echo(&mut self, id: u64, timestamp: u64, probe: bool) {
        self.echo_requests.push(Echo {
            id,
            timestamp,
            probe,
        });
    }

    /// Drill / admin silence.
    pub fn set_silence(&mut self, mode: Silence, now: Instant) {
        match mode {
            Silence::Off => {
                if self.core.silence != Silence::Off {
                    self.core.silence = Silence::Off;
                    self.liveness.forget();
                    self.want_keepalive = true;
                    if self.current.is_some() {
                        self.timers
                            .set(Timer::Keepalive, now.checked_add(self.keepalive_interval()));
                    }
                    if self.core.remote.is_some() && self.responder.is_some() {
                        self.attempt = 0;
                        self.timers
                            .set(Timer::Handshake, now.checked_add(HANDSHAKE_RETRY_BASE));
                    }
                }
            }
            Silence::Silent | Silence::Graceful => {
                if mode == Silence::Graceful
                    && self.core.silence == Silence::Off
                    && self.current.is_some()
                {
                    self.closing = CLOSING_COPIES;
                }
                self.core.silence = mode;
                self.initiating = Initiating::Idle;
                self.clear_outbox();
                self.timers.set(Timer::Keepalive, None);
                self.timers.set(Timer::Handshake, None);
            }
        }
    }

    /// Shutdown: closing notices, then silence.
    pub fn close(&mut self, now: Instant) {
        self.set_silence(Silence::Graceful, now);
    }
}

pub(crate) fn handshake_drop(e: HandshakeError) -> DropReason {
    match e {
        HandshakeError::StaleTimestamp | HandshakeError::NotAwaitingResponse => {
            DropReason::Handshake
        }
        HandshakeError::BadLength
        | HandshakeError::NotControl
        | HandshakeError::WrongType
        | HandshakeError::ReservedNotZero
        | HandshakeError::BufferTooSmall
        | HandshakeError::InvalidSpi => DropReason::Malformed,
        _ => DropReason::Auth,
    }
}

// `poll_transmit`'s buffer holds any handshake message and any sealed liveness message.
const _: () = assert!(handshake::MAX_MESSAGE_LEN <= MAX_CONTROL_DATAGRAM);
const _: () = assert!(esp::HEADROOM + LIVENESS_MSG_LEN + esp::TAILROOM <= MAX_CONTROL_DATAGRAM);

#[cfg(test)]
mod tests {
    /// A head-end holds thousands of tunnels (budget: 16 KiB each); the struct itself
    /// is a quarter of that, the rest is its SAs (boxed, one or two live) and the daemon's share.
    /// Measured: 3504 bytes (18 112 with the inbound SAs inline, ~30 KiB with the cookie queue
    /// inline too).
    #[test]
    fn a_tunnel_is_small_enough_for_a_head_end() {
        let size = std::mem::size_of::<super::NoiseTunnel>();
        let sa = std::mem::size_of::<super::InboundSa>();
        assert!(
            size <= 4096,
            "NoiseTunnel is {size} bytes (an InboundSa {sa})"
        );
        // The gateway stores either driver in one enum: the IKEv2 one must not make every
        // tunnel bigger.
        let any = std::mem::size_of::<crate::any_tunnel::Tunnel>();
        assert!(any <= 4096, "a gateway's Tunnel is {any} bytes");
    }
}
