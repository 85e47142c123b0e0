//! One tunnel (one path of a connection): handshake driving, SAs, keepalives/DPD, liveness.
//!
//! Flow of a received datagram: control marker -> handshake message (responder / initiator), or
//! ESP: SPI -> inbound SA (up to [`IN_SLOTS`] live ones) -> `open` (replay pre-check, AEAD, replay
//! commit, all in `tandem_crypto`) -> only then: liveness time, roaming, SA promotion, control.
//!
//! Invariants:
//! - **Liveness is bidirectional** (SPEC §5, BFD-like): Up only while we received an authenticated
//!   packet within `dpd_timeout` AND the peer's latest control message says it hears us. Every
//!   control message carries our view; keepalives go out [`KEEPALIVES_PER_INTERVAL`] times per
//!   `dpd_interval` on every tunnel, standby included, and a change of view is sent at once, so a
//!   one-way cut takes both ends Down within `dpd_timeout` + one `dpd_interval`.
//! - **SAs, make-before-break**: an initiator switches its outbound SA as soon as the response
//!   authenticates (the responder's inbound is ready since it sent it). A responder keeps the new
//!   outbound SA *pending* until the first authenticated packet arrives on the matching inbound
//!   SA (key confirmation), so it never sends on keys the initiator may not hold yet. Old inbound
//!   SAs stay until [`REJECT_AFTER_TIME`], so nothing in flight is lost at a rekey.
//! - **Simultaneous initiations** are both accepted: each handshake yields an independent SA pair
//!   with receiver-chosen SPIs and fresh keys; each side sends on the newest confirmed one and
//!   receives on all of them. No tie-break is needed and none can deadlock.
//! - An outbound SA is never used past [`REJECT_AFTER_TIME`] or the crypto hard packet limit, and
//!   each `(key, nonce)` is used once: the nonce is the SA's own 64-bit counter (crypto).
//! - A responder-only tunnel (`remote: None`) learns and updates its peer endpoint only from
//!   authenticated packets (a verified initiation or an opened ESP packet).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use tandem_crypto::esp::{self, NEXT_HEADER_DUMMY, NEXT_HEADER_IPV4, NEXT_HEADER_IPV6};
use tandem_crypto::handshake::{self, MAX_MESSAGE_LEN};
use tandem_crypto::{
    Cookie, HandshakeError, InboundSa, Initiator, MessageType, OpenError, OutboundSa, Psk,
    PublicKey, Responder, ResponderOutcome, SealError, Spi, StaticSecret, Tai64N,
};

use crate::config::{ConnectionConfig, TunnelConfig};
use crate::control::{CONTROL_SZ, Control, ControlKind, NEXT_HEADER_CONTROL};
use crate::drop::DropReason;
use crate::engine::{Direction, Event, Silence, StateCause, TunnelCounters, TunnelId, TunnelState};
use crate::router::ConnectionId;

/// SPEC §5: an SA older than this is never used to send, and inbound SAs are dropped then.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// SPEC §5: first handshake retry after 1 s ...
pub const HANDSHAKE_RETRY_BASE: Duration = Duration::from_secs(1);
/// ... doubling up to 5 s.
pub const HANDSHAKE_RETRY_MAX: Duration = Duration::from_secs(5);
/// Tuning: live inbound SAs per tunnel. Two are needed for a rekey (old + new), one more for a
/// simultaneous initiation and one for a restarted peer; eight leave room for rekey storms in
/// tests (rekey every 2 s) — the oldest is evicted when full.
pub const IN_SLOTS: usize = 8;
/// Tuning: the side that *responded* to the current SA's handshake waits this much longer than
/// the initiator before rekeying itself, so normally only one side initiates a rekey.
fn responder_rekey_delay(rekey_after: Duration) -> Duration {
    (rekey_after / 4).min(Duration::from_secs(30))
}
/// Tuning: keepalives sent per `dpd_interval` (SPEC §5 asks for "at least" one). With the default
/// 4:1 ratio of `dpd_timeout` to `dpd_interval`, one per interval lets 4 consecutive losses take a
/// healthy standby Down: at 5 % loss that is (0.95)(0.05^4) = 6e-6 per keepalive, a few false
/// Downs per tunnel per day. Two per interval need 8 consecutive losses (4e-11: none in years),
/// for 4 more ~60-byte datagrams per second per tunnel. Detection time is unchanged: it runs
/// from the last packet heard, and a change of view is sent at once.
pub const KEEPALIVES_PER_INTERVAL: u32 = 2;
/// Tuning: every n-th keepalive is sent as a DPD echo request, which measures the RTT (about
/// once per second at default timers).
const ECHO_EVERY: u32 = 4 * KEEPALIVES_PER_INTERVAL;
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

