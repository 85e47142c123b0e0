//! The per-packet data path, without I/O: a filled [`Batch`] in, the engine's verdicts on it.
//!
//! These are the functions the counting-allocator test and the criterion bench drive, and the
//! event loop calls them between its reads and its writes. They allocate nothing: every slot is
//! transformed in place and tagged with its destination ([`SlotDest`]).

use std::net::SocketAddr;
use std::time::Instant;

use tandem_engine::{Engine, NetAction, TunAction, TunnelId};

use super::batch::{Batch, SlotDest};

/// Outcome counts of one batch (for the loop's bookkeeping; the engine keeps the real counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Slots now tagged for a UDP socket.
    pub to_net: usize,
    /// Slots now tagged for the TUN.
    pub to_tun: usize,
    /// Slots dropped.
    pub dropped: usize,
    /// Control packets consumed (the engine may have output for `poll_transmit`).
    pub consumed: usize,
}

/// TUN -> network: route and seal every packet of `batch` in place. A sealed datagram's slot is
/// tagged `Socket(tunnel id)` (one socket per tunnel, indexed by tunnel id) with its destination
/// address; an ICMP error the engine wrote is tagged `Tun`.
pub fn seal_batch(engine: &mut Engine, batch: &mut Batch, now: Instant) -> BatchOutcome {
    seal(engine, None, batch, now)
}

/// As [`seal_batch`] for a batch read from `tunnel`'s own interface (`routing = "interfaces"`):
/// every packet goes to that tunnel or is dropped.
pub fn seal_batch_on(
    engine: &mut Engine,
    tunnel: TunnelId,
    batch: &mut Batch,
    now: Instant,
) -> BatchOutcome {
    seal(engine, Some(tunnel), batch, now)
}

fn seal(
    engine: &mut Engine,
    tunnel: Option<TunnelId>,
    batch: &mut Batch,
    now: Instant,
) -> BatchOutcome {
    let mut out = BatchOutcome::default();
    for slot in &mut batch.slots[..batch.filled] {
        let packet = slot.start..slot.start + slot.len;
        let action = match tunnel {
            None => engine.handle_tun_packet(&mut slot.buf, packet, now),
            Some(t) => engine.handle_tun_packet_on(t, &mut slot.buf, packet, now),
        };
        match action {
            TunAction::Send {
                tunnel,
                dst,
                datagram,
            } => {
                slot.start = datagram.start;
                slot.len = datagram.len();
                slot.addr = dst;
                slot.dest = SlotDest::Socket(tunnel.0);
                out.to_net += 1;
            }
            TunAction::Reply { packet } => {
                slot.start = packet.start;
                slot.len = packet.len();
                slot.dest = SlotDest::Tun;
                out.to_tun += 1;
            }
            TunAction::Drop(_) => {
                slot.dest = SlotDest::None;
                out.dropped += 1;
            }
        }
    }
    out
}

/// Which socket a batch was received on: a tunnel's own socket, or a local port the tunnels
/// configured with that `local` address share (the engine finds the tunnel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    /// The socket of this tunnel alone (an ephemeral local port).
    Tunnel(TunnelId),
    /// The socket bound to this address, shared by every tunnel configured with it.
    Port(SocketAddr),
}

/// Network -> TUN: open every datagram received on `tunnel`'s socket in place. A decrypted inner
/// packet's slot is tagged `Tun`; control packets and drops are tagged `None`.
pub fn open_batch(
    engine: &mut Engine,
    tunnel: TunnelId,
    batch: &mut Batch,
    now: Instant,
) -> BatchOutcome {
    open_batch_on(engine, Receiver::Tunnel(tunnel), batch, now)
}

/// Network -> TUN for a batch received on `rx` (see [`open_batch`]).
pub fn open_batch_on(
    engine: &mut Engine,
    rx: Receiver,
    batch: &mut Batch,
    now: Instant,
) -> BatchOutcome {
    open_batch_routed(engine, rx, batch, |_| false, now)
}

/// As [`open_batch_on`], with the inner packets of tunnels for which `has_iface` holds tagged
/// `Iface(tunnel)` (their own interface, `routing = "interfaces"`) instead of `Tun`.
pub fn open_batch_routed(
    engine: &mut Engine,
    rx: Receiver,
    batch: &mut Batch,
    has_iface: impl Fn(TunnelId) -> bool,
    now: Instant,
) -> BatchOutcome {
    let mut out = BatchOutcome::default();
    for slot in &mut batch.slots[..batch.filled] {
        let datagram = slot.start..slot.start + slot.len;
        let action = match rx {
            Receiver::Tunnel(t) => {
                engine.handle_datagram(t, slot.addr, &mut slot.buf, datagram, now)
            }
            Receiver::Port(local) => {
                engine.handle_datagram_at(local, slot.addr, &mut slot.buf, datagram, now)
            }
        };
        match action {
            NetAction::Deliver { tunnel, packet } => {
                slot.start = packet.start;
                slot.len = packet.len();
                slot.dest = if has_iface(tunnel) {
                    SlotDest::Iface(tunnel.0)
                } else {
                    SlotDest::Tun
                };
                out.to_tun += 1;
            }
            NetAction::Consumed => {
                slot.dest = SlotDest::None;
                out.consumed += 1;
            }
            NetAction::Drop(_) => {
                slot.dest = SlotDest::None;
                out.dropped += 1;
            }
        }
    }
    out
}

/// Network -> TUN for one UDP GRO message ([`super::sys::recv_mmsg_gro`]): `buf` holds
/// datagrams of `seg` bytes each (the last may be shorter), all from `from`, received on `rx`.
/// Each is opened in place within its own bytes — the engine sees one datagram's slice, so it
/// can touch no other — and every decrypted inner packet is handed to `deliver` with that slice,
/// the packet's range in it (the ESP header before it is free: a virtio-net header may be
/// written there) and its tunnel. Consumed and dropped datagrams are only counted. Nothing is
/// copied and nothing allocated.
pub fn open_coalesced(
    engine: &mut Engine,
    rx: Receiver,
    from: SocketAddr,
    buf: &mut [u8],
    seg: usize,
    now: Instant,
    mut deliver: impl FnMut(&mut [u8], std::ops::Range<usize>, TunnelId),
) -> BatchOutcome {
    let mut out = BatchOutcome::default();
    for d in buf.chunks_mut(seg.max(1)) {
        let datagram = 0..d.len();
        let action = match rx {
            Receiver::Tunnel(t) => engine.handle_datagram(t, from, d, datagram, now),
            Receiver::Port(local) => engine.handle_datagram_at(local, from, d, datagram, now),
        };
        match action {
            NetAction::Deliver { tunnel, packet } => {
                out.to_tun += 1;
                deliver(d, packet, tunnel);
            }
            NetAction::Consumed => out.consumed += 1,
            NetAction::Drop(_) => out.dropped += 1,
        }
    }
    out
}
