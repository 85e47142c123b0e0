//! The gateway: the flat table of tunnels, one failover selector per connection, the router.
//!
//! Packet flow, TUN -> network: parse the inner header -> route (longest prefix) -> source
//! selector -> MTU (ICMP too-big back into the TUN) -> MSS clamp -> failover selector picks the
//! tunnel (active-standby: the active one; active-active: rendezvous hash of the 5-tuple) ->
//! seal in place. Network -> TUN: tunnel (by socket) -> handshake or ESP open in place ->
//! liveness/selector update -> traffic selectors -> deliver. Drops are counted per reason and
//! returned as values; nothing on these paths allocates.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tandem_crypto::StaticSecret;
use tandem_crypto::handshake::{CheckedInitiation, CookieJar, MessageType, mac1_key_for};

use crate::any_tunnel::Tunnel;
use crate::config::{ConnectionConfig, EngineConfig, Mode, Routing};
use crate::drop::{DropCounters, DropReason};
use crate::failover::{PinError, Selector, Switch};
use crate::inner::{self, IcmpError, InnerHeader};
use crate::port::SharedPort;
use crate::router::{ConnectionId, PrefixSet, Router};
use crate::schedule::{Schedule, Window};
use crate::tunnel::{Ctx, Received, handshake_drop};
use crate::types::{
    AdminError, ConnectionStatus, Event, FailoverTarget, NetAction, ReloadSummary, Silence, Status,
    Transmit, TunAction, TunnelCounters, TunnelId, TunnelInfo, TunnelState, TunnelStatus,
};

#[derive(Debug)]
struct Conn {
    cfg: ConnectionConfig,
    local: PrefixSet,
    remote: PrefixSet,
    selector: Selector,
    members: Vec<TunnelId>,
}

/// The gateway engine.
pub struct Engine {
    secret: StaticSecret,
    mtu: u16,
    conns: Vec<Conn>,
    tunnels: Vec<Tunnel>,
    infos: Vec<TunnelInfo>,
    router: Router,
    rng: ChaCha20Rng,
    events: VecDeque<Event>,
    drops: DropCounters,
    epoch: Instant,
    unix_epoch: Duration,
    keylog: bool,
    /// Deadlines and tunnels with output: O(log n) per event.
    schedule: Schedule,
    /// `handle_timeout` calls, and the timer owners (tunnels, connections) they handled.
    timer_calls: u64,
    timer_visits: u64,
    /// The latest `now` seen (poll_transmit takes no time but checks SA ages).
    last_now: Instant,
    /// Start of the current one-second ICMP rate-limit window, and errors sent in it.
    icmp_window: Instant,
    icmp_sent: u32,
    /// Every inbound SPI and its tunnel (see `Ctx::spis`).
    spis: HashMap<u32, TunnelId>,
    /// Local ports with a fixed address, each shared by its tunnels.
    ports: Vec<SharedPort>,
    port_of_local: HashMap<SocketAddr, usize>,
    /// `mac1` key of messages addressed to us (our static public key).
    own_mac1_key: [u8; 32],
    /// Where a shared port's initiation is answered before the tunnel is known.
    scratch: [u8; tandem_crypto::handshake::MAX_MESSAGE_LEN],
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("tunnels", &self.tunnels)
            .field("drops", &self.drops)
            .finish_non_exhaustive()
    }
}

/// Tuning: ICMP errors generated per second at most (RFC 1812 §4.3.2.8 asks routers to limit
/// them); a burst of oversized packets from a host is answered, a flood is not amplified.
pub const ICMP_ERRORS_PER_SECOND: u32 = 1000;

/// Tuning: the event queue is allocated once with this capacity (a burst of state changes on
/// every tunnel fits; it only grows if the daemon stops draining it).
const EVENT_QUEUE: usize = 256;

/// Groups the tunnels with a fixed local address into shared ports, one per address.
fn shared_ports(
    infos: &[TunnelInfo],
    ikev2: &[bool],
    secret: &StaticSecret,
) -> (Vec<SharedPort>, HashMap<SocketAddr, usize>) {
    let public = secret.public_key();
    let mut ports: Vec<SharedPort> = Vec::new();
    let mut by_local = HashMap::new();
    for (i, info) in infos.iter().enumerate() {
        let Some(local) = info.local else { continue };
        let p = *by_local.entry(local).or_insert_with(|| {
            ports.push(SharedPort::new(local, CookieJar::new(&public)));
            ports.len() - 1
        });
        ports[p].members.push(TunnelId(i as u16));
        ports[p].ikev2 |= ikev2[i];
    }
    // IKEv2 tunnels with a bare local address also answer on its port 500 (the config keeps
    // every other tunnel off that address and port).
    for (i, info) in infos.iter().enumerate() {
        let Some(local) = info.ike_local else {
            continue;
        };
        let p = *by_local.entry(local).or_insert_with(|| {
            ports.push(SharedPort::new(local, CookieJar::new(&public)));
            ports.len() - 1
        });
        ports[p].members.push(TunnelId(i as u16));
        ports[p].plain_ike = true;
    }
    (ports, by_local)
}