/// A small enum-indexed timer table.
#[derive(Debug, Clone, Default)]
struct Timers([Option<Instant>; TIMER_COUNT]);

impl Timers {
    fn set(&mut self, t: Timer, at: Option<Instant>) {
        self.0[t as usize] = at;
    }
    fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize]
    }
    fn due(&self, t: Timer, now: Instant) -> bool {
        self.get(t).is_some_and(|at| at <= now)
    }
    fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

/// A fixed-capacity FIFO (no allocation after construction).
#[derive(Debug, Clone)]
struct Ring<T: Copy + Default, const N: usize> {
    items: [T; N],
    head: usize,
    len: usize,
}

impl<T: Copy + Default, const N: usize> Default for Ring<T, N> {
    fn default() -> Self {
        Ring {
            items: [T::default(); N],
            head: 0,
            len: 0,
        }
    }
}

impl<T: Copy + Default, const N: usize> Ring<T, N> {
    /// Pushes; when full the oldest item is dropped.
    fn push(&mut self, v: T) {
        if self.len == N {
            self.head = (self.head + 1) % N;
            self.len -= 1;
        }
        self.items[(self.head + self.len) % N] = v;
        self.len += 1;
    }
    fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let v = self.items[self.head];
        self.head = (self.head + 1) % N;
        self.len -= 1;
        Some(v)
    }
    fn clear(&mut self) {
        self.len = 0;
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Echo {
    id: u64,
    timestamp: u64,
    probe: bool,
}

#[derive(Debug)]
struct OutSa {
    sa: OutboundSa,
    installed: Instant,
    /// The SPI of the inbound SA of the same handshake (its first packet confirms the keys).
    in_spi: u32,
    initiator: bool,
}

#[derive(Debug)]
struct InSa {
    sa: InboundSa,
    installed: Instant,
}

/// Shared engine state a tunnel works with.
pub(crate) struct Ctx<'a> {
    pub secret: &'a StaticSecret,
    pub rng: &'a mut ChaCha20Rng,
    pub events: &'a mut std::collections::VecDeque<Event>,
    pub epoch: Instant,
    pub unix_epoch: Duration,
    pub keylog: bool,
}

impl Ctx<'_> {
    fn unix_at(&self, now: Instant) -> Duration {
        self.unix_epoch + now.saturating_duration_since(self.epoch)
    }
}

/// Outcome of an authenticated ESP packet.
pub(crate) enum Received {
    /// An inner IP packet at this range with this next header.
    Inner(Range<usize>, u8),
    /// Consumed (control, dummy, handshake).
    Consumed,
}

