//! Per-tunnel interfaces for `routing = "interfaces"` connections (docs/configuration.md,
//! "Route-based mode"): one TUN per tunnel, named by its `ifname`, with its `inside` addresses.
//!
//! Flow: a packet the kernel routes into a tunnel's TUN is read by the same epoll loop as the
//! shared TUN (token [`TOKEN_IFACE_BASE`] + tunnel id), sealed on that tunnel by
//! `Engine::handle_tun_packet_on` and sent on the tunnel's socket; a datagram opened on a tunnel
//! that has an interface is written into that interface instead of the shared TUN. The slots,
//! the super-packet buffer and the batching are the shared TUN's; each interface has its own
//! receive-side coalescer (its writes go to its own fd).
//!
//! Invariant: an interface's carrier is on exactly while its tunnel is Up and no other tunnel of
//! its connection is pinned by `tandem failover` ([`Ifaces::sync_carrier`], run after every
//! drain of engine events). New interfaces start with the carrier off.
//!
//! Why each carrier change is followed by an operational-state change (`set_link`): Linux
//! applies a carrier change to routes and announces it (RTM_NEWLINK, which routing daemons
//! watch) from its link watcher, which handles a "carrier off" at most once a second for the
//! whole machine (only some "up" events count as urgent). So when two tunnels, or the two ends
//! of one tunnel on one host, lost their carrier within a second of each other, the second
//! was seen up to a second late, and traffic kept going into a dead tunnel. Setting
//! `IFLA_OPERSTATE` to DORMANT (UP when the carrier returns) is applied and announced at once;
//! the link watcher later settles the state from the carrier (DOWN, or UP) as usual.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use ipnet::IpNet;
use tandem_engine::{Engine, TunnelId, TunnelState};

use super::gro::TunGro;
use super::sys::{self, Epoll};
use super::worker::{TunSettings, open_tun};

/// epoll token of tunnel `id`'s interface: `TOKEN_IFACE_BASE + id`, above every socket token
/// (those are small numbers plus a `u16` tunnel id).
pub const TOKEN_IFACE_BASE: u64 = 1 << 32;

/// What one tunnel's interface must look like (from its `[[connection.tunnel]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceSpec {
    /// `ifname`.
    pub ifname: String,
    /// `inside`: at most one IPv4 and one IPv6 address.
    pub inside: Vec<IpNet>,
}

/// An open per-tunnel TUN.
pub struct Iface {
    /// The device.
    pub dev: tun_rs::SyncDevice,
    /// Reads and writes carry a virtio-net header (offloads on).
    pub vnet: bool,
    /// Receive-side coalescer for this device's writes.
    pub gro: TunGro,
    spec: IfaceSpec,
    /// The device's interface index (for link-state messages).
    ifindex: u32,
    /// The carrier as last set.
    carrier: bool,
}

impl std::fmt::Debug for Iface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Iface")
            .field("spec", &self.spec)
            .field("vnet", &self.vnet)
            .field("carrier", &self.carrier)
            .finish_non_exhaustive()
    }
}

/// Where a tunnel's interface comes from after a reload.
#[derive(Debug)]
pub enum IfacePlan {
    /// The tunnel has no interface (`routing = "static"`).
    None,
    /// The current interface at this tunnel index.
    Keep(usize),
    /// A device opened for the new configuration.
    New(Iface),
}

/// Every tunnel's interface, indexed by tunnel id.
#[derive(Debug, Default)]
pub struct Ifaces {
    by_tunnel: Vec<Option<Iface>>,
    /// The tunnel ids that have an interface: the per-turn work (GRO flush, carrier sync) visits
    /// these, not every tunnel (a head-end in static mode has thousands and no interface).
    live: Vec<usize>,
}

fn open(spec: &IfaceSpec, mtu: u16, offload: bool) -> io::Result<Iface> {
    // The builder takes one address; a second (the other family) is added once the device is up.
    let v4 = spec.inside.iter().find(|a| a.addr().is_ipv4()).copied();
    let v6 = spec.inside.iter().find(|a| a.addr().is_ipv6()).copied();
    let settings = TunSettings {
        name: spec.ifname.clone(),
        mtu,
        address: v4.or(v6),
        offload,
    };
    let (dev, vnet, uso) = open_tun(&settings)?;
    if let (Some(_), Some(IpNet::V6(n))) = (v4, v6) {
        dev.add_address_v6(n.addr(), n.prefix_len())?;
    }
    let ifindex = sys::if_index(&spec.ifname)?;
    // No carrier until the tunnel is Up: a routing daemon must not see a link before it works.
    set_link(dev.as_fd(), ifindex, false)?;
    Ok(Iface {
        dev,
        vnet,
        gro: TunGro::new().with_udp(uso),
        spec: spec.clone(),
        ifindex,
        carrier: false,
    })
}

/// Turns the carrier of the TUN behind `fd` (interface `ifindex`) on or off, and its
/// operational state to match at once (module doc: the link watcher's delay).
fn set_link(fd: std::os::fd::BorrowedFd<'_>, ifindex: u32, on: bool) -> io::Result<()> {
    sys::set_tun_carrier(fd, on)?;
    let state = if on {
        sys::OperState::Up
    } else {
        sys::OperState::Dormant
    };
    sys::set_operstate(ifindex, state)
}

impl Iface {
    /// The device's name (`ifname`).
    pub fn ifname(&self) -> &str {
        &self.spec.ifname
    }

    /// Whether tandem has the carrier on.
    pub fn carrier(&self) -> bool {
        self.carrier
    }
}

impl Ifaces {
    /// Tunnel `id`'s interface, if it has one.
    pub fn get(&self, id: u16) -> Option<&Iface> {
        self.by_tunnel.get(usize::from(id)).and_then(Option::as_ref)
    }