fn build(
    cfg: &EngineConfig,
    secret: &StaticSecret,
    epoch: Instant,
    now: Instant,
    mut reuse: impl FnMut(&ConnectionConfig, &crate::config::TunnelConfig) -> Option<Tunnel>,
) -> (Vec<Conn>, Vec<Tunnel>, Vec<TunnelInfo>, Router) {
    let mut conns = Vec::new();
    let mut tunnels = Vec::new();
    let mut infos = Vec::new();
    for (ci, c) in cfg.connections.iter().enumerate() {
        let conn_id = ConnectionId(ci as u16);
        let mut members = Vec::new();
        for t in &c.tunnels {
            let id = TunnelId(tunnels.len() as u16);
            let tunnel = match reuse(c, t) {
                Some(mut old) => {
                    old.renumber(id, conn_id);
                    old
                }
                None => Tunnel::new(id, conn_id, t, c, secret, epoch, now),
            };
            tunnels.push(tunnel);
            infos.push(TunnelInfo {
                name: t.name.clone(),
                connection: c.name.clone(),
                connection_id: conn_id,
                local: t.local,
                remote: t.remote,
                ike_local: t.ike.as_ref().and_then(|i| i.local_ike),
                priority: t.priority,
            });
            members.push(id);
        }
        conns.push(Conn {
            local: PrefixSet::new(&c.local_subnets),
            remote: PrefixSet::new(&c.remote_subnets),
            selector: Selector::new(c.mode, c.failback, c.tunnels.iter().map(|t| t.priority)),
            members,
            cfg: c.clone(),
        });
    }
    // Connections with an interface per tunnel are routed by the kernel, not by us.
    let router = Router::new(
        cfg.connections
            .iter()
            .enumerate()
            .filter(|(_, c)| c.routing == Routing::Static)
            .map(|(i, c)| (ConnectionId(i as u16), c.remote_subnets.as_slice())),
    );
    (conns, tunnels, infos, router)
}

impl Engine {
    /// Builds the engine at `now`; `unix_now` is the wall clock (since the Unix epoch) at `now`.
    #[must_use]
    pub fn new(cfg: EngineConfig, rng_seed: [u8; 32], now: Instant, unix_now: Duration) -> Self {
        let secret = StaticSecret::from_bytes(*cfg.private_key);
        let (conns, tunnels, infos, router) = build(&cfg, &secret, now, now, |_, _| None);
        let ikev2: Vec<bool> = tunnels.iter().map(Tunnel::is_ike).collect();
        let (ports, port_of_local) = shared_ports(&infos, &ikev2, &secret);
        let own_mac1_key = mac1_key_for(&secret.public_key());
        let mut engine = Engine {
            secret,
            mtu: cfg.mtu,
            conns,
            tunnels,
            infos,
            router,
            rng: ChaCha20Rng::from_seed(rng_seed),
            events: VecDeque::with_capacity(EVENT_QUEUE),
            drops: DropCounters::default(),
            epoch: now,
            unix_epoch: unix_now,
            keylog: false,
            schedule: Schedule::new(0, 0, now),
            timer_calls: 0,
            timer_visits: 0,
            last_now: now,
            icmp_window: now,
            icmp_sent: 0,
            spis: HashMap::new(),
            ports,
            port_of_local,
            own_mac1_key,
            scratch: [0; tandem_crypto::handshake::MAX_MESSAGE_LEN],
        };
        engine.reschedule_all();
        engine
    }

    /// Rebuilds the schedule from every tunnel and connection (start, reload).
    fn reschedule_all(&mut self) {
        self.schedule = Schedule::new(self.tunnels.len(), self.conns.len(), self.epoch);
        // Room for every SPI the tunnels can hold at once (confirmed slots, one unconfirmed, one
        // in flight), so installing an SA never grows the table on the packet path.
        let spis = self.tunnels.len() * (crate::tunnel::IN_SLOTS + 2);
        self.spis.reserve(spis.saturating_sub(self.spis.len()));
        for i in 0..self.tunnels.len() {
            self.touch(i);
        }
        for c in 0..self.conns.len() {
            self.touch_conn(c);
        }
    }

    /// Tunnel `i` was handed work: its deadline may have moved and it may have output.
    fn touch(&mut self, i: usize) {
        let at = self.tunnels[i].poll_window();
        self.schedule.set(Schedule::tunnel_key(i), at);
        self.schedule.mark_ready(i);
    }

    /// Connection `c`'s selector may have a new failback deadline.
    fn touch_conn(&mut self, c: usize) {
        let at = self.conns[c].selector.next_deadline().map(Window::exact);
        let key = self.schedule.conn_key(c);
        self.schedule.set(key, at);
    }

    /// Emit [`Event::SaInstalled`] with key material for the debugging key log (docs/protocol.md).
    pub fn set_keylog(&mut self, on: bool) {
        self.keylog = on;
    }

    /// Every tunnel with its static facts.
    pub fn tunnels(&self) -> impl Iterator<Item = (TunnelId, &TunnelInfo)> {
        self.infos
            .iter()
            .enumerate()
            .map(|(i, t)| (TunnelId(i as u16), t))
    }

    /// The shortest keepalive slack of any connection: [`KEEPALIVE_SLACK_PCT`](crate::KEEPALIVE_SLACK_PCT)
    /// % of its `dpd_interval` (2.5 ms at the defaults). Zero without connections. A keepalive
    /// may be sent this much early; the data plane may read control datagrams this much late
    /// (docs/protocol.md, "Timers").
    #[must_use]
    pub fn keepalive_slack(&self) -> Duration {
        self.conns
            .iter()
            .map(|c| crate::tunnel::keepalive_slack(c.cfg.dpd_interval))
            .min()
            .unwrap_or(Duration::ZERO)
    }

