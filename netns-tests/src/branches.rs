//! The branch emulator: one process (one thread) that plays N branch gateways against one real
//! head-end, for the scale bench (`lab scale`) and its CI-sized test.
//!
//! Each branch is a sans-IO [`tandem_engine::Engine`] — the real protocol: handshakes, keepalives,
//! DPD, rekeys, failover — with one connection of two tunnels, each tunnel on its own UDP socket
//! bound to the branch's own address (`branch_addr(b, t)`), all in one namespace. A
//! single-threaded tokio runtime drives them: one task per branch waits on its two sockets and
//! the engine's next deadline, so a wake-up costs one branch's work, not a scan of all N.
//!
//! Traffic: when probing is on, every branch sends an ICMP echo request from its LAN address
//! (`.1` of its subnet) to the hub's LAN address through its engine (`handle_tun_packet`) at the
//! probe interval; the hub's kernel answers through the hub daemon, and the branch counts the
//! echo replies its engine delivers. `sent - received` after the traffic has drained is exact
//! loss per branch.
//!
//! Silencing a tunnel drops everything its socket would send or receive, so its peer sees a
//! silent path (the DPD case); the branch engine itself keeps running.
//!
//! Branches start and stop on command (a reload that adds and removes branches); state is
//! shared with the caller through atomics, read without stopping the emulator.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tandem_engine::{
    ConnectionConfig, Engine, EngineConfig, Event, HEADROOM, MAX_CONTROL_DATAGRAM, NetAction,
    TAILROOM, TunAction, TunnelConfig, TunnelId, TunnelState,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::Error;

/// The hub's LAN address, answered by the hub's kernel (a /32 on its loopback).
pub const HUB_LAN: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The hub side's `local_subnets` (the branches' `remote_subnets`).
pub const HUB_SUBNET: &str = "10.0.0.0/16";
/// ICMP identifier of the emulator's echo requests (its replies are recognised by it).
const ICMP_ID: u16 = 0x7a4d;
/// Inner MTU of the branch engines: the lab's underlay is 1500 bytes.
const MTU: u16 = 1400;
/// Longest sleep of a branch task with nothing scheduled: it re-reads the probe setting.
const IDLE_WAKE: Duration = Duration::from_millis(200);

/// Branch `b`'s address on its tunnel `t` (0 or 1): each tunnel its own "ISP" address, as in
/// the engine's hub simulator; up to 250 * 256 branches.
pub fn branch_addr(b: u32, t: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(100, 80 + t as u8, (b / 250) as u8, (b % 250) as u8 + 1);
    SocketAddr::new(IpAddr::V4(ip), 4500)
}

/// Branch `b`'s LAN prefix, `10.{100 + b / 250}.{b % 250}.0/24`.
pub fn branch_subnet(b: u32) -> String {
    format!("10.{}.{}.0/24", 100 + b / 250, b % 250)
}

/// Branch `b`'s LAN address, the probes' source.
pub fn branch_lan(b: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, (100 + b / 250) as u8, (b % 250) as u8, 1)
}

/// A deterministic X25519 private key for party `n` (0 is the hub): the bench generates
/// hundreds of keys, and the emulator needs the branches' private keys anyway.
pub fn private_key(n: u32, run: u32) -> [u8; 32] {
    let mut k = [0x42u8; 32];
    k[..4].copy_from_slice(&(n + 1).to_be_bytes());
    k[4..8].copy_from_slice(&run.to_be_bytes());
    k
}

/// The public key of [`private_key`]`(n, run)`.
pub fn public_key(n: u32, run: u32) -> [u8; 32] {
    tandem_crypto::StaticSecret::from_bytes(private_key(n, run))
        .public_key()
        .to_bytes()
}

/// Branch `b`'s tunnel `t` PSK: distinct per tunnel, so the hub tells initiations apart.
pub fn psk(b: u32, t: usize, run: u32) -> [u8; 32] {
    let mut p = [0x5au8; 32];
    p[..4].copy_from_slice(&b.to_be_bytes());
    p[4] = t as u8;
    p[8..12].copy_from_slice(&run.to_be_bytes());
    p
}

/// What every branch shares: the hub's endpoint and key, the timers, the run's key seed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The hub's one port.
    pub hub: SocketAddr,
    /// The hub's public key.
    pub hub_public: [u8; 32],
    /// Keys and PSKs are derived from this (a new one per run: no state carries over).
    pub run: u32,
    /// Number of branches the emulator can play (indices `0..capacity`).
    pub capacity: u32,
    /// The branches' `dpd_interval` (the hub's must match for the detection figures).
    pub dpd_interval: Duration,
    /// The branches' `dpd_timeout`.
    pub dpd_timeout: Duration,
}