/// One tunnel.
pub(crate) struct Tunnel {
    pub id: TunnelId,
    pub conn: ConnectionId,
    pub cfg: TunnelConfig,
    dpd_interval: Duration,
    dpd_timeout: Duration,
    rekey_after: Duration,
    peer: PublicKey,
    psk: Psk,
    pub remote: Option<SocketAddr>,
    responder: Option<Responder>,
    initiator: Option<Initiator>,
    attempt: u32,
    cookie: Option<Cookie>,
    last_timestamp: Duration,
    inbound: [Option<InSa>; IN_SLOTS],
    current: Option<OutSa>,
    pending: Option<OutSa>,
    last_rx: Option<Instant>,
    peer_hears_us: bool,
    peer_closed: bool,
    heard: bool,
    pub state: TunnelState,
    ever_up: bool,
    pub silence: Silence,
    timers: Timers,
    hs_init: [u8; MAX_MESSAGE_LEN],
    hs_init_len: usize,
    hs_resp: [u8; MAX_MESSAGE_LEN],
    hs_resp_len: usize,
    /// Where the responder writes its output before we know whether it is a response (kept in
    /// `hs_resp`) or a cookie reply (queued in `cookie_out`): a cookie reply must never overwrite
    /// a pending response, or a flood of initiations would starve the real peer.
    hs_scratch: [u8; MAX_MESSAGE_LEN],
    /// Cookie replies waiting to be sent, each to the source of the initiation that caused it —
    /// which need not be the endpoint: a peer that roamed, or restarted behind a new NAT mapping,
    /// must be able to earn a cookie there (as in WireGuard). A cookie reply is smaller than the
    /// initiation that caused it, so this reflects nothing bigger than what the sender sent.
    /// Bounded (oldest dropped first) and allocated once: see [`COOKIE_QUEUE`].
    cookie_out: VecDeque<(SocketAddr, [u8; handshake::COOKIE_REPLY_LEN])>,
    closing: u8,
    want_keepalive: bool,
    keepalives: u32,
    echo_seq: u64,
    echo_replies: Ring<Echo, ECHO_QUEUE>,
    echo_requests: Ring<Echo, ECHO_QUEUE>,
    load_window: (Option<Instant>, u32),
    pub counters: TunnelCounters,
    /// The engine's epoch: echo timestamps are nanoseconds since it.
    epoch: Instant,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("id", &self.id)
            .field("name", &self.cfg.name)
            .field("state", &self.state)
            .field("remote", &self.remote)
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

impl Tunnel {
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
        let mut t = Tunnel {
            id,
            conn,
            cfg: cfg.clone(),
            dpd_interval: conn_cfg.dpd_interval.max(Duration::from_millis(1)),
            dpd_timeout: conn_cfg.dpd_timeout.max(Duration::from_millis(1)),
            rekey_after: conn_cfg.rekey_after.max(Duration::from_millis(100)),
            peer,
            psk,
            remote: cfg.remote,
            responder,
            initiator: None,
            attempt: 0,
            cookie: None,
            last_timestamp: Duration::ZERO,
            inbound: Default::default(),
            current: None,
            pending: None,
            last_rx: None,
            peer_hears_us: false,
            peer_closed: false,
            heard: false,
            state: TunnelState::Connecting,
            ever_up: false,
            silence: Silence::Off,
            timers: Timers::default(),
            hs_init: [0; MAX_MESSAGE_LEN],
            hs_init_len: 0,
            hs_resp: [0; MAX_MESSAGE_LEN],
            hs_resp_len: 0,
            hs_scratch: [0; MAX_MESSAGE_LEN],
            cookie_out: VecDeque::with_capacity(COOKIE_QUEUE),
            closing: 0,
            want_keepalive: false,
            keepalives: 0,
            echo_seq: 0,
            echo_replies: Ring::default(),
            echo_requests: Ring::default(),
            load_window: (None, 0),
            counters: TunnelCounters::default(),
            epoch,
        };
        if t.remote.is_some() && t.responder.is_some() {
            t.timers.set(Timer::Handshake, Some(now));
        }
        t
    }

