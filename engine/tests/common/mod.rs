//! A deterministic two-gateway simulator (quinn-proto's test harness is the model).
//!
//! Two engines, A (the customer gateway, 10.10.0.0/24 behind it) and B (the head-end,
//! 10.20.0.0/24), joined by one simulated path per tunnel, each direction with its own latency,
//! loss, reordering (extra delay), duplication and cut. Time is virtual: a base `Instant`
//! captured once plus offsets; the loop jumps to the earliest of the next delivery, either
//! engine's `poll_timeout` and the next application packet, so an idle simulated hour costs
//! only its events. Everything random comes from one seeded RNG.
//!
//! Checks made on every step, whatever the scenario:
//! - every ESP datagram's (SA key, 64-bit sequence number) pair is new — the key comes from the
//!   engines' key-log events, so this is the real (key, nonce) pair;
//! - no data packet is sent on a tunnel whose last reported state (from events) is not Up.
#![allow(dead_code, clippy::unwrap_used, clippy::disallowed_methods)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use tandem_engine::{
    ConnectionConfig, Direction, EngineConfig, Event, HEADROOM, MAX_CONTROL_DATAGRAM, Mode,
    NetAction, TAILROOM, TunAction, TunnelConfig, TunnelId, TunnelState,
};
use tandem_engine::{IkeSettings, IkeTunnelConfig, Protocol};
use tandem_ike::Identity;
use zeroize::Zeroizing;

pub use tandem_engine::Engine;

/// The name of the one connection both simulated gateways have.
pub const CONN: &str = "prod-vpc";

/// IKE SA and Child SA lifetimes so long that no scenario sees a rekey.
pub const LONG_LIFETIMES: (Duration, Duration) =
    (Duration::from_secs(8 * 3600), Duration::from_secs(3600));

/// Unix time at the simulation's start (wall clock given to the engines).
pub const UNIX_BASE: Duration = Duration::from_secs(1_790_000_000);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Which gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
    fn idx(self) -> usize {
        self as usize
    }
}

/// One direction of one path.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub latency: Duration,
    /// Probability of loss.
    pub loss: f64,
    /// Probability that a packet gets `reorder_delay` extra delay.
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Blackhole.
    pub cut: bool,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            latency: ms(10),
            loss: 0.0,
            reorder: 0.0,
            reorder_delay: ms(3),
            duplicate: 0.0,
            cut: false,
        }
    }
}

/// An IPv4/UDP packet of `len` bytes (header checksum set, ports 4000 -> 5000) in a buffer with
/// [`HEADROOM`] before it and [`TAILROOM`] after it, and its range: what the engine reads from a TUN.
pub fn ipv4_udp(src: [u8; 4], dst: [u8; 4], len: usize) -> (Vec<u8>, std::ops::Range<usize>) {
    let mut buf = vec![0u8; HEADROOM + len + TAILROOM];
    let p = &mut buf[HEADROOM..HEADROOM + len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = tandem_engine::checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5000u16.to_be_bytes());
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    (buf, HEADROOM..HEADROOM + len)
}

/// Every packet of `flow` sent in `[from, to)` arrived exactly once.
pub fn assert_no_loss(sim: &Sim, flow: u32, from: Duration, to: Duration) {
    let (sent, delivered, dup) = sim.flow_stats(flow, sim.at(from), sim.at(to));
    assert!(sent > 0, "flow {flow} sent nothing in {from:?}..{to:?}");
    assert_eq!(
        (delivered, dup),
        (sent, 0),
        "flow {flow} in {from:?}..{to:?}: sent {sent}, delivered {delivered}, duplicates {dup}"
    );
}

/// Decides, per datagram put on the wire (sender, tunnel, bytes), whether an attacker drops it.
pub type DropFilter = Box<dyn Fn(Side, usize, &[u8]) -> bool>;