    /// One tunnel's static facts (O(1), unlike searching [`Engine::tunnels`]).
    #[must_use]
    pub fn tunnel_info(&self, tunnel: TunnelId) -> Option<&TunnelInfo> {
        self.infos.get(usize::from(tunnel.0))
    }

    /// Counters of one tunnel.
    #[must_use]
    pub fn tunnel_counters(&self, tunnel: TunnelId) -> Option<&TunnelCounters> {
        self.tunnels
            .get(usize::from(tunnel.0))
            .map(|t| t.counters())
    }

    /// State of one tunnel.
    #[must_use]
    pub fn tunnel_state(&self, tunnel: TunnelId) -> Option<TunnelState> {
        self.tunnels.get(usize::from(tunnel.0)).map(|t| t.state())
    }

    /// Current peer endpoint of one tunnel (configured or learned).
    #[must_use]
    pub fn tunnel_remote(&self, tunnel: TunnelId) -> Option<SocketAddr> {
        self.tunnels
            .get(usize::from(tunnel.0))
            .and_then(|t| t.remote())
    }

    /// The active tunnel of a connection.
    #[must_use]
    pub fn active_tunnel(&self, connection: ConnectionId) -> Option<TunnelId> {
        let c = self.conns.get(usize::from(connection.0))?;
        c.selector.active().map(|m| c.members[m])
    }

    /// Connection name by id.
    #[must_use]
    pub fn connection_name(&self, connection: ConnectionId) -> Option<&str> {
        self.conns
            .get(usize::from(connection.0))
            .map(|c| c.cfg.name.as_str())
    }

    /// Connection id by name.
    #[must_use]
    pub fn connection_id(&self, name: &str) -> Option<ConnectionId> {
        self.conns
            .iter()
            .position(|c| c.cfg.name == name)
            .map(|i| ConnectionId(i as u16))
    }

    fn ctx(&mut self) -> (Ctx<'_>, &mut Vec<Tunnel>) {
        (
            Ctx {
                secret: &self.secret,
                spis: &mut self.spis,
                rng: &mut self.rng,
                events: &mut self.events,
                epoch: self.epoch,
                unix_epoch: self.unix_epoch,
                keylog: self.keylog,
            },
            &mut self.tunnels,
        )
    }

    /// Recomputes a tunnel's state and feeds the change to its connection's selector.
    fn refresh(&mut self, idx: usize, now: Instant) {
        let (mut ctx, tunnels) = self.ctx();
        let change = tunnels[idx].refresh(now, &mut ctx);
        self.touch(idx);
        let Some((from, to, cause)) = change else {
            return;
        };
        let t = &self.tunnels[idx];
        let (tid, cid) = (t.id(), t.conn());
        self.events.push_back(Event::TunnelState {
            connection: cid,
            tunnel: tid,
            from,
            to,
            cause,
        });
        let conn = &mut self.conns[usize::from(cid.0)];
        let Some(member) = conn.members.iter().position(|&m| m == tid) else {
            return;
        };
        let sw = conn.selector.set_up(member, to == TunnelState::Up, now);
        self.apply_switch(cid, sw);
        self.touch_conn(usize::from(cid.0));
    }

    fn apply_switch(&mut self, cid: ConnectionId, sw: Option<Switch>) {
        let Some(sw) = sw else { return };
        let conn = &self.conns[usize::from(cid.0)];
        let from = sw.from.map(|m| conn.members[m]);
        let to = sw.to.map(|m| conn.members[m]);
        if let Some(f) = from {
            self.tunnels[usize::from(f.0)].count_failover();
        }
        self.events.push_back(Event::ActiveChanged {
            connection: cid,
            from,
            to,
            reason: sw.reason,
        });
    }

    /// A packet read from the TUN sits at `buf[packet]`; `HEADROOM` bytes before and
    /// `TAILROOM` after are free.
    pub fn handle_tun_packet(
        &mut self,
        buf: &mut [u8],
        packet: Range<usize>,
        now: Instant,
    ) -> TunAction {
        match self.tun_packet(buf, packet, now) {
            Ok(a) => a,
            Err(r) => {
                self.drops.add(r);
                TunAction::Drop(r)
            }
        }
    }

    fn tun_packet(
        &mut self,
        buf: &mut [u8],
        packet: Range<usize>,
        now: Instant,
    ) -> Result<TunAction, DropReason> {
        self.last_now = self.last_now.max(now);
        let pkt = buf.get(packet.clone()).ok_or(DropReason::Malformed)?;
        let hdr = InnerHeader::parse(pkt)?;
        // Ignore bytes past the IP length (the TUN hands exact packets; be strict anyway).
        let packet = packet.start..packet.start + hdr.len;
        let Some(cid) = self.router.lookup(hdr.dst) else {
            return self.icmp_reply(
                buf,
                packet,
                IcmpError::Unreachable,
                DropReason::NoRoute,
                now,
            );
        };
        let conn = &self.conns[usize::from(cid.0)];
        if !conn.local.contains(hdr.src) {
            return Err(DropReason::Selector);
        }
        if hdr.len > usize::from(self.mtu) {
            if !hdr.dont_fragment {
                // IPv4 without DF: carried as is; the outer packet gets fragmented by the kernel.
            } else {
                let kind = IcmpError::TooBig { mtu: self.mtu };
                return self.icmp_reply(buf, packet, kind, DropReason::TooBig, now);
            }
        }
        if conn.cfg.mss_clamp {
            inner::clamp_mss(&mut buf[packet.clone()], &hdr, self.mtu);
        }
        let member = match conn.selector.mode() {
            Mode::ActiveStandby => conn.selector.pick(0),
            Mode::ActiveActive => conn.selector.pick(hdr.flow_hash(&buf[packet.clone()])),
        }
        .ok_or(DropReason::NoTunnel)?;
        let tid = conn.members[member];
        self.seal_on(tid, buf, packet, hdr.src.is_ipv4(), now)
    }

