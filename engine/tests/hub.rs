//! A hub on one port, on a deterministic simulator: one head-end engine whose every branch tunnel
//! (responder-only, two per branch) shares the local address 100.64.0.1:4500, and N branch
//! engines with two tunnels each towards it. Datagrams cross the simulated network with a fixed
//! latency; the hub is driven through `handle_datagram_at(local, ..)` only, so it must attribute
//! every datagram itself (ESP by SPI, initiations by the PSK-bound prologue).
#![allow(clippy::unwrap_used, clippy::disallowed_methods, clippy::print_stderr)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tandem_engine::{
    ConnectionConfig, DropReason, Engine, EngineConfig, MAX_CONTROL_DATAGRAM, NetAction, TunAction,
    TunnelConfig, TunnelId, TunnelState,
};
use zeroize::Zeroizing;

mod common;

const HUB: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 4500);
const LATENCY: Duration = Duration::from_millis(5);
const UNIX_BASE: Duration = Duration::from_secs(1_790_000_000);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn key(n: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&(n + 1).to_be_bytes());
    k[31] = 0x11;
    k
}

fn public(n: u32) -> [u8; 32] {
    tandem_crypto::StaticSecret::from_bytes(key(n))
        .public_key()
        .to_bytes()
}

fn psk(branch: u32, tunnel: u32) -> [u8; 32] {
    let mut p = [0x5a_u8; 32];
    p[..4].copy_from_slice(&branch.to_be_bytes());
    p[4] = tunnel as u8;
    p
}

/// Branch `b`'s tunnel `t` source address (each tunnel its own ISP address).
fn branch_addr(b: u32, t: u32) -> SocketAddr {
    let ip = Ipv4Addr::new(198, 18 + t as u8, (b / 250) as u8, (b % 250) as u8 + 1);
    SocketAddr::new(IpAddr::V4(ip), 4500)
}

fn branch_subnet(b: u32) -> ipnet::IpNet {
    format!("10.{}.{}.0/24", 100 + b / 250, b % 250)
        .parse()
        .unwrap()
}

fn connection(name: &str, local: &str, remote: &str) -> ConnectionConfig {
    let mut c = ConnectionConfig::with_defaults(name);
    c.local_subnets = vec![local.parse().unwrap()];
    c.remote_subnets = vec![remote.parse().unwrap()];
    c
}

struct Hub {
    now: Instant,
    base: Instant,
    /// 0 = the hub, 1 + b = branch b.
    engines: Vec<Engine>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    inflight: HashMap<u64, (SocketAddr, SocketAddr, Vec<u8>)>,
    next_id: u64,
    owner: HashMap<SocketAddr, usize>,
    /// Addresses whose datagrams vanish (both directions): a silent cut of that path.
    cut: HashSet<SocketAddr>,
    /// Inner packets delivered per engine.
    delivered: Vec<u64>,
    /// Source NAT: datagrams from the key leave with the value as their source, and datagrams
    /// to the value reach the key.
    nat: HashMap<SocketAddr, SocketAddr>,
}