    /// Every open interface with its epoll token (`TOKEN_IFACE_BASE + tunnel id`).
    pub fn tokens(&self) -> impl Iterator<Item = (BorrowedFd<'_>, u64)> {
        self.live.iter().filter_map(|&i| {
            let f = self.by_tunnel.get(i)?.as_ref()?;
            Some((f.dev.as_fd(), TOKEN_IFACE_BASE + i as u64))
        })
    }

    /// As [`Self::get`], mutable.
    pub fn get_mut(&mut self, id: u16) -> Option<&mut Iface> {
        self.by_tunnel
            .get_mut(usize::from(id))
            .and_then(Option::as_mut)
    }

    /// Every open interface's name (for logs and tests).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_tunnel
            .iter()
            .flatten()
            .map(|i| i.spec.ifname.as_str())
    }

    /// The interfaces `wanted` (by tunnel id) needs, opening only the ones no current interface
    /// of the same name serves. Nothing changes until [`Self::install`]; a device that cannot be
    /// opened fails the whole plan (the devices opened so far close again on drop).
    pub fn plan(
        &self,
        wanted: &[Option<IfaceSpec>],
        mtu: u16,
        offload: bool,
    ) -> Result<Vec<IfacePlan>, (String, io::Error)> {
        let mut plan = Vec::with_capacity(wanted.len());
        for spec in wanted {
            let Some(spec) = spec else {
                plan.push(IfacePlan::None);
                continue;
            };
            let keep = self
                .by_tunnel
                .iter()
                .position(|i| i.as_ref().is_some_and(|i| i.spec.ifname == spec.ifname));
            match keep {
                Some(j) => {
                    if self.by_tunnel[j]
                        .as_ref()
                        .is_some_and(|i| i.spec.inside != spec.inside)
                    {
                        tracing::warn!(ifname = %spec.ifname, "reload: a changed inside address takes effect only after a restart");
                    }
                    plan.push(IfacePlan::Keep(j));
                }
                None => plan.push(IfacePlan::New(
                    open(spec, mtu, offload).map_err(|e| (spec.ifname.clone(), e))?,
                )),
            }
        }
        Ok(plan)
    }

    /// Makes `plan` the interface table (index = tunnel id): kept devices move to their new
    /// tunnel's token, new ones join the epoll set, the rest are closed (which deletes them).
    pub fn install(&mut self, plan: Vec<IfacePlan>, epoll: &Epoll) -> io::Result<()> {
        let mut old = std::mem::take(&mut self.by_tunnel);
        let mut table = Vec::with_capacity(plan.len());
        for (i, p) in plan.into_iter().enumerate() {
            let iface = match p {
                IfacePlan::None => None,
                IfacePlan::Keep(j) => {
                    let iface = old[j].take();
                    if let Some(f) = &iface {
                        let _ = epoll.delete(f.dev.as_fd());
                    }
                    iface
                }
                IfacePlan::New(f) => {
                    tracing::info!(ifname = %f.spec.ifname, inside = ?f.spec.inside, offload = f.vnet, "tunnel interface created");
                    Some(f)
                }
            };
            if let Some(f) = &iface {
                epoll.add(f.dev.as_fd(), TOKEN_IFACE_BASE + i as u64)?;
            }
            table.push(iface);
        }
        for f in old.into_iter().flatten() {
            let _ = epoll.delete(f.dev.as_fd());
            tracing::info!(ifname = %f.spec.ifname, "tunnel interface removed");
        }
        self.live = (0..table.len()).filter(|&i| table[i].is_some()).collect();
        self.by_tunnel = table;
        Ok(())
    }

    /// Writes out whatever each interface's coalescer still holds (end of a batch).
    pub fn flush_gro(&mut self) {
        for &i in &self.live {
            let Some(Some(f)) = self.by_tunnel.get_mut(i) else {
                continue;
            };
            if !f.vnet {
                continue;
            }
            let dev = &f.dev;
            f.gro.flush(&mut |b: &[u8]| {
                if let Err(e) = dev.send(b) {
                    tracing::trace!(error = %e, "TUN write failed");
                }
            });
        }
    }

    /// Sets every interface's MTU (a reload changed `[gateway] mtu`).
    pub fn set_mtu(&self, mtu: u16) {
        for f in self.by_tunnel.iter().flatten() {
            if let Err(e) = f.dev.set_mtu(mtu) {
                tracing::error!(ifname = %f.spec.ifname, error = %e, "reload: cannot set the MTU");
            }
        }
    }

    /// Sets every interface's carrier from its tunnel: on while Up and not overridden by a pin
    /// on another tunnel of its connection. Only changes cost a syscall.
    pub fn sync_carrier(&mut self, engine: &Engine) {
        for &i in &self.live {
            let Some(Some(f)) = self.by_tunnel.get_mut(i) else {
                continue;
            };
            let id = TunnelId(i as u16);
            let up = engine.tunnel_state(id) == Some(TunnelState::Up);
            let pinned_elsewhere = engine
                .tunnel_info(id)
                .and_then(|info| engine.pinned_tunnel(info.connection_id))
                .is_some_and(|p| p != id);
            let want = up && !pinned_elsewhere;
            if want == f.carrier {
                continue;
            }
            match set_link(f.dev.as_fd(), f.ifindex, want) {
                Ok(()) => {
                    f.carrier = want;
                    tracing::info!(ifname = %f.spec.ifname, carrier = want, pinned_elsewhere, "tunnel interface carrier");
                }
                Err(e) => {
                    // Not retried on every turn of the loop: the next change tries again.
                    f.carrier = want;
                    tracing::warn!(ifname = %f.spec.ifname, error = %e, "cannot set the carrier");
                }
            }
        }
    }
}