    /// Seals the inner packet at `buf[packet]` on `tunnel`, which must be Up.
    fn seal_on(
        &mut self,
        tunnel: TunnelId,
        buf: &mut [u8],
        packet: Range<usize>,
        ipv4: bool,
        now: Instant,
    ) -> Result<TunAction, DropReason> {
        let idx = usize::from(tunnel.0);
        let t = &mut self.tunnels[idx];
        if t.state() != TunnelState::Up {
            return Err(DropReason::NoTunnel);
        }
        let nh = if ipv4 {
            tandem_crypto::esp::NEXT_HEADER_IPV4
        } else {
            tandem_crypto::esp::NEXT_HEADER_IPV6
        };
        let sealed = t.seal_data(buf, packet, nh, now);
        // Sealing may ask for a rekey (a timer due now).
        if t.poll_timeout().is_some_and(|at| at <= now) {
            self.touch(idx);
        }
        let (dst, datagram) = sealed?;
        Ok(TunAction::Send {
            tunnel,
            dst,
            datagram,
        })
    }

    /// A packet read from `tunnel`'s own interface (`routing = "interfaces"`) sits at
    /// `buf[packet]`, with the same headroom and tailroom as for [`Self::handle_tun_packet`].
    /// The kernel's FIB already chose the tunnel, so there is no route lookup and no failover
    /// selector: traffic selectors (both ends), MTU and MSS clamping apply, and the packet is
    /// sealed on that tunnel if it is Up, else dropped as `no_tunnel`. A tunnel of a
    /// `routing = "static"` connection takes nothing this way (`no_tunnel`).
    pub fn handle_tun_packet_on(
        &mut self,
        tunnel: TunnelId,
        buf: &mut [u8],
        packet: Range<usize>,
        now: Instant,
    ) -> TunAction {
        match self.tun_packet_on(tunnel, buf, packet, now) {
            Ok(a) => a,
            Err(r) => {
                self.drops.add(r);
                TunAction::Drop(r)
            }
        }
    }

    fn tun_packet_on(
        &mut self,
        tunnel: TunnelId,
        buf: &mut [u8],
        packet: Range<usize>,
        now: Instant,
    ) -> Result<TunAction, DropReason> {
        self.last_now = self.last_now.max(now);
        let idx = usize::from(tunnel.0);
        let cid = self.tunnels.get(idx).ok_or(DropReason::NoTunnel)?.conn();
        let pkt = buf.get(packet.clone()).ok_or(DropReason::Malformed)?;
        let hdr = InnerHeader::parse(pkt)?;
        let packet = packet.start..packet.start + hdr.len;
        let conn = &self.conns[usize::from(cid.0)];
        if conn.cfg.routing != Routing::Interfaces {
            return Err(DropReason::NoTunnel);
        }
        // No router in this mode, so the destination is checked here: both selectors hold.
        if !conn.local.contains(hdr.src) || !conn.remote.contains(hdr.dst) {
            return Err(DropReason::Selector);
        }
        if hdr.len > usize::from(self.mtu) && hdr.dont_fragment {
            let kind = IcmpError::TooBig { mtu: self.mtu };
            return self.icmp_reply(buf, packet, kind, DropReason::TooBig, now);
        }
        if conn.cfg.mss_clamp {
            inner::clamp_mss(&mut buf[packet.clone()], &hdr, self.mtu);
        }
        self.seal_on(tunnel, buf, packet, hdr.src.is_ipv4(), now)
    }

    /// Whether `connection` currently has a pinned active tunnel (`tandem failover`), and which.
    #[must_use]
    pub fn pinned_tunnel(&self, connection: ConnectionId) -> Option<TunnelId> {
        let c = self.conns.get(usize::from(connection.0))?;
        c.selector.pinned().map(|m| c.members[m])
    }

    /// The packet at `buf[packet]` is dropped for `reason`; answer it with an ICMP error written
    /// in place, as a router would, within the RFC 1812 §4.3.2.8 rate limit.
    fn icmp_reply(
        &mut self,
        buf: &mut [u8],
        packet: Range<usize>,
        kind: IcmpError,
        reason: DropReason,
        now: Instant,
    ) -> Result<TunAction, DropReason> {
        if now.saturating_duration_since(self.icmp_window) >= Duration::from_secs(1) {
            self.icmp_window = now;
            self.icmp_sent = 0;
        }
        if self.icmp_sent >= ICMP_ERRORS_PER_SECOND {
            return Err(reason);
        }
        let r = inner::write_icmp_error(buf, packet, kind).ok_or(reason)?;
        self.icmp_sent += 1;
        self.drops.add(reason);
        Ok(TunAction::Reply { packet: r })
    }

    /// A datagram received on `tunnel`'s socket from `from` sits at `buf[datagram]`.
    pub fn handle_datagram(
        &mut self,
        tunnel: TunnelId,
        from: SocketAddr,
        buf: &mut [u8],
        datagram: Range<usize>,
        now: Instant,
    ) -> NetAction {
        match self.datagram(tunnel, from, buf, datagram, now) {
            Ok(a) => a,
            Err(r) => {
                self.drops.add(r);
                NetAction::Drop(r)
            }
        }
    }