impl Hub {
    fn new(n: u32, wrong_psk: Option<u32>) -> Hub {
        let base = Instant::now();
        let mut hub_cfg = EngineConfig {
            private_key: Zeroizing::new(key(0)),
            mtu: 1400,
            connections: Vec::new(),
        };
        let mut engines = Vec::new();
        let mut owner = HashMap::from([(HUB, 0)]);
        let mut branch_cfgs = Vec::new();
        for b in 0..n {
            let sub = branch_subnet(b).to_string();
            let mut hc = connection(&format!("branch{b}"), "10.0.0.0/16", &sub);
            let mut bc = connection("hub", &sub, "10.0.0.0/16");
            for t in 0..2 {
                let mut hub_psk = psk(b, t);
                if wrong_psk == Some(b) {
                    hub_psk[31] ^= 1;
                }
                hc.tunnels.push(TunnelConfig {
                    name: format!("tunnel{}", t + 1),
                    local: Some(HUB),
                    remote: None,
                    peer_public_key: public(1 + b),
                    psk: Zeroizing::new(hub_psk),
                    priority: t + 1,
                    ike: None,
                });
                bc.tunnels.push(TunnelConfig {
                    name: format!("tunnel{}", t + 1),
                    local: Some(branch_addr(b, t)),
                    remote: Some(HUB),
                    peer_public_key: public(0),
                    psk: Zeroizing::new(psk(b, t)),
                    priority: t + 1,
                    ike: None,
                });
                owner.insert(branch_addr(b, t), 1 + b as usize);
            }
            hub_cfg.connections.push(hc);
            branch_cfgs.push(EngineConfig {
                private_key: Zeroizing::new(key(1 + b)),
                mtu: 1400,
                connections: vec![bc],
            });
        }
        let seed = |i: usize| {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&(i as u64 + 7).to_be_bytes());
            s
        };
        engines.push(Engine::new(hub_cfg, seed(0), base, UNIX_BASE));
        for (i, c) in branch_cfgs.into_iter().enumerate() {
            engines.push(Engine::new(c, seed(i + 1), base, UNIX_BASE));
        }
        let delivered = vec![0; engines.len()];
        Hub {
            now: base,
            base,
            engines,
            queue: BinaryHeap::new(),
            inflight: HashMap::new(),
            next_id: 0,
            owner,
            cut: HashSet::new(),
            delivered,
            nat: HashMap::new(),
        }
    }

    fn local_of(&self, e: usize, tunnel: TunnelId) -> SocketAddr {
        self.engines[e]
            .tunnels()
            .find(|(id, _)| *id == tunnel)
            .and_then(|(_, i)| i.local)
            .unwrap()
    }

    fn put(&mut self, src: SocketAddr, dst: SocketAddr, bytes: Vec<u8>) {
        let src = self.nat.get(&src).copied().unwrap_or(src);
        if self.cut.contains(&src) || self.cut.contains(&dst) {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.inflight.insert(id, (src, dst, bytes));
        self.queue.push(Reverse((self.now + LATENCY, id)));
    }

    fn drain(&mut self, e: usize) {
        let mut buf = [0u8; MAX_CONTROL_DATAGRAM];
        while let Some(t) = self.engines[e].poll_transmit(&mut buf) {
            let src = self.local_of(e, t.tunnel);
            self.put(src, t.dst, buf[..t.len].to_vec());
        }
        while self.engines[e].poll_event().is_some() {}
    }

    fn deliver(&mut self, src: SocketAddr, dst: SocketAddr, bytes: Vec<u8>) {
        let dst = self
            .nat
            .iter()
            .find(|(_, public)| **public == dst)
            .map_or(dst, |(private, _)| *private);
        let Some(&e) = self.owner.get(&dst) else {
            return;
        };
        let mut buf = vec![0u8; bytes.len() + 64];
        buf[..bytes.len()].copy_from_slice(&bytes);
        let now = self.now;
        let r = self.engines[e].handle_datagram_at(dst, src, &mut buf, 0..bytes.len(), now);
        if let NetAction::Deliver { .. } = r {
            self.delivered[e] += 1;
        }
        self.drain(e);
    }

    /// Sends one inner UDP packet from the hub's LAN to branch `b`'s and from branch `b` back.
    fn traffic(&mut self, b: u32) {
        for (e, src, dst) in [
            (0, [10, 0, 0, 10], branch_subnet(b)),
            (1 + b as usize, [0; 4], branch_subnet(b)),
        ] {
            let (s, d) = match (e, dst.addr()) {
                (0, IpAddr::V4(d)) => (src, d.octets()),
                (_, IpAddr::V4(s)) => (s.octets(), [10, 0, 0, 10]),
                _ => unreachable!(),
            };
            let (s, d) = if e == 0 {
                (s, {
                    let mut d = d;
                    d[3] = 10;
                    d
                })
            } else {
                let mut s = s;
                s[3] = 10;
                (s, d)
            };
            let (mut buf, packet) = common::ipv4_udp(s, d, 60);
            let now = self.now;
            if let TunAction::Send {
                tunnel,
                dst,
                datagram,
            } = self.engines[e].handle_tun_packet(&mut buf, packet, now)
            {
                let src = self.local_of(e, tunnel);
                self.put(src, dst, buf[datagram].to_vec());
            }
            self.drain(e);
        }
    }

    fn run_until(&mut self, t: Duration) {
        let end = self.base + t;
        for e in 0..self.engines.len() {
            self.drain(e);
        }
        loop {
            let next_pkt = self.queue.peek().map(|Reverse((at, _))| *at);
            let next_timer = self.engines.iter().filter_map(Engine::poll_timeout).min();
            let Some(next) = [next_pkt, next_timer]
                .into_iter()
                .flatten()
                .min()
                .filter(|n| *n <= end)
            else {
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
                let (src, dst, bytes) = self.inflight.remove(&id).unwrap();
                self.deliver(src, dst, bytes);
            }
            for e in 0..self.engines.len() {
                if self.engines[e].poll_timeout().is_some_and(|t| t <= now) {
                    self.engines[e].handle_timeout(now);
                    self.drain(e);
                }
            }
        }
    }

    /// The hub's states per branch: (tunnel1, tunnel2).
    fn hub_states(&self) -> BTreeMap<u32, (TunnelState, TunnelState)> {
        let st = self.engines[0].status(self.now);
        st.connections
            .iter()
            .map(|c| {
                let b: u32 = c.name.trim_start_matches("branch").parse().unwrap();
                (b, (c.tunnels[0].state, c.tunnels[1].state))
            })
            .collect()
    }
}