/// Scenario set-up.
#[derive(Debug, Clone)]
pub struct Setup {
    pub seed: u64,
    pub mode: Mode,
    pub failback: Option<Duration>,
    pub dpd_interval: Duration,
    pub dpd_timeout: Duration,
    pub rekey_after: Duration,
    /// B's tunnels have no `remote` (responder-only head-end).
    pub b_responder_only: bool,
    /// B's PSK for tunnel i differs from A's.
    pub wrong_psk: Vec<usize>,
    pub tunnels: usize,
    pub mtu: u16,
}

impl Setup {
    /// How long after a cut both sides may take to leave the primary: it is declared dead after
    /// `dpd_timeout` of silence, noticed at the next `dpd_interval` tick at the latest.
    pub fn failover_bound(&self) -> Duration {
        self.dpd_timeout + self.dpd_interval
    }
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            seed: 1,
            mode: Mode::ActiveStandby,
            failback: Some(secs(10)),
            dpd_interval: ms(250),
            dpd_timeout: secs(1),
            rekey_after: secs(120),
            b_responder_only: false,
            wrong_psk: Vec::new(),
            tunnels: 2,
            mtu: 1400,
        }
    }
}

pub fn addr(side: Side, tunnel: usize) -> SocketAddr {
    let ip = match (side, tunnel) {
        (Side::A, 0) => Ipv4Addr::new(192, 0, 2, 1),
        (Side::B, 0) => Ipv4Addr::new(192, 0, 2, 2),
        (Side::A, _) => Ipv4Addr::new(198, 51, 100, 1 + 10 * tunnel as u8),
        (Side::B, _) => Ipv4Addr::new(198, 51, 100, 2 + 10 * tunnel as u8),
    };
    SocketAddr::new(IpAddr::V4(ip), 4500)
}

fn key(side: Side) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[0] = 0x40 + side as u8;
    k[31] = 0x11;
    k
}

pub fn public(side: Side) -> [u8; 32] {
    tandem_crypto::StaticSecret::from_bytes(key(side))
        .public_key()
        .to_bytes()
}

pub fn config(setup: &Setup, side: Side) -> EngineConfig {
    let (local, remote) = match side {
        Side::A => ("10.10.0.0/24", "10.20.0.0/24"),
        Side::B => ("10.20.0.0/24", "10.10.0.0/24"),
    };
    let mut c = ConnectionConfig::with_defaults("prod-vpc");
    c.local_subnets = vec![local.parse().unwrap()];
    c.remote_subnets = vec![remote.parse().unwrap()];
    c.mode = setup.mode;
    c.failback = setup.failback;
    c.dpd_interval = setup.dpd_interval;
    c.dpd_timeout = setup.dpd_timeout;
    c.rekey_after = setup.rekey_after;
    for t in 0..setup.tunnels {
        let mut psk = [7u8 + t as u8; 32];
        if side == Side::B && setup.wrong_psk.contains(&t) {
            psk[0] ^= 0xff;
        }
        c.tunnels.push(TunnelConfig {
            name: format!("tunnel{}", t + 1),
            local: Some(addr(side, t)),
            remote: if side == Side::B && setup.b_responder_only {
                None
            } else {
                Some(addr(side.other(), t))
            },
            peer_public_key: public(side.other()),
            psk: Zeroizing::new(psk),
            priority: t as u32 + 1,
            ike: None,
        });
    }
    EngineConfig {
        private_key: Zeroizing::new(key(side)),
        mtu: setup.mtu,
        connections: vec![c],
    }
}

/// An application flow: fixed-rate UDP packets from one side's LAN to the other's.
#[derive(Debug, Clone)]
pub struct Flow {
    pub from: Side,
    pub id: u32,
    pub interval: Duration,
    pub next: Instant,
    pub seq: u64,
    pub len: usize,
    pub until: Option<Instant>,
}

/// What happened to one application packet.
#[derive(Debug, Clone, Default)]
pub struct PacketFate {
    pub sent_at: Option<Instant>,
    pub sent_on: Option<usize>,
    pub dropped_at_sender: bool,
    pub delivered: u32,
    pub delivered_at: Option<Instant>,
}

