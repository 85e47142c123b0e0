//! Packet buffers: a fixed set of slots per direction, each with headroom and tailroom.
//!
//! The data-plane loop works batch-synchronously — fill up to [`BATCH`] slots, transform them in
//! place, flush them — so a slot is free again as soon as its batch is flushed and the "pool" is
//! simply the slot array, allocated once at start-up. Nothing is allocated per packet.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Packets per batch on each side. 128 is wireguard-go's `IdealBatchSize` (and `tun-rs`'s
/// `IDEAL_BATCH_SIZE`): large enough to amortise a `sendmmsg`/`recvmmsg` over ~180 KB of
/// 1400-byte packets, small enough that one batch stays in L2 cache and adds well under 1 ms of
/// latency at line rate.
pub const BATCH: usize = 128;

/// Slack over the inner MTU in a slot, for a peer whose MTU is a little larger than ours and for
/// the ESP padding (at most 3 bytes + 2 trailer bytes are already in TAILROOM).
pub const SLOT_SLACK: usize = 64;

/// Where the slot's bytes are headed once its batch is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotDest {
    /// Nothing to send (dropped, consumed, or not filled).
    None,
    /// A sealed datagram for the UDP socket at this index of the socket table.
    Socket(u16),
    /// A packet for the TUN (decrypted inner packet, or an ICMP error the engine wrote).
    Tun,
    /// A decrypted inner packet for this tunnel's own interface (`routing = "interfaces"`).
    Iface(u16),
}

/// One packet buffer and the metadata of the packet in it.
#[derive(Debug)]
pub struct Slot {
    /// The whole buffer: headroom + packet + tailroom.
    pub buf: Box<[u8]>,
    /// The packet is `buf[start..start + len]`.
    pub start: usize,
    /// Packet length (0 = nothing).
    pub len: usize,
    /// Peer address: the source of a received datagram, the destination of one to send.
    pub addr: SocketAddr,
    /// Where the packet goes on flush.
    pub dest: SlotDest,
}

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl AsMut<[u8]> for Slot {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

/// A batch of slots for one direction.
#[derive(Debug)]
pub struct Batch {
    /// The slots; `slots[..filled]` hold packets.
    pub slots: Vec<Slot>,
    /// How many slots hold packets.
    pub filled: usize,
}

impl Batch {
    /// `BATCH` slots of `slot_len` bytes each.
    pub fn new(slot_len: usize) -> Self {
        let slots = (0..BATCH)
            .map(|_| Slot {
                buf: vec![0u8; slot_len].into_boxed_slice(),
                start: 0,
                len: 0,
                addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
                dest: SlotDest::None,
            })
            .collect();
        Self { slots, filled: 0 }
    }

    /// The slot size that holds an inner packet of `mtu` bytes sealed in place, and the largest
    /// datagram a peer with the same MTU sends.
    pub fn slot_len(headroom: usize, mtu: u16, tailroom: usize) -> usize {
        headroom + usize::from(mtu) + tailroom + SLOT_SLACK
    }
}