/// Per-branch state readable while the emulator runs.
#[derive(Debug, Default)]
pub struct BranchState {
    up: [AtomicBool; 2],
    silenced: [AtomicBool; 2],
    running: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    branches: Vec<BranchState>,
    /// Probe interval in microseconds; 0 = no probes.
    probe_us: AtomicU64,
    /// Probes carry their send time as nanoseconds since this instant.
    epoch: Instant,
    /// Largest probe round-trip time since the last [`Emulator::take_rtt_max`], microseconds.
    rtt_max_us: AtomicU64,
}

#[derive(Debug)]
enum Command {
    Start(u32),
    Stop(u32),
    Shutdown,
}

/// Probe counters of one branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Probes {
    /// Echo requests handed to the engine.
    pub sent: u64,
    /// Echo replies delivered by the engine.
    pub received: u64,
}

/// The running emulator. Dropping it stops every branch and joins the thread.
#[derive(Debug)]
pub struct Emulator {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<(), Error>>>,
}

impl Emulator {
    /// Starts the emulator thread inside the namespace `netns` (a name under `/run/netns`),
    /// with no branch running yet.
    pub fn start(netns: &str, plan: Plan) -> Result<Self, Error> {
        let shared = Arc::new(Shared {
            branches: (0..plan.capacity).map(|_| BranchState::default()).collect(),
            probe_us: AtomicU64::new(0),
            epoch: Instant::now(),
            rtt_max_us: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let path = format!("/run/netns/{netns}");
        let ns = File::open(&path).map_err(|e| Error::Io(path.clone(), e))?;
        let sh = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("branches".into())
            .spawn(move || {
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| Error::Io(path, e.into()))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Io("tokio runtime".into(), e))?;
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, control_loop(plan, sh, rx));
                Ok(())
            })
            .map_err(|e| Error::Spawn("branch emulator thread".into(), e))?;
        Ok(Emulator {
            tx,
            shared,
            thread: Some(thread),
        })
    }

    /// Starts branch `b` (binds its sockets, creates its engine: it initiates at once).
    pub fn start_branch(&self, b: u32) {
        let _ = self.tx.send(Command::Start(b));
    }

    /// Stops branch `b` (its engine and sockets are dropped: to the hub, a silent branch).
    pub fn stop_branch(&self, b: u32) {
        let _ = self.tx.send(Command::Stop(b));
    }

    /// Silences (or un-silences) branch `b`'s tunnel `t`: nothing sent or received on it.
    pub fn silence(&self, b: u32, t: usize, on: bool) {
        self.shared.branches[b as usize].silenced[t].store(on, Ordering::Relaxed);
    }

    /// Probes every running branch at `interval`; `None` stops probing.
    pub fn probe(&self, interval: Option<Duration>) {
        let us = interval.map_or(0, |i| i.as_micros().max(1) as u64);
        self.shared.probe_us.store(us, Ordering::Relaxed);
    }

    /// Whether branch `b`'s tunnel `t` is Up on the branch side.
    pub fn is_up(&self, b: u32, t: usize) -> bool {
        self.shared.branches[b as usize].up[t].load(Ordering::Relaxed)
    }

    /// Number of Up tunnels over the branches in `range`.
    pub fn up_count(&self, range: std::ops::Range<u32>) -> usize {
        range
            .map(|b| (0..2).filter(|&t| self.is_up(b, t)).count())
            .sum()
    }

    /// Branch `b`'s probe counters.
    pub fn probes(&self, b: u32) -> Probes {
        let s = &self.shared.branches[b as usize];
        Probes {
            sent: s.sent.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
        }
    }

    /// The largest probe round-trip time (request handed to the branch engine -> reply delivered
    /// by it) over every branch since the last call, and resets it. It includes the emulator's
    /// own scheduling (one thread for every branch), so compare it with a window measured the
    /// same way.
    pub fn take_rtt_max(&self) -> Duration {
        Duration::from_micros(self.shared.rtt_max_us.swap(0, Ordering::Relaxed))
    }

    /// Whether branch `b` is running.
    pub fn is_running(&self, b: u32) -> bool {
        self.shared.branches[b as usize]
            .running
            .load(Ordering::Relaxed)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn control_loop(plan: Plan, shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Command>) {
    let plan = Arc::new(plan);
    let mut tasks: Vec<Option<tokio::task::JoinHandle<()>>> =
        (0..plan.capacity).map(|_| None).collect();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Start(b) => {
                if let Some(slot) = tasks.get_mut(b as usize) {
                    if slot.as_ref().is_none_or(|h| h.is_finished()) {
                        shared.branches[b as usize]
                            .running
                            .store(true, Ordering::Relaxed);
                        let (p, s) = (Arc::clone(&plan), Arc::clone(&shared));
                        *slot = Some(tokio::task::spawn_local(async move {
                            if let Err(e) = branch(&p, &s, b).await {
                                tracing_free_warn(&format!("branch {b}: {e}"));
                            }
                            s.branches[b as usize]
                                .running
                                .store(false, Ordering::Relaxed);
                        }));
                    }
                }
            }
            Command::Stop(b) => {
                if let Some(h) = tasks.get_mut(b as usize).and_then(Option::take) {
                    h.abort();
                    let _ = h.await;
                }
                let s = &shared.branches[b as usize];
                s.running.store(false, Ordering::Relaxed);
                for up in &s.up {
                    up.store(false, Ordering::Relaxed);
                }
            }
            Command::Shutdown => break,
        }
    }
    for h in tasks.into_iter().flatten() {
        h.abort();
    }
}