    /// A datagram received on the socket bound to `local` — a port several tunnels may share
    /// (every tunnel configured with this `local`): the engine finds the tunnel (module
    /// `port`). Tunnels without a fixed `local` have sockets of their own: use
    /// [`Engine::handle_datagram`] for those.
    pub fn handle_datagram_at(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        buf: &mut [u8],
        datagram: Range<usize>,
        now: Instant,
    ) -> NetAction {
        let r = self.datagram_at(local, from, buf, datagram, now);
        match r {
            Ok(a) => a,
            Err(r) => {
                self.drops.add(r);
                NetAction::Drop(r)
            }
        }
    }

    fn datagram_at(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        buf: &mut [u8],
        datagram: Range<usize>,
        now: Instant,
    ) -> Result<NetAction, DropReason> {
        self.last_now = self.last_now.max(now);
        if datagram.end > buf.len() || datagram.start > datagram.end {
            return Err(DropReason::Malformed);
        }
        let port = *self.port_of_local.get(&local).ok_or(DropReason::NoTunnel)?;
        if self.ports[port].plain_ike {
            return self
                .ike_port(port, from, &buf[datagram], now)
                .map(|()| NetAction::Consumed);
        }
        let d = &buf[datagram.clone()];
        let marker = d.len() >= 4 && d[..4] == tandem_crypto::handshake::NON_ESP_MARKER;
        if marker && self.ports[port].ikev2 {
            // IKE: the tunnel whose peer this is (the config gives each IKEv2 path its own
            // remote address on a local address).
            let members = &self.ports[port].members;
            let tunnel = members
                .iter()
                .find(|m| self.tunnels[usize::from(m.0)].remote() == Some(from))
                .or_else(|| {
                    members.iter().find(|m| {
                        self.tunnels[usize::from(m.0)].remote().map(|r| r.ip()) == Some(from.ip())
                    })
                })
                .copied()
                .ok_or(DropReason::Handshake)?;
            return self.datagram(tunnel, from, buf, datagram, now);
        }
        if marker {
            return self
                .port_handshake(port, from, &buf[datagram], now)
                .map(|()| NetAction::Consumed);
        }
        if self.ports[port].ikev2 && d == tandem_ike::nat::NAT_KEEPALIVE {
            // An IPsec peer behind a NAT keeps its mapping open with these (RFC 3948 §2.3): they
            // carry nothing, prove nothing and are no loss.
            return Ok(NetAction::Consumed);
        }
        let spi = tandem_crypto::peek_spi(d).ok_or(DropReason::Malformed)?;
        let tunnel = *self.spis.get(&spi).ok_or(DropReason::UnknownSpi)?;
        if self.tunnels[usize::from(tunnel.0)].config().local != Some(local) {
            // Another port's SA: a packet of that path cannot arrive here.
            return Err(DropReason::UnknownSpi);
        }
        self.datagram(tunnel, from, buf, datagram, now)
    }