const N: u32 = 50;

#[test]
fn fifty_branches_share_one_hub_port_and_a_silenced_branch_tunnel_is_the_only_one_down() {
    let mut hub = Hub::new(N, Some(7));
    hub.run_until(ms(5_000));
    let up = TunnelState::Up;
    for (b, s) in hub.hub_states() {
        if b == 7 {
            // The branch with the wrong PSK never comes up and disturbs nobody.
            assert_ne!(s.0, up, "branch 7 came up with a wrong PSK");
            assert_ne!(s.1, up, "branch 7 came up with a wrong PSK");
        } else {
            assert_eq!(s, (up, up), "branch {b}");
        }
    }
    assert!(
        hub.engines[0].drop_counters().get(DropReason::Auth) > 0,
        "the wrong-PSK branch's initiations were counted as auth drops"
    );
    // Traffic to and from every branch.
    for b in 0..N {
        hub.traffic(b);
    }
    hub.run_until(ms(5_100));
    for b in (0..N).filter(|&b| b != 7) {
        assert_eq!(
            hub.delivered[1 + b as usize],
            1,
            "branch {b} got its packet from the hub"
        );
    }
    assert_eq!(
        hub.delivered[0],
        u64::from(N - 1),
        "the hub got one packet from each branch"
    );
    // A silent cut of branch 3's first path: only that tunnel goes Down, within the DPD bound.
    hub.cut.insert(branch_addr(3, 0));
    hub.run_until(ms(5_100 + 1_250 + 50));
    for (b, s) in hub.hub_states() {
        match b {
            3 => assert_eq!(s, (TunnelState::Down, up), "branch 3"),
            7 => {}
            _ => assert_eq!(s, (up, up), "branch {b} was disturbed"),
        }
    }
    // Every branch rekeys on the shared port (rekey_after 120 s) and stays up; no ESP packet
    // ever lands on an SPI the hub does not know.
    hub.cut.clear();
    hub.run_until(ms(300_000));
    for (b, s) in hub.hub_states() {
        if b != 7 {
            assert_eq!(s, (up, up), "branch {b} after rekeys");
        }
    }
    assert_eq!(
        hub.engines[0].drop_counters().get(DropReason::UnknownSpi),
        0
    );
}