#[derive(Debug)]
struct InFlight {
    to: Side,
    tunnel: usize,
    from: SocketAddr,
    bytes: Vec<u8>,
}

pub struct Sim {
    pub base: Instant,
    pub now: Instant,
    pub setup: Setup,
    pub engines: [Engine; 2],
    /// links[tunnel][from side]
    pub links: Vec<[Link; 2]>,
    /// The source address each side's tunnel sends from (tests may change it: NAT rebinding).
    pub src_addr: Vec<[SocketAddr; 2]>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    inflight: HashMap<u64, InFlight>,
    next_id: u64,
    rng: ChaCha8Rng,
    pub flows: Vec<Flow>,
    /// (side, flow, seq) -> fate
    pub fates: BTreeMap<(u32, u64), PacketFate>,
    /// Every event with its time and side.
    pub events: Vec<(Instant, Side, Event)>,
    /// (side, tunnel, spi) -> key index
    out_keys: HashMap<(Side, u16, u32), u32>,
    key_ids: HashMap<String, u32>,
    used_nonces: HashSet<(u32, u64)>,
    pub nonces_checked: u64,
    /// Last reported state per side per tunnel.
    pub states: [Vec<TunnelState>; 2],
    /// Every datagram put on the wire: (time, from side, tunnel, bytes) — only when `record_wire`.
    pub record_wire: bool,
    pub wire: Vec<(Instant, Side, usize, Vec<u8>)>,
    pub data_sent_per_tunnel: [Vec<u64>; 2],
    pub restarts: u64,
    pub misdirected: u64,
    /// An on-path attacker that can drop: datagrams for which this returns true vanish (they
    /// are still recorded when `record_wire` is set).
    pub drop_if: Option<DropFilter>,
}

impl Sim {
    pub fn new(setup: Setup) -> Sim {
        let (a, b) = (config(&setup, Side::A), config(&setup, Side::B));
        Sim::with_configs(setup, a, b)
    }

    /// A simulator over explicit configurations (tests that need other selectors or MTUs).
    pub fn with_configs(setup: Setup, cfg_a: EngineConfig, cfg_b: EngineConfig) -> Sim {
        let base = Instant::now();
        let a = Engine::new(cfg_a, seed32(setup.seed, 1), base, UNIX_BASE);
        let b = Engine::new(cfg_b, seed32(setup.seed, 2), base, UNIX_BASE);
        let n = setup.tunnels;
        let mut sim = Sim {
            base,
            now: base,
            engines: [a, b],
            links: vec![[Link::default(); 2]; n],
            src_addr: (0..n)
                .map(|t| [addr(Side::A, t), addr(Side::B, t)])
                .collect(),
            queue: BinaryHeap::new(),
            inflight: HashMap::new(),
            next_id: 0,
            rng: ChaCha8Rng::seed_from_u64(setup.seed),
            flows: Vec::new(),
            fates: BTreeMap::new(),
            events: Vec::new(),
            out_keys: HashMap::new(),
            key_ids: HashMap::new(),
            used_nonces: HashSet::new(),
            nonces_checked: 0,
            states: [
                vec![TunnelState::Connecting; n],
                vec![TunnelState::Connecting; n],
            ],
            record_wire: false,
            wire: Vec::new(),
            data_sent_per_tunnel: [vec![0; n], vec![0; n]],
            restarts: 0,
            misdirected: 0,
            drop_if: None,
            setup,
        };
        for e in &mut sim.engines {
            e.set_keylog(true);
        }
        sim
    }

    /// Both engines speak IKEv2 ([`ike_config`]): A initiates, B waits; `lifetimes` are the
    /// (IKE SA, Child SA) lifetimes.
    pub fn ikev2(setup: Setup, lifetimes: (Duration, Duration)) -> Sim {
        let a = ike_config(&setup, Side::A, lifetimes);
        let b = ike_config(&setup, Side::B, lifetimes);
        Sim::with_configs(setup, a, b)
    }