    /// A datagram on an IKE port (500): an IKE message without a marker, for the tunnel whose
    /// peer has the source address (RFC 7296 §2.23: IKE_SA_INIT starts here, then moves).
    fn ike_port(
        &mut self,
        port: usize,
        from: SocketAddr,
        msg: &[u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        let members = &self.ports[port].members;
        let idx = members
            .iter()
            .map(|m| usize::from(m.0))
            .find(|&i| self.tunnels[i].remote().map(|r| r.ip()) == Some(from.ip()))
            .ok_or(DropReason::Handshake)?;
        if self.tunnels[idx].is_silenced() {
            return Err(DropReason::Silenced);
        }
        let (mut ctx, tunnels) = self.ctx();
        let r = tunnels[idx].handle_ike_plain(from, msg, now, &mut ctx);
        self.refresh(idx, now);
        r
    }

    /// A handshake message on a shared port.
    fn port_handshake(
        &mut self,
        port: usize,
        from: SocketAddr,
        msg: &[u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        match tandem_crypto::message_type(msg) {
            Some(MessageType::Initiation) => {
                let checked =
                    CheckedInitiation::check(&self.own_mac1_key, msg).map_err(handshake_drop)?;
                let p = &mut self.ports[port];
                if p.under_load(now)
                    && let Some(len) = p
                        .cookies
                        .reply_unless_mac2(
                            &checked,
                            msg,
                            from,
                            now,
                            &mut self.rng,
                            &mut self.scratch,
                        )
                        .map_err(handshake_drop)?
                {
                    if let Ok(bytes) = self.scratch[..len].try_into() {
                        p.cookie_out
                            .push(crate::ring::CookieOut { to: from, bytes });
                    }
                    return Ok(());
                }
                let pre = checked.dh(&self.secret, msg).map_err(handshake_drop)?;
                // Tunnels whose peer was last at this source first: a rekey finds its tunnel at
                // once; a new or roamed peer costs one hash and AEAD per tunnel, no DH.
                let members = &self.ports[port].members;
                let claims = |t: &Tunnel| {
                    !t.is_silenced() && t.responder().is_some_and(|r| r.claims(&pre, msg))
                };
                let found = members
                    .iter()
                    .find(|m| {
                        let t = &self.tunnels[usize::from(m.0)];
                        t.remote() == Some(from) && claims(t)
                    })
                    .or_else(|| {
                        members.iter().find(|m| {
                            let t = &self.tunnels[usize::from(m.0)];
                            t.remote() != Some(from) && claims(t)
                        })
                    })
                    .copied()
                    .ok_or(DropReason::Auth)?;
                let idx = usize::from(found.0);
                let (mut ctx, tunnels) = self.ctx();
                let r = tunnels[idx].handle_claimed_initiation(from, &pre, msg, now, &mut ctx);
                self.refresh(idx, now);
                r
            }
            Some(MessageType::Response | MessageType::CookieReply) => {
                // For a tunnel of ours whose initiation went to this source.
                let mut result = Err(DropReason::Handshake);
                for k in 0..self.ports[port].members.len() {
                    let idx = usize::from(self.ports[port].members[k].0);
                    if self.tunnels[idx].initiation_sent_to() != Some(from)
                        || self.tunnels[idx].is_silenced()
                    {
                        continue;
                    }
                    let (mut ctx, tunnels) = self.ctx();
                    result = tunnels[idx].handle_handshake(from, msg, now, &mut ctx);
                    self.refresh(idx, now);
                    if result.is_ok() {
                        break;
                    }
                }
                result
            }
            None => Err(DropReason::Malformed),
        }
    }

    fn datagram(
        &mut self,
        tunnel: TunnelId,
        from: SocketAddr,
        buf: &mut [u8],
        datagram: Range<usize>,
        now: Instant,
    ) -> Result<NetAction, DropReason> {
        self.last_now = self.last_now.max(now);
        let idx = usize::from(tunnel.0);
        if idx >= self.tunnels.len() || datagram.end > buf.len() || datagram.start > datagram.end {
            return Err(DropReason::Malformed);
        }
        if self.tunnels[idx].is_silenced() {
            return Err(DropReason::Silenced);
        }
        let d = &buf[datagram.clone()];
        if self.tunnels[idx].is_ike() && d == tandem_ike::nat::NAT_KEEPALIVE {
            // A NAT-keepalive (RFC 3948 §2.3), as on a shared port (`datagram_at`).
            return Ok(NetAction::Consumed);
        }
        if d.len() >= 4 && d[..4] == tandem_crypto::handshake::NON_ESP_MARKER {
            let (mut ctx, tunnels) = self.ctx();
            let r = tunnels[idx].handle_handshake(from, d, now, &mut ctx);
            self.refresh(idx, now);
            return r.map(|()| NetAction::Consumed);
        }
        let (mut ctx, tunnels) = self.ctx();
        let r = tunnels[idx].handle_esp(from, buf, datagram, now, &mut ctx);
        self.refresh(idx, now);
        match r? {
            Received::Consumed => Ok(NetAction::Consumed),
            Received::Inner(packet, nh) => {
                let hdr = InnerHeader::parse(&buf[packet.clone()])?;
                let v4 = nh == tandem_crypto::esp::NEXT_HEADER_IPV4;
                if v4 != hdr.src.is_ipv4() {
                    return Err(DropReason::Malformed);
                }
                let conn = &self.conns[usize::from(self.tunnels[idx].conn().0)];
                if !conn.remote.contains(hdr.src) || !conn.local.contains(hdr.dst) {
                    return Err(DropReason::Selector);
                }
                let packet = packet.start..packet.start + hdr.len;
                if conn.cfg.mss_clamp {
                    inner::clamp_mss(&mut buf[packet.clone()], &hdr, self.mtu);
                }
                Ok(NetAction::Deliver {
                    tunnel: TunnelId(idx as u16),
                    packet,
                })
            }
        }
    }

    /// Writes the next control datagram into `buf` (at least [`MAX_CONTROL_DATAGRAM`](crate::MAX_CONTROL_DATAGRAM) bytes).
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        for p in &mut self.ports {
            if let Some(&first) = p.members.first()
                && let Some(crate::ring::CookieOut {
                    to: dst,
                    bytes: reply,
                }) = p.cookie_out.pop()
                && let Some(out) = buf.get_mut(..reply.len())
            {
                out.copy_from_slice(&reply);
                // Any member names the port's socket: they all share it.
                return Some(Transmit {
                    tunnel: first,
                    dst,
                    len: reply.len(),
                    via: None,
                });
            }
        }
        // The tunnels seal with a time only for the reject-after check; use the latest we saw.
        let now = self.last_now;
        while let Some(i) = self.schedule.pop_ready() {
            if let Some((dst, len, via)) = self.tunnels[i].poll_transmit(buf, now) {
                // It may have more: back in the queue, after the others (round robin). Sealing
                // may have asked for a rekey: its deadline may have moved.
                self.touch(i);
                return Some(Transmit {
                    tunnel: TunnelId(i as u16),
                    dst,
                    len,
                    via,
                });
            }
        }
        None
    }

    /// Next event for logs/metrics/notify.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant at which `handle_timeout` must be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.schedule.next()
    }