/// The emulator has no logger of its own: a branch that cannot even bind is worth a line on
/// stderr (the bench's output), not a crash of the others.
#[allow(clippy::print_stderr)]
fn tracing_free_warn(msg: &str) {
    eprintln!("branch emulator: {msg}");
}

fn engine_for(plan: &Plan, b: u32) -> Engine {
    let mut c = ConnectionConfig::with_defaults("hub");
    c.local_subnets = vec![branch_subnet(b).parse().expect("a valid prefix")];
    c.remote_subnets = vec![HUB_SUBNET.parse().expect("a valid prefix")];
    c.dpd_interval = plan.dpd_interval;
    c.dpd_timeout = plan.dpd_timeout;
    for t in 0..2 {
        c.tunnels.push(TunnelConfig {
            name: format!("tunnel{}", t + 1),
            local: Some(branch_addr(b, t)),
            remote: Some(plan.hub),
            peer_public_key: plan.hub_public,
            psk: Zeroizing::new(psk(b, t, plan.run)),
            priority: t as u32 + 1,
            ike: None,
        });
    }
    let cfg = EngineConfig {
        private_key: Zeroizing::new(private_key(1 + b, plan.run)),
        mtu: MTU,
        connections: vec![c],
    };
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&b.to_be_bytes());
    seed[4..8].copy_from_slice(&plan.run.to_be_bytes());
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Engine::new(cfg, seed, Instant::now(), unix)
}

fn bind(addr: SocketAddr) -> Result<UdpSocket, Error> {
    let s = std::net::UdpSocket::bind(addr).map_err(|e| Error::Io(format!("bind {addr}"), e))?;
    s.set_nonblocking(true)
        .map_err(|e| Error::Io(format!("nonblocking {addr}"), e))?;
    UdpSocket::from_std(s).map_err(|e| Error::Io(format!("register {addr}"), e))
}