    /// Whether the tunnel's settings equal `cfg` (reload keeps such tunnels with their SAs).
    pub fn same_settings(&self, cfg: &TunnelConfig, conn_cfg: &ConnectionConfig) -> bool {
        self.cfg == *cfg
            && self.dpd_interval == conn_cfg.dpd_interval.max(Duration::from_millis(1))
            && self.dpd_timeout == conn_cfg.dpd_timeout.max(Duration::from_millis(1))
            && self.rekey_after == conn_cfg.rekey_after.max(Duration::from_millis(100))
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    fn keepalive_interval(&self) -> Duration {
        self.dpd_interval / KEEPALIVES_PER_INTERVAL
    }

    fn hears(&self, now: Instant) -> bool {
        self.last_rx
            .is_some_and(|t| now.saturating_duration_since(t) < self.dpd_timeout)
    }

    fn silenced(&self) -> bool {
        self.silence != Silence::Off
    }

    pub fn spi_in(&self) -> Option<u32> {
        self.current.as_ref().map(|c| c.in_spi)
    }

    pub fn spi_out(&self) -> Option<u32> {
        self.current.as_ref().map(|c| c.sa.spi().get())
    }

    fn rekey_at(&self) -> Option<Instant> {
        let c = self.current.as_ref().or(self.pending.as_ref())?;
        let delay = if c.initiator {
            Duration::ZERO
        } else {
            responder_rekey_delay(self.rekey_after)
        };
        Some(c.installed + self.rekey_after + delay)
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

    fn fresh_spi(&self, rng: &mut ChaCha20Rng) -> Spi {
        loop {
            let v = rng.next_u32();
            if let Some(spi) = Spi::new(v)
                && !self.inbound.iter().flatten().any(|s| s.sa.spi() == spi)
            {
                return spi;
            }
        }
    }

    fn next_timestamp(&mut self, now: Instant, ctx: &Ctx<'_>) -> Tai64N {
        let mut t = ctx.unix_at(now);
        if t <= self.last_timestamp {
            t = self.last_timestamp + Duration::from_nanos(1);
        }
        self.last_timestamp = t;
        Tai64N::from_unix_duration(t)
    }

    /// Acts on due timers. The engine calls `refresh` afterwards.
    pub fn handle_timeout(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        if self.timers.due(Timer::Expire, now) {
            self.expire(now);
        }
        if self.timers.due(Timer::Keepalive, now) {
            self.want_keepalive = true;
            self.timers
                .set(Timer::Keepalive, Some(now + self.keepalive_interval()));
        }
        if self.timers.due(Timer::Dpd, now) {
            self.timers.set(Timer::Dpd, None); // refresh() re-arms it from last_rx
        }
        if self.timers.due(Timer::Handshake, now) {
            self.on_handshake_timer(now, ctx);
        }
    }

    fn on_handshake_timer(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        if self.silenced() || self.remote.is_none() || self.responder.is_none() {
            self.timers.set(Timer::Handshake, None);
            return;
        }
        if !self.wants_handshake(now) {
            // E.g. the peer's simultaneous initiation gave us fresh SAs while ours was lost.
            self.initiator = None;
            self.hs_init_len = 0;
            self.attempt = 0;
            self.timers.set(Timer::Handshake, self.rekey_at());
            return;
        }
        let spi = self.fresh_spi(ctx.rng);
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
            &mut self.hs_init,
        ) {
            Ok((init, len)) => {
                self.initiator = Some(init);
                self.hs_init_len = len;
            }
            Err(_) => {
                self.initiator = None;
                self.hs_init_len = 0;
            }
        }
        let wait = self.backoff(ctx.rng);
        self.attempt = self.attempt.saturating_add(1);
        self.timers.set(Timer::Handshake, Some(now + wait));
    }

    fn expire(&mut self, now: Instant) {
        let old = |at: Instant| now.saturating_duration_since(at) >= REJECT_AFTER_TIME;
        for slot in &mut self.inbound {
            if slot.as_ref().is_some_and(|s| old(s.installed)) {
                *slot = None;
            }
        }
        if self.current.as_ref().is_some_and(|c| old(c.installed)) {
            self.current = None;
        }
        if self.pending.as_ref().is_some_and(|c| old(c.installed)) {
            self.pending = None;
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
            .chain(self.pending.iter().map(|c| c.installed))
            .min();
        self.timers
            .set(Timer::Expire, earliest.map(|t| t + REJECT_AFTER_TIME));
    }

    fn install(
        &mut self,
        est: tandem_crypto::Established,
        initiator: bool,
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) {
        let rekey = self.current.is_some() || self.pending.is_some();
        let in_spi = est.local_spi.get();
        if ctx.keylog {
            ctx.events.push_back(Event::SaInstalled {
                tunnel: self.id,
                direction: Direction::In,
                spi: in_spi,
                keylog: est.inbound.keys().keylog_hex(),
            });
            ctx.events.push_back(Event::SaInstalled {
                tunnel: self.id,
                direction: Direction::Out,
                spi: est.remote_spi.get(),
                keylog: est.outbound.keys().keylog_hex(),
            });
        }
        // Free slot, else evict the oldest inbound SA.
        let idx = match self.inbound.iter().position(Option::is_none) {
            Some(i) => i,
            None => (0..IN_SLOTS)
                .min_by_key(|&i| self.inbound[i].as_ref().map(|s| s.installed))
                .unwrap_or(0),
        };
        self.inbound[idx] = Some(InSa {
            sa: est.inbound,
            installed: now,
        });
        let out = OutSa {
            sa: est.outbound,
            installed: now,
            in_spi,
            initiator,
        };
        if initiator {
            self.current = Some(out);
            // Key confirmation for the responder, and our view, at once.
            self.want_keepalive = true;
        } else {
            self.pending = Some(out);
        }
        if self.timers.get(Timer::Keepalive).is_none() {
            self.timers
                .set(Timer::Keepalive, Some(now + self.keepalive_interval()));
        }
        self.counters.handshakes += 1;
        self.counters.last_handshake_unix = Some(ctx.unix_at(now).as_secs());
        ctx.events.push_back(Event::HandshakeCompleted {
            tunnel: self.id,
            initiator,
            rekey,
        });
        self.arm_expire();
    }

    fn learn_endpoint(&mut self, from: SocketAddr, ctx: &mut Ctx<'_>) {
        if self.cfg.remote.is_none() && self.remote != Some(from) {
            self.remote = Some(from);
            ctx.events.push_back(Event::PeerEndpoint {
                tunnel: self.id,
                addr: from,
            });
        }
    }

    fn under_load(&mut self, now: Instant) -> bool {
        match self.load_window.0 {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {
                self.load_window.1 += 1;
            }
            _ => self.load_window = (Some(now), 1),
        }
        self.load_window.1 > UNDER_LOAD_INITIATIONS
    }

    /// A control datagram (non-ESP marker): a handshake message.
    pub fn handle_handshake(
        &mut self,
        from: SocketAddr,
        msg: &[u8],
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), DropReason> {
        match tandem_crypto::message_type(msg) {
            Some(MessageType::Initiation) => {
                let load = self.under_load(now);
                let spi = self.fresh_spi(ctx.rng);
                let Some(responder) = self.responder.as_mut() else {
                    return Err(DropReason::Auth);
                };
                match responder.handle_initiation(
                    msg,
                    from,
                    load,
                    spi,
                    now,
                    ctx.rng,
                    &mut self.hs_scratch,
                ) {
                    Ok(ResponderOutcome::Established {
                        established,
                        response_len,
                    }) => {
                        self.hs_resp[..response_len]
                            .copy_from_slice(&self.hs_scratch[..response_len]);
                        self.hs_resp_len = response_len;
                        self.learn_endpoint(from, ctx);
                        self.last_rx = Some(now);
                        self.peer_closed = false;
                        self.install(*established, false, now, ctx);
                        self.attempt = 0;
                        let in_flight = self
                            .initiator
                            .as_ref()
                            .is_some_and(|i| i.is_awaiting_response());
                        if !in_flight {
                            self.timers.set(Timer::Handshake, self.rekey_at());
                        }
                        Ok(())
                    }
                    Ok(ResponderOutcome::CookieReply { len }) => {
                        // The cookie reply goes back to the initiation's source: only a sender
                        // that can receive there can prove it with mac2.
                        if let Ok(reply) = self.hs_scratch[..len].try_into() {
                            if self.cookie_out.len() == COOKIE_QUEUE {
                                self.cookie_out.pop_front();
                            }
                            self.cookie_out.push_back((from, reply));
                        }
                        Ok(())
                    }
                    Err(e) => Err(handshake_drop(e)),
                }
            }
            Some(MessageType::Response) => {
                let Some(init) = self.initiator.as_mut() else {
                    return Err(DropReason::Handshake);
                };
                match init.consume_response(msg) {
                    Ok(est) => {
                        self.initiator = None;
                        self.hs_init_len = 0;
                        self.learn_endpoint(from, ctx);
                        self.last_rx = Some(now);
                        self.peer_closed = false;
                        self.install(est, true, now, ctx);
                        self.attempt = 0;
                        self.timers.set(Timer::Handshake, self.rekey_at());
                        Ok(())
                    }
                    Err(e) => Err(handshake_drop(e)),
                }
            }
            Some(MessageType::CookieReply) => {
                let Some(init) = self.initiator.as_ref() else {
                    return Err(DropReason::Handshake);
                };
                match init.consume_cookie_reply(msg, now) {
                    Ok(cookie) => {
                        self.cookie = Some(cookie);
                        self.timers.set(Timer::Handshake, Some(now));
                        Ok(())
                    }
                    Err(e) => Err(handshake_drop(e)),
                }
            }
            None => Err(DropReason::Malformed),
        }
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
        let slot = self
            .inbound
            .iter_mut()
            .flatten()
            .find(|s| s.sa.spi().get() == spi)
            .ok_or(DropReason::UnknownSpi)?;
        let opened = slot.sa.open(buf, range).map_err(|e| match e {
            OpenError::Replay(_) | OpenError::SeqLimit => DropReason::Replay,
            OpenError::BadTag => DropReason::Auth,
            _ => DropReason::Malformed,
        })?;
        // Authenticated from here on.
        self.last_rx = Some(now);
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += len;
        if self.pending.as_ref().is_some_and(|p| p.in_spi == spi) {
            self.current = self.pending.take();
        }
        self.learn_endpoint(from, ctx);
        match opened.next_header {
            NEXT_HEADER_IPV4 | NEXT_HEADER_IPV6 => {
                self.peer_closed = false;
                Ok(Received::Inner(opened.payload, opened.next_header))
            }
            NEXT_HEADER_DUMMY => Ok(Received::Consumed),
            NEXT_HEADER_CONTROL => {
                let msg = Control::parse(&buf[opened.payload]).ok_or(DropReason::Malformed)?;
                self.handle_control(msg, now, ctx);
                Ok(Received::Consumed)
            }
            _ => Err(DropReason::Malformed),
        }
    }

    fn handle_control(&mut self, msg: Control, now: Instant, ctx: &mut Ctx<'_>) {
        if msg.kind == ControlKind::Closing {
            // Down at once: forget that we heard the peer; it must be heard anew.
            self.peer_closed = true;
            self.peer_hears_us = false;
            self.last_rx = None;
            return;
        }
        self.peer_closed = false;
        self.peer_hears_us = msg.hears_you;
        match msg.kind {
            ControlKind::EchoRequest => self.echo_replies.push(Echo {
                id: msg.id,
                timestamp: msg.timestamp,
                probe: msg.probe,
            }),
            ControlKind::EchoReply => {
                let sent = ctx.epoch + Duration::from_nanos(msg.timestamp);
                let rtt = now.saturating_duration_since(sent);
                if msg.probe {
                    ctx.events.push_back(Event::ProbeReply {
                        connection: self.conn,
                        tunnel: self.id,
                        id: msg.id,
                        rtt,
                    });
                } else {
                    self.counters.rtt = Some(rtt);
                }
            }
            ControlKind::Keepalive | ControlKind::Closing => {}
        }
    }

    /// Recomputes the state at `now`; returns the change, if any.
    pub fn refresh(
        &mut self,
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) -> Option<(TunnelState, TunnelState, StateCause)> {
        let hears = self.hears(now);
        if hears != self.heard {
            self.heard = hears;
            if !self.silenced() {
                // Tell the peer our new view now, not at the next interval (BFD poll).
                self.want_keepalive = true;
                if !hears && self.initiator.is_none() {
                    // Lost the peer: re-handshake after the first retry interval, in case it
                    // restarted and lost its SAs (it may not know our endpoint).
                    let at = now + self.backoff(ctx.rng);
                    let cur = self.timers.get(Timer::Handshake);
                    if self.remote.is_some() {
                        self.timers
                            .set(Timer::Handshake, Some(cur.map_or(at, |c| c.min(at))));
                    }
                }
            }
        }
        self.timers.set(
            Timer::Dpd,
            self.last_rx.filter(|_| hears).map(|t| t + self.dpd_timeout),
        );
        let sendable = self.current.as_ref().is_some_and(|c| {
            now.saturating_duration_since(c.installed) < REJECT_AFTER_TIME && !c.sa.exhausted()
        });
        // A `Silent` drill is a dead path: the state follows liveness (Down after the DPD
        // timeout, as for a real blackhole). `Graceful` is an administrative shutdown.
        let new = if self.silence == Silence::Graceful {
            TunnelState::AdminDown
        } else if hears && self.peer_hears_us && sendable && self.remote.is_some() {
            TunnelState::Up
        } else if self.ever_up {
            TunnelState::Down
        } else {
            TunnelState::Connecting
        };
        if new == self.state {
            return None;
        }
        let old = self.state;
        self.state = new;
        if new == TunnelState::Up {
            self.ever_up = true;
        }
        let cause = match new {
            TunnelState::Up => StateCause::Liveness,
            TunnelState::AdminDown => StateCause::Admin,
            _ if old == TunnelState::AdminDown => StateCause::AdminRestore,
            _ if self.peer_closed => StateCause::PeerClosing,
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
        if self.silenced() {
            // A silent drill: the packet vanishes as on a dead path (until DPD moves traffic).
            return Err(DropReason::Silenced);
        }
        let dst = self.remote.ok_or(DropReason::NoTunnel)?;
        let cur = self.current.as_mut().ok_or(DropReason::NoTunnel)?;
        if now.saturating_duration_since(cur.installed) >= REJECT_AFTER_TIME {
            return Err(DropReason::SaExpired);
        }
        match cur.sa.seal(buf, packet, next_header) {
            Ok(s) => {
                if s.rekey_due {
                    self.request_rekey(now);
                }
                self.counters.tx_packets += 1;
                self.counters.tx_bytes += s.datagram.len() as u64;
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
        if self.initiator.is_none() {
            self.timers.set(Timer::Handshake, Some(now));
        }
    }

    /// Writes the next datagram this tunnel wants to send into `buf`; returns its destination
    /// and length.
    pub fn poll_transmit(&mut self, buf: &mut [u8], now: Instant) -> Option<(SocketAddr, usize)> {
        if self.silenced() {
            self.cookie_out.clear();
        }
        if let Some((to, reply)) = self.cookie_out.pop_front() {
            if let Some(out) = buf.get_mut(..reply.len()) {
                out.copy_from_slice(&reply);
                return Some((to, reply.len()));
            }
        }
        let Some(dst) = self.remote else {
            self.hs_init_len = 0;
            self.hs_resp_len = 0;
            return None;
        };
        if self.closing > 0 {
            self.closing -= 1;
            let msg = Control {
                kind: ControlKind::Closing,
                ..Control::keepalive(false)
            };
            if let Some(len) = self.seal_control(buf, msg, now) {
                return Some((dst, len));
            }
        }
        if self.silenced() {
            self.clear_outbox();
            return None;
        }
        for (msg, len) in [
            (&self.hs_resp, &mut self.hs_resp_len),
            (&self.hs_init, &mut self.hs_init_len),
        ] {
            if *len > 0 && buf.len() >= *len {
                let n = std::mem::take(len);
                buf[..n].copy_from_slice(&msg[..n]);
                return Some((dst, n));
            }
        }
        self.current.as_ref()?;
        let hears = self.heard;
        let msg = if let Some(e) = self.echo_replies.pop() {
            Control {
                kind: ControlKind::EchoReply,
                hears_you: hears,
                probe: e.probe,
                id: e.id,
                timestamp: e.timestamp,
            }
        } else if let Some(e) = self.echo_requests.pop() {
            Control {
                kind: ControlKind::EchoRequest,
                hears_you: hears,
                probe: e.probe,
                id: e.id,
                timestamp: e.timestamp,
            }
        } else if self.want_keepalive {
            self.want_keepalive = false;
            self.keepalives = self.keepalives.wrapping_add(1);
            if self.keepalives % ECHO_EVERY == 0 {
                self.echo_seq += 1;
                let ts = now.saturating_duration_since(self.epoch).as_nanos() as u64;
                Control {
                    kind: ControlKind::EchoRequest,
                    hears_you: hears,
                    probe: false,
                    id: self.echo_seq,
                    timestamp: ts,
                }
            } else {
                Control::keepalive(hears)
            }
        } else {
            return None;
        };
        self.seal_control(buf, msg, now).map(|len| (dst, len))
    }

    fn seal_control(&mut self, buf: &mut [u8], msg: Control, now: Instant) -> Option<usize> {
        let start = esp::HEADROOM;
        if buf.len() < start + CONTROL_SZ + esp::TAILROOM {
            return None;
        }
        let mut bytes = [0u8; CONTROL_SZ];
        msg.write(&mut bytes);
        buf[start..start + CONTROL_SZ].copy_from_slice(&bytes);
        let cur = self.current.as_mut()?;
        if now.saturating_duration_since(cur.installed) >= REJECT_AFTER_TIME {
            return None;
        }
        match cur
            .sa
            .seal(buf, start..start + CONTROL_SZ, NEXT_HEADER_CONTROL)
        {
            Ok(s) => {
                if s.rekey_due {
                    self.request_rekey(now);
                }
                self.counters.tx_packets += 1;
                self.counters.tx_bytes += s.datagram.len() as u64;
                debug_assert_eq!(s.datagram.start, 0);
                Some(s.datagram.end)
            }
            Err(_) => None,
        }
    }

    fn clear_outbox(&mut self) {
        self.hs_init_len = 0;
        self.hs_resp_len = 0;
        self.cookie_out.clear();
        self.want_keepalive = false;
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
                if self.silence != Silence::Off {
                    self.silence = Silence::Off;
                    self.last_rx = None;
                    self.peer_hears_us = false;
                    self.want_keepalive = true;
                    if self.current.is_some() || self.pending.is_some() {
                        self.timers
                            .set(Timer::Keepalive, Some(now + self.keepalive_interval()));
                    }
                    if self.remote.is_some() && self.responder.is_some() {
                        self.attempt = 0;
                        self.timers
                            .set(Timer::Handshake, Some(now + HANDSHAKE_RETRY_BASE));
                    }
                }
            }
            Silence::Silent | Silence::Graceful => {
                if mode == Silence::Graceful
                    && self.silence == Silence::Off
                    && self.current.is_some()
                {
                    self.closing = CLOSING_COPIES;
                }
                self.silence = mode;
                self.initiator = None;
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

fn handshake_drop(e: HandshakeError) -> DropReason {
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

// `poll_transmit`'s buffer holds any handshake message and any sealed control message.
const _: () = assert!(handshake::MAX_MESSAGE_LEN <= crate::engine::MAX_CONTROL_DATAGRAM);
const _: () =
    assert!(esp::HEADROOM + CONTROL_SZ + esp::TAILROOM <= crate::engine::MAX_CONTROL_DATAGRAM);