#[test]
fn a_branch_that_roams_to_a_new_source_keeps_its_tunnel() {
    let mut hub = Hub::new(4, None);
    hub.run_until(ms(3_000));
    assert!(hub.hub_states().values().all(|s| s.0 == TunnelState::Up));
    // Branch 2's tunnel 1 is now seen from another port (NAT rebinding): the hub follows it
    // from authenticated packets only and keeps the tunnel up.
    let old = branch_addr(2, 0);
    let new = SocketAddr::new(old.ip(), 61_000);
    hub.nat.insert(old, new);
    hub.run_until(ms(7_000));
    let st = hub.engines[0].status(hub.now);
    let t1 = &st.connections[2].tunnels[0];
    assert_eq!(t1.state, TunnelState::Up);
    assert_eq!(
        t1.remote,
        Some(new),
        "the hub follows the branch to its new source"
    );
}

#[test]
fn a_timer_event_handles_a_few_tunnels_not_all_of_them_and_keepalives_share_wake_ups() {
    let mut hub = Hub::new(N, None);
    hub.run_until(ms(5_000));
    assert!(hub.hub_states().values().all(|s| s.0 == TunnelState::Up));
    let (calls0, visits0) = hub.engines[0].timer_work_for_testing();
    hub.run_until(ms(15_000));
    let (calls, visits) = hub.engines[0].timer_work_for_testing();
    let (calls, visits) = (calls - calls0, visits - visits0);
    let per_call = visits as f64 / calls as f64;
    eprintln!(
        "hub with {} tunnels, 10 s idle: {calls} timer events, {visits} owners handled, {per_call:.2} each",
        2 * N
    );
    // 100 tunnels each with keepalives at 4/s (one per 250 ms dpd_interval): ~4000 keepalives
    // in 10 s. A scan would visit all 100 tunnels (and 50 connections) per event; one wake-up per
    // keepalive would make ~4000 events. Keepalives due within their slack of another timer are
    // served by its wake-up (KEEPALIVE_SLACK_PCT: 1 % of 250 ms = 2.5 ms; ~4 keepalives fall
    // due per ms here).
    assert!(visits > 3_500, "{visits} owners handled in 10 s");
    assert!(per_call < 20.0, "{per_call:.2} owners per timer event");
    assert!(
        calls < 2_000,
        "{calls} timer events for {visits} keepalives: they do not share wake-ups"
    );
}

#[test]
fn the_keepalive_slack_is_the_shortest_of_any_connection() {
    let mut cfg = EngineConfig {
        private_key: Zeroizing::new(key(0)),
        mtu: 1400,
        connections: Vec::new(),
    };
    let now = Instant::now();
    let engine = Engine::new(cfg.clone(), [1; 32], now, Duration::ZERO);
    assert_eq!(engine.keepalive_slack(), Duration::ZERO);
    let mut slow = connection("slow", "10.0.0.0/16", "10.1.0.0/16");
    slow.dpd_interval = ms(250);
    let mut fast = connection("fast", "10.0.0.0/16", "10.2.0.0/16");
    fast.dpd_interval = ms(10);
    cfg.connections = vec![slow.clone()];
    let engine = Engine::new(cfg.clone(), [1; 32], now, Duration::ZERO);
    // 2 % of a keepalive interval of 125 ms.
    assert_eq!(engine.keepalive_slack(), Duration::from_micros(2500));
    cfg.connections = vec![slow, fast];
    let engine = Engine::new(cfg, [1; 32], now, Duration::ZERO);
    assert_eq!(engine.keepalive_slack(), Duration::from_micros(100));
}