/// One branch gateway: its engine, its two sockets, its probes.
async fn branch(plan: &Plan, shared: &Shared, b: u32) -> Result<(), Error> {
    let st = &shared.branches[b as usize];
    let socks = [bind(branch_addr(b, 0))?, bind(branch_addr(b, 1))?];
    let mut engine = engine_for(plan, b);
    let ids: Vec<(TunnelId, usize)> = engine
        .tunnels()
        .filter_map(|(id, info)| {
            let t = (0..2).find(|&t| info.local == Some(branch_addr(b, t)))?;
            Some((id, t))
        })
        .collect();
    let index = |id: TunnelId| ids.iter().find(|(i, _)| *i == id).map(|(_, t)| *t);
    let mut rx = [vec![0u8; 2048], vec![0u8; 2048]];
    let mut tx = vec![0u8; MAX_CONTROL_DATAGRAM.max(HEADROOM + 128 + TAILROOM)];
    // Spread the branches' probes over the interval instead of sending them in one burst.
    let mut next_probe =
        Instant::now() + Duration::from_micros(u64::from(b % 1000) * 997 % 100_000);
    let mut seq: u16 = 0;
    loop {
        // Outputs first: datagrams to send, events to mirror.
        while let Some(t) = engine.poll_transmit(&mut tx) {
            if let Some(i) = index(t.tunnel) {
                if !st.silenced[i].load(Ordering::Relaxed) {
                    let _ = socks[i].try_send_to(&tx[..t.len], t.dst);
                }
            }
        }
        while let Some(ev) = engine.poll_event() {
            if let Event::TunnelState { tunnel, to, .. } = ev {
                if let Some(i) = index(tunnel) {
                    st.up[i].store(to == TunnelState::Up, Ordering::Relaxed);
                }
            }
        }
        let probe_us = shared.probe_us.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut wake = now + IDLE_WAKE;
        if let Some(t) = engine.poll_timeout() {
            wake = wake.min(t);
        }
        if probe_us > 0 {
            wake = wake.min(next_probe);
        }
        let [r0, r1] = &mut rx;
        tokio::select! {
            r = socks[0].recv_from(r0) => if let Ok((n, from)) = r {
                on_datagram(&mut engine, shared, b, 0, r0, n, from);
            },
            r = socks[1].recv_from(r1) => if let Ok((n, from)) = r {
                on_datagram(&mut engine, shared, b, 1, r1, n, from);
            },
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        let now = Instant::now();
        if engine.poll_timeout().is_some_and(|t| t <= now) {
            engine.handle_timeout(now);
        }
        if probe_us > 0 && next_probe <= now {
            let interval = Duration::from_micros(probe_us);
            // After a pause, start again from now rather than catching up in a burst.
            next_probe = (next_probe + interval).max(now);
            seq = seq.wrapping_add(1);
            let stamp = now.saturating_duration_since(shared.epoch).as_nanos() as u64;
            let len = echo_request(&mut tx[HEADROOM..], branch_lan(b), HUB_LAN, seq, stamp);
            st.sent.fetch_add(1, Ordering::Relaxed);
            if let TunAction::Send {
                tunnel,
                dst,
                datagram,
            } = engine.handle_tun_packet(&mut tx, HEADROOM..HEADROOM + len, now)
            {
                if let Some(i) = index(tunnel) {
                    if !st.silenced[i].load(Ordering::Relaxed) {
                        let _ = socks[i].try_send_to(&tx[datagram], dst);
                    }
                }
            }
        }
    }
}

fn on_datagram(
    engine: &mut Engine,
    shared: &Shared,
    b: u32,
    t: usize,
    buf: &mut [u8],
    n: usize,
    from: SocketAddr,
) {
    let st = &shared.branches[b as usize];
    if st.silenced[t].load(Ordering::Relaxed) {
        return;
    }
    let now = Instant::now();
    if let NetAction::Deliver { packet, .. } =
        engine.handle_datagram_at(branch_addr(b, t), from, buf, 0..n, now)
    {
        let p = &buf[packet];
        if is_echo_reply(p) {
            st.received.fetch_add(1, Ordering::Relaxed);
            let sent = Duration::from_nanos(echo_stamp(p));
            let rtt = now.saturating_duration_since(shared.epoch + sent);
            shared
                .rtt_max_us
                .fetch_max(rtt.as_micros() as u64, Ordering::Relaxed);
        }
    }
}

/// Length of the echo request: IPv4 header 20 + ICMP header 8 + 36 bytes of payload (a
/// ping-sized 64-byte packet).
const ECHO_LEN: usize = 64;

/// Where an echo request carries its send time (the first 8 bytes of the ICMP payload; the
/// reply echoes them).
const STAMP: std::ops::Range<usize> = 28..36;

/// Writes an IPv4 ICMP echo request into `buf` carrying `stamp`; returns its length.
fn echo_request(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, seq: u16, stamp: u64) -> usize {
    use tandem_engine::checksum::checksum;
    let p = &mut buf[..ECHO_LEN];
    p.fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(ECHO_LEN as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 1; // ICMP
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20] = 8; // echo request
    p[24..26].copy_from_slice(&ICMP_ID.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    p[STAMP].copy_from_slice(&stamp.to_be_bytes());
    let icmp_sum = checksum(&p[20..]);
    p[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
    ECHO_LEN
}

/// The send time an echo reply carries back ([`STAMP`]); 0 if it is too short.
fn echo_stamp(p: &[u8]) -> u64 {
    p.get(STAMP)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn is_echo_reply(p: &[u8]) -> bool {
    p.len() >= 28 && p[0] >> 4 == 4 && p[9] == 1 && p[20] == 0 && p[24..26] == ICMP_ID.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_has_valid_checksums_and_its_reply_is_recognised() {
        let mut buf = [0u8; 128];
        let n = echo_request(&mut buf, branch_lan(3), HUB_LAN, 9, 0x0102_0304_0506_0708);
        let p = &buf[..n];
        assert_eq!(echo_stamp(p), 0x0102_0304_0506_0708);
        assert_eq!(tandem_engine::checksum::checksum(&p[..20]), 0);
        assert_eq!(tandem_engine::checksum::checksum(&p[20..]), 0);
        assert!(!is_echo_reply(p));
        let mut r = p.to_vec();
        r[20] = 0;
        assert!(is_echo_reply(&r));
    }

    #[test]
    fn branch_addresses_subnets_and_keys_are_distinct() {
        assert_ne!(branch_addr(0, 0), branch_addr(0, 1));
        assert_ne!(branch_addr(249, 0), branch_addr(250, 0));
        assert_eq!(branch_subnet(251), "10.101.1.0/24");
        assert_ne!(psk(1, 0, 7), psk(1, 1, 7));
        assert_ne!(public_key(0, 1), public_key(1, 1));
    }
}