    /// Acts on every timer due at `now`, and on keepalives due within their slack
    /// ([`KEEPALIVE_SLACK_PCT`](crate::KEEPALIVE_SLACK_PCT)) of `now`: a wake-up for one
    /// deadline also serves the keepalives that fall just after it.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        // Each owner due now is handled once per call: a timer it re-arms at or before `now`
        // is for the next call (the caller loops on `poll_timeout`).
        self.timer_calls += 1;
        let mut budget = self.tunnels.len() + self.conns.len();
        while budget > 0
            && let Some(key) = self.schedule.pop_due(now)
        {
            budget -= 1;
            self.timer_visits += 1;
            match self.schedule.owner(key) {
                Ok(i) => {
                    let (mut ctx, tunnels) = self.ctx();
                    tunnels[i].handle_timeout(now, &mut ctx);
                    self.refresh(i, now);
                }
                Err(ci) => {
                    let sw = self.conns[ci].selector.evaluate(now);
                    self.apply_switch(ConnectionId(ci as u16), sw);
                    self.touch_conn(ci);
                }
            }
        }
    }

    /// docs/cli.md status.
    #[must_use]
    pub fn status(&self, now: Instant) -> Status {
        let _ = now;
        let connections = self
            .conns
            .iter()
            .map(|c| ConnectionStatus {
                name: c.cfg.name.clone(),
                mode: c.cfg.mode,
                protocol: c.cfg.protocol.as_str(),
                active_tunnel: c
                    .selector
                    .active()
                    .map(|m| self.infos[usize::from(c.members[m].0)].name.clone()),
                pinned: c.selector.pinned().is_some(),
                tunnels: c
                    .members
                    .iter()
                    .map(|&tid| {
                        let t = &self.tunnels[usize::from(tid.0)];
                        let c = t.counters();
                        let ike = t.ike_status();
                        let (ike_proposal, esp_proposal) =
                            t.ike_proposals().unwrap_or((None, None));
                        let hex = |spi: Option<u64>| spi.map(|s| format!("{s:016x}"));
                        TunnelStatus {
                            name: t.name().to_owned(),
                            state: t.state(),
                            local: t.config().local,
                            remote: t.remote(),
                            spi_in: t.spi_in(),
                            spi_out: t.spi_out(),
                            last_handshake_unix: c.last_handshake_unix,
                            rx_bytes: c.rx_bytes,
                            tx_bytes: c.tx_bytes,
                            rx_packets: c.rx_packets,
                            tx_packets: c.tx_packets,
                            rtt_ms: c.rtt.map(|d| d.as_secs_f64() * 1000.0),
                            failovers: c.failovers,
                            ike_spi_i: ike.and_then(|i| hex(i.0)),
                            ike_spi_r: ike.and_then(|i| hex(i.1)),
                            ike_state: ike.map(|i| i.2),
                            ike_proposal,
                            esp_proposal,
                        }
                    })
                    .collect(),
            })
            .collect();
        Status { connections }
    }

    fn find(&self, connection: &str) -> Result<usize, AdminError> {
        self.conns
            .iter()
            .position(|c| c.cfg.name == connection)
            .ok_or_else(|| AdminError::UnknownConnection(connection.to_owned()))
    }

    fn find_member(&self, ci: usize, tunnel: &str) -> Result<usize, AdminError> {
        self.conns[ci]
            .members
            .iter()
            .position(|&m| self.tunnels[usize::from(m.0)].name() == tunnel)
            .ok_or_else(|| AdminError::UnknownTunnel(tunnel.to_owned()))
    }

    /// Planned switch (`tandem failover`): make-before-break, since every tunnel is hot.
    pub fn failover(
        &mut self,
        connection: &str,
        target: FailoverTarget,
        now: Instant,
    ) -> Result<(), AdminError> {
        self.last_now = self.last_now.max(now);
        let ci = self.find(connection)?;
        let r = match &target {
            FailoverTarget::Best => self.conns[ci].selector.pin_best_other(now),
            FailoverTarget::To(name) => {
                let m = self.find_member(ci, name)?;
                self.conns[ci].selector.pin(m, now)
            }
            FailoverTarget::Auto => Ok(self.conns[ci].selector.unpin(now)),
        };
        self.touch_conn(ci);
        match r {
            Ok(sw) => {
                self.apply_switch(ConnectionId(ci as u16), sw);
                self.touch_conn(ci);
                Ok(())
            }
            Err(PinError::NotUp) => Err(AdminError::NotUp(match target {
                FailoverTarget::To(n) => n,
                _ => String::new(),
            })),
            Err(PinError::NoOtherUp) => Err(AdminError::NoOtherUp),
        }
    }

    /// Drill silence of one tunnel (docs/cli.md `tandem drill`). `Silent` stops sending and ignores
    /// everything received, exactly as a dead path would: the tunnel is *not* told, it goes Down
    /// through its own DPD timeout (and the peer through its own), and data the selector still
    /// hands it meanwhile is dropped as `silenced` — that is the traffic gap a drill measures.
    /// `Graceful` sends closing notices first and puts the tunnel admin-down at once (the peer
    /// moves within one RTT). `Off` restores it; it comes back Up once both sides hear each other.
    pub fn silence(
        &mut self,
        connection: &str,
        tunnel: &str,
        mode: Silence,
        now: Instant,
    ) -> Result<(), AdminError> {
        self.last_now = self.last_now.max(now);
        let ci = self.find(connection)?;
        let m = self.find_member(ci, tunnel)?;
        let idx = usize::from(self.conns[ci].members[m].0);
        let (mut ctx, tunnels) = self.ctx();
        tunnels[idx].set_silence(mode, now, &mut ctx);
        self.refresh(idx, now);
        Ok(())
    }

    /// Applies a new configuration; tunnels whose settings did not change keep their SAs,
    /// timers and counters.
    pub fn reconfigure(
        &mut self,
        cfg: EngineConfig,
        now: Instant,
    ) -> Result<ReloadSummary, AdminError> {
        self.last_now = self.last_now.max(now);
        if *cfg.private_key != *self.secret.to_bytes() {
            // A new static key invalidates every tunnel: start over with all of them.
            self.secret = StaticSecret::from_bytes(*cfg.private_key);
            self.tunnels.clear();
        }
        self.mtu = cfg.mtu;
        let mut old: Vec<Option<Tunnel>> = std::mem::take(&mut self.tunnels)
            .into_iter()
            .map(Some)
            .collect();
        let old_infos = std::mem::take(&mut self.infos);
        let mut summary = ReloadSummary::default();
        let mut mapping: Vec<Option<TunnelId>> = Vec::new();
        let (conns, tunnels, infos, router) = build(&cfg, &self.secret, self.epoch, now, |c, t| {
            let pos = old_infos.iter().enumerate().position(|(i, info)| {
                info.connection == c.name
                    && info.name == t.name
                    && old[i].as_ref().is_some_and(|o| o.same_settings(t, c))
            });
            mapping.push(pos.map(|p| TunnelId(p as u16)));
            pos.and_then(|p| old[p].take())
        });
        let prev_active: Vec<(String, Option<String>, bool)> = self
            .conns
            .iter()
            .map(|c| {
                (
                    c.cfg.name.clone(),
                    c.selector
                        .active()
                        .map(|m| old_infos[usize::from(c.members[m].0)].name.clone()),
                    c.selector.pinned().is_some(),
                )
            })
            .collect();
        self.conns = conns;
        self.tunnels = tunnels;
        self.infos = infos;
        self.router = router;
        let ikev2: Vec<bool> = self.tunnels.iter().map(Tunnel::is_ike).collect();
        (self.ports, self.port_of_local) = shared_ports(&self.infos, &ikev2, &self.secret);
        self.own_mac1_key = mac1_key_for(&self.secret.public_key());
        self.spis = self
            .tunnels
            .iter()
            .flat_map(|t| t.inbound_spis().map(move |spi| (spi, t.id())))
            .collect();
        for (i, m) in mapping.iter().enumerate() {
            let id = TunnelId(i as u16);
            match m {
                Some(old_id) => {
                    summary.kept.push(id);
                    if *old_id != id {
                        summary.renumbered.push((*old_id, id));
                    }
                }
                None => summary.added.push(id),
            }
        }
        for (i, o) in old.iter().enumerate() {
            if o.is_some() {
                summary.removed.push(TunnelId(i as u16));
            }
        }
        // Re-seed the selectors with the kept tunnels' states, keeping the active tunnel.
        for ci in 0..self.conns.len() {
            let prev = prev_active.iter().find(|p| p.0 == self.conns[ci].cfg.name);
            for m in 0..self.conns[ci].members.len() {
                let idx = usize::from(self.conns[ci].members[m].0);
                let up = self.tunnels[idx].state() == TunnelState::Up;
                self.conns[ci].selector.mark(m, up, now);
            }
            let want = prev
                .and_then(|p| p.1.as_ref())
                .and_then(|n| self.find_member(ci, n).ok());
            let pinned = prev.is_some_and(|p| p.2);
            let sw = self.conns[ci].selector.restore(want, pinned, now);
            self.apply_switch(ConnectionId(ci as u16), sw);
        }
        self.reschedule_all();
        Ok(summary)
    }

    /// Queues closing notices on every tunnel (shutdown); drain with `poll_transmit`.
    pub fn close(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        for i in 0..self.tunnels.len() {
            let (mut ctx, tunnels) = self.ctx();
            tunnels[i].close(now, &mut ctx);
            self.refresh(i, now);
        }
    }

    /// Drops per reason.
    #[must_use]
    pub fn drop_counters(&self) -> &DropCounters {
        &self.drops
    }

    /// Counts `n` drops the shell saw itself (a full socket send buffer:
    /// [`DropReason::SendQueueFull`]), so that every drop is in one set of counters.
    pub fn count_drops(&mut self, reason: DropReason, n: u64) {
        self.drops.add_n(reason, n);
    }

    /// Drill: a DPD echo over the connection's active tunnel; the reply arrives as
    /// [`Event::ProbeReply`].
    pub fn send_probe(
        &mut self,
        connection: &str,
        id: u64,
        now: Instant,
    ) -> Result<(), AdminError> {
        self.last_now = self.last_now.max(now);
        let ci = self.find(connection)?;
        let conn = &self.conns[ci];
        let m = conn.selector.active().ok_or(AdminError::NoActiveTunnel)?;
        let idx = usize::from(conn.members[m].0);
        let ts = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.tunnels[idx].queue_echo(id, ts, true);
        self.schedule.mark_ready(idx);
        Ok(())
    }

    /// Test hook: jumps the send counter of `tunnel`'s current outbound SA, to exercise the
    /// packet limits (docs/protocol.md: rekey after 2^27, never past 2^28) without sending 2^27 packets.
    #[doc(hidden)]
    pub fn set_send_counter_for_testing(&mut self, tunnel: TunnelId, seq: u64) {
        if let Some(t) = self.tunnels.get_mut(usize::from(tunnel.0)) {
            t.set_send_counter_for_testing(seq);
            self.touch(usize::from(tunnel.0));
        }
    }

    /// Test hook: (`handle_timeout` calls, timer owners handled by them). The cost of a timer
    /// event is a few owners, whatever the number of tunnels (a heap, not a scan).
    #[doc(hidden)]
    #[must_use]
    pub fn timer_work_for_testing(&self) -> (u64, u64) {
        (self.timer_calls, self.timer_visits)
    }

    /// Wall-clock seconds at `now` (for status).
    #[must_use]
    pub fn unix_secs(&self, now: Instant) -> u64 {
        (self
            .unix_epoch
            .saturating_add(now.saturating_duration_since(self.epoch)))
        .as_secs()
    }
}