    pub fn engine(&mut self, side: Side) -> &mut Engine {
        &mut self.engines[side.idx()]
    }

    /// `side`'s counters of tunnel `tunnel`.
    pub fn counters(&mut self, side: Side, tunnel: u16) -> tandem_engine::TunnelCounters {
        *self.engine(side).tunnel_counters(TunnelId(tunnel)).unwrap()
    }

    pub fn at(&self, d: Duration) -> Instant {
        self.base + d
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    pub fn add_flow(&mut self, from: Side, id: u32, interval: Duration, start: Duration) {
        self.flows.push(Flow {
            from,
            id,
            interval,
            next: self.base + start,
            seq: 0,
            len: 100,
            until: None,
        });
    }

    /// Both directions, one flow each (ids 1 = A->B, 2 = B->A).
    pub fn add_bidirectional_traffic(&mut self, interval: Duration, start: Duration) {
        self.add_flow(Side::A, 1, interval, start);
        self.add_flow(Side::B, 2, interval, start);
    }

    pub fn stop_flows(&mut self) {
        let now = self.now;
        for f in &mut self.flows {
            f.until = Some(now);
        }
    }

    /// Restarts one side with all its state lost (new engine, new RNG seed, wall clock moved on).
    pub fn restart(&mut self, side: Side) {
        self.restarts += 1;
        let cfg = config(&self.setup, side);
        let unix = UNIX_BASE + (self.now - self.base);
        let mut e = Engine::new(
            cfg,
            seed32(self.setup.seed, 100 + self.restarts),
            self.now,
            unix,
        );
        e.set_keylog(true);
        self.engines[side.idx()] = e;
        self.states[side.idx()] = vec![TunnelState::Connecting; self.setup.tunnels];
        self.out_keys.retain(|k, _| k.0 != side);
    }

    /// Injects a datagram as if it arrived on `tunnel` at `to` from `from`.
    pub fn inject(
        &mut self,
        to: Side,
        tunnel: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    ) -> NetAction {
        let mut buf = vec![0u8; bytes.len() + 64];
        buf[..bytes.len()].copy_from_slice(&bytes);
        let now = self.now;
        let r = self.engines[to.idx()].handle_datagram(
            TunnelId(tunnel as u16),
            from,
            &mut buf,
            0..bytes.len(),
            now,
        );
        self.drain(to);
        r
    }

    fn drain(&mut self, side: Side) {
        let now = self.now;
        while let Some(ev) = self.engines[side.idx()].poll_event() {
            match &ev {
                Event::SaInstalled {
                    tunnel,
                    direction: Direction::Out,
                    spi,
                    keylog,
                } => {
                    let n = self.key_ids.len() as u32;
                    let id = *self.key_ids.entry(keylog.clone()).or_insert(n);
                    assert_eq!(id, n, "an SA key was installed twice");
                    self.out_keys.insert((side, tunnel.0, *spi), id);
                }
                Event::TunnelState { tunnel, to, .. } => {
                    self.states[side.idx()][usize::from(tunnel.0)] = *to
                }
                _ => {}
            }
            self.events.push((now, side, ev));
        }
        let mut buf = vec![0u8; MAX_CONTROL_DATAGRAM];
        while let Some(t) = self.engines[side.idx()].poll_transmit(&mut buf) {
            let bytes = buf[..t.len].to_vec();
            self.put_on_wire(side, usize::from(t.tunnel.0), t.dst, bytes);
        }
    }

    fn check_nonce(&mut self, side: Side, tunnel: usize, d: &[u8]) {
        if d.len() < 16 || d[..4] == [0, 0, 0, 0] {
            return;
        }
        let spi = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let seq = u64::from_be_bytes(d[8..16].try_into().unwrap());
        let key = *self
            .out_keys
            .get(&(side, tunnel as u16, spi))
            .unwrap_or_else(|| panic!("{side:?} sent on tunnel {tunnel} with SPI {spi:#x} that no key-log event announced"));
        assert!(
            self.used_nonces.insert((key, seq)),
            "(key, nonce) reused: {side:?} tunnel {tunnel} spi {spi:#x} seq {seq}"
        );
        self.nonces_checked += 1;
    }

    fn put_on_wire(&mut self, from: Side, tunnel: usize, dst: SocketAddr, bytes: Vec<u8>) {
        self.check_nonce(from, tunnel, &bytes);
        if dst != self.src_addr[tunnel][from.other().idx()] {
            // Sent to an endpoint the peer no longer has (NAT rebinding): lost.
            self.misdirected += 1;
            return;
        }
        if self.record_wire {
            self.wire.push((self.now, from, tunnel, bytes.clone()));
        }
        if self
            .drop_if
            .as_ref()
            .is_some_and(|f| f(from, tunnel, &bytes))
        {
            return;
        }
        let link = self.links[tunnel][from.idx()];
        if link.cut || unit(&mut self.rng) < link.loss {
            return;
        }
        let copies = if unit(&mut self.rng) < link.duplicate {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = link.latency;
            if unit(&mut self.rng) < link.reorder {
                delay += link.reorder_delay;
            }
            let id = self.next_id;
            self.next_id += 1;
            let src = self.src_addr[tunnel][from.idx()];
            self.inflight.insert(
                id,
                InFlight {
                    to: from.other(),
                    tunnel,
                    from: src,
                    bytes: bytes.clone(),
                },
            );
            self.queue.push(Reverse((self.now + delay, id)));
        }
    }

    fn deliver(&mut self, p: InFlight) {
        let mut buf = vec![0u8; p.bytes.len() + 64];
        buf[..p.bytes.len()].copy_from_slice(&p.bytes);
        let now = self.now;
        let r = self.engines[p.to.idx()].handle_datagram(
            TunnelId(p.tunnel as u16),
            p.from,
            &mut buf,
            0..p.bytes.len(),
            now,
        );
        if let NetAction::Deliver { packet, .. } = r {
            let pkt = &buf[packet];
            assert!(pkt.len() >= 44);
            let flow = u32::from_be_bytes(pkt[28..32].try_into().unwrap());
            let seq = u64::from_be_bytes(pkt[32..40].try_into().unwrap());
            let fate = self.fates.entry((flow, seq)).or_default();
            fate.delivered += 1;
            fate.delivered_at.get_or_insert(now);
        }
        self.drain(p.to);
    }

    fn send_app_packet(&mut self, fi: usize) {
        let f = &mut self.flows[fi];
        let (from, id, seq, len) = (f.from, f.id, f.seq, f.len);
        f.seq += 1;
        f.next += f.interval;
        let (src, dst) = match from {
            Side::A => ([10, 10, 0, 10], [10, 20, 0, 10]),
            Side::B => ([10, 20, 0, 10], [10, 10, 0, 10]),
        };
        let mut buf = vec![0u8; HEADROOM + len + TAILROOM];
        let p = &mut buf[HEADROOM..HEADROOM + len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&(10_000 + id as u16).to_be_bytes());
        p[22..24].copy_from_slice(&5000u16.to_be_bytes());
        p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
        p[28..32].copy_from_slice(&id.to_be_bytes());
        p[32..40].copy_from_slice(&seq.to_be_bytes());
        let now = self.now;
        let r = self.engines[from.idx()].handle_tun_packet(&mut buf, HEADROOM..HEADROOM + len, now);
        let fate = self.fates.entry((id, seq)).or_default();
        fate.sent_at = Some(now);
        match r {
            TunAction::Send {
                tunnel,
                dst,
                datagram,
            } => {
                let t = usize::from(tunnel.0);
                fate.sent_on = Some(t);
                assert_eq!(
                    self.states[from.idx()][t],
                    TunnelState::Up,
                    "{from:?} sent data on tunnel {t} whose last reported state is not Up"
                );
                self.data_sent_per_tunnel[from.idx()][t] += 1;
                let bytes = buf[datagram].to_vec();
                self.put_on_wire(from, t, dst, bytes);
            }
            TunAction::Drop(_) | TunAction::Reply { .. } => fate.dropped_at_sender = true,
        }
        self.drain(from);
    }

    /// Runs until `self.base + t`.
    pub fn run_until(&mut self, t: Duration) {
        let end = self.base + t;
        self.drain(Side::A);
        self.drain(Side::B);
        loop {
            let next_pkt = self.queue.peek().map(|Reverse((at, _))| *at);
            let next_flow = self
                .flows
                .iter()
                .filter(|f| f.until.is_none_or(|u| f.next < u))
                .map(|f| f.next)
                .min();
            let ta = self.engines[0].poll_timeout();
            let tb = self.engines[1].poll_timeout();
            let next = [next_pkt, next_flow, ta, tb].into_iter().flatten().min();
            let Some(next) = next.filter(|n| *n <= end) else {
                self.now = self.now.max(end);
                return;
            };
            self.now = self.now.max(next);
            let now = self.now;
            while let Some(Reverse((at, id))) = self.queue.peek().copied() {
                if at > now {
                    break;
                }
                self.queue.pop();
                let p = self.inflight.remove(&id).unwrap();
                self.deliver(p);
            }
            for side in [Side::A, Side::B] {
                if self.engines[side.idx()]
                    .poll_timeout()
                    .is_some_and(|t| t <= now)
                {
                    self.engines[side.idx()].handle_timeout(now);
                    self.drain(side);
                }
            }
            for fi in 0..self.flows.len() {
                while self.flows[fi].next <= now
                    && self.flows[fi].until.is_none_or(|u| self.flows[fi].next < u)
                {
                    self.send_app_packet(fi);
                }
            }
        }
    }

    /// Events of one side matching `f`, with their times.
    pub fn events_of<'a>(&'a self, side: Side) -> impl Iterator<Item = (Instant, &'a Event)> + 'a {
        self.events
            .iter()
            .filter(move |(_, s, _)| *s == side)
            .map(|(t, _, e)| (*t, e))
    }

    /// Times at which `side`'s active tunnel changed, with the new active tunnel.
    pub fn switches(&self, side: Side) -> Vec<(Instant, Option<usize>)> {
        self.events_of(side)
            .filter_map(|(t, e)| match e {
                Event::ActiveChanged { to, .. } => Some((t, to.map(|x| usize::from(x.0)))),
                _ => None,
            })
            .collect()
    }

    /// `side`'s switches at or after `since`.
    pub fn switches_since(&self, side: Side, since: Instant) -> Vec<(Instant, Option<usize>)> {
        let mut sw = self.switches(side);
        sw.retain(|(t, _)| *t >= since);
        sw
    }

    /// Each side switched exactly once at or after `since`, to tunnel `to`, within `bound`.
    pub fn assert_both_switched_once(&self, since: Instant, to: usize, bound: Duration) {
        for side in [Side::A, Side::B] {
            let sw = self.switches_since(side, since);
            assert_eq!(sw.len(), 1, "{side:?}: {sw:?}");
            assert_eq!(sw[0].1, Some(to));
            assert!(
                sw[0].0 - since <= bound,
                "{side:?} switched after {:?}",
                sw[0].0 - since
            );
        }
    }

    /// After A closed tunnel 1 at `t0` (a closing notice): B moved to tunnel 2 within `bound`,
    /// and B's tunnel 1 went Down for that reason.
    pub fn assert_peer_moved_on_closing_notice(&self, t0: Instant, bound: Duration) {
        let b = self
            .switches_since(Side::B, t0)
            .first()
            .copied()
            .unwrap_or_else(|| panic!("B never switched after the closing notice"));
        assert_eq!(b.1, Some(1));
        assert!(b.0 - t0 <= bound, "peer moved after {:?}", b.0 - t0);
        let cause = self.events_of(Side::B).find_map(|(t, e)| match e {
            Event::TunnelState {
                tunnel,
                to: TunnelState::Down,
                cause,
                ..
            } if t >= t0 && tunnel.0 == 0 => Some(*cause),
            _ => None,
        });
        assert_eq!(cause, Some(tandem_engine::StateCause::PeerClosing));
    }

    /// State transitions of `side`'s tunnel `tunnel`: (time, new state).
    pub fn transitions(&self, side: Side, tunnel: usize) -> Vec<(Instant, TunnelState)> {
        self.events_of(side)
            .filter_map(|(t, e)| match e {
                Event::TunnelState { tunnel: id, to, .. } if usize::from(id.0) == tunnel => {
                    Some((t, *to))
                }
                _ => None,
            })
            .collect()
    }

    pub fn state(&self, side: Side, tunnel: usize) -> TunnelState {
        self.engines[side.idx()]
            .tunnel_state(TunnelId(tunnel as u16))
            .unwrap()
    }

    pub fn active(&self, side: Side) -> Option<usize> {
        self.engines[side.idx()]
            .active_tunnel(tandem_engine::ConnectionId(0))
            .map(|t| usize::from(t.0))
    }

    /// Application packets of `flow` sent in [from, to): (sent, delivered at least once, duplicates).
    pub fn flow_stats(&self, flow: u32, from: Instant, to: Instant) -> (u64, u64, u64) {
        let mut s = (0, 0, 0);
        for ((f, _), fate) in &self.fates {
            if *f != flow || fate.sent_at.is_none_or(|t| t < from || t >= to) {
                continue;
            }
            s.0 += 1;
            if fate.delivered > 0 {
                s.1 += 1;
            }
            if fate.delivered > 1 {
                s.2 += fate.delivered as u64 - 1;
            }
        }
        s
    }

    pub fn cut(&mut self, tunnel: usize, from: Side, cut: bool) {
        self.links[tunnel][from.idx()].cut = cut;
    }

    pub fn cut_both(&mut self, tunnel: usize, cut: bool) {
        self.cut(tunnel, Side::A, cut);
        self.cut(tunnel, Side::B, cut);
    }

    pub fn set_links(&mut self, f: impl Fn(&mut Link)) {
        for l in self.links.iter_mut().flatten() {
            f(l);
        }
    }
}

pub fn seed32(seed: u64, salt: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..16].copy_from_slice(&salt.to_le_bytes());
    s
}

fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// [`config`] turned into an IKEv2 connection: an ASCII PSK per tunnel (B's differs on the
/// tunnels in `setup.wrong_psk`), identities = addresses, A initiates and B waits; `lifetimes`
/// = (IKE SA, Child SA).
fn id(a: IpAddr) -> Identity {
    match a {
        IpAddr::V4(v) => Identity::Ipv4(v),
        IpAddr::V6(v) => Identity::Ipv6(v),
    }
}

pub fn ike_config(setup: &Setup, side: Side, lifetimes: (Duration, Duration)) -> EngineConfig {
    let mut cfg = config(setup, side);
    let c = &mut cfg.connections[0];
    c.protocol = Protocol::Ikev2(Box::new(IkeSettings {
        proposals: tandem_ike::DEFAULT_IKE_PROPOSALS.to_vec(),
        esp_proposals: tandem_ike::DEFAULT_ESP_PROPOSALS.to_vec(),
        ike_lifetime: lifetimes.0,
        child_lifetime: lifetimes.1,
        replay_window: 1024,
        initiate: side == Side::A,
    }));
    for (t, tunnel) in c.tunnels.iter_mut().enumerate() {
        let mut psk = format!("aws-like-psk-for-tunnel-{t}");
        if side == Side::B && setup.wrong_psk.contains(&t) {
            psk.push('x');
        }
        tunnel.ike = Some(IkeTunnelConfig {
            psk: Zeroizing::new(psk.into_bytes()),
            local_id: id(addr(side, t).ip()),
            remote_id: id(addr(side.other(), t).ip()),
            probe: None,
            local_ike: None,
            remote_ike: None,
        });
    }
    cfg
}
