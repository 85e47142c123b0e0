//! NAT traversal detection (RFC 7296 §2.23): both ends put NAT_DETECTION_SOURCE_IP and
//! NAT_DETECTION_DESTINATION_IP notifies in IKE_SA_INIT, each `SHA-1(SPIi | SPIr | IP | port)`
//! (SPIr is zero in the request). A hash that does not match the addresses the receiver sees
//! means a NAT on the path; then IKE moves to UDP 4500 after IKE_SA_INIT (with the 4-byte
//! non-ESP marker) and ESP is carried in UDP (RFC 3948).
//!
//! `force` fakes our source hash (like strongSwan's `encap = yes`), so the peer sees a NAT and
//! both ends encapsulate: what an `encapsulation = "force"` setting (ike/README.md) asks for, and what a path
//! that drops raw ESP (protocol 50) needs.
//!
//! The addresses are the UDP socket pair the driver uses for this IKE SA; the state machine
//! never sees a socket.
//!
//! The port move is a decision the driver follows, not something the state machine does:
//! [`transport_for`] (or [`crate::IkeSa::transport_for`]) says, for each datagram an IKE SA
//! hands out, whether it goes on the IKE port as is or on the NAT-T port behind the non-ESP
//! marker ([`Transport::frame`]); IKE_SA_INIT stays where the exchange started, everything
//! after it moves to 4500 once NAT-D found a NAT or an end forced encapsulation, and the ESP of
//! the SA then travels in UDP on 4500 too. [`classify_nat_t`] sorts what arrives on 4500: IKE
//! (marker stripped), ESP, NAT-keepalive or junk. Keepalives themselves ([`NAT_KEEPALIVE`] every
//! [`NAT_KEEPALIVE_INTERVAL`], from the end behind the NAT) and following a peer whose NAT
//! mapping changed are the driver's: it owns the sockets and the clock.

use std::net::{IpAddr, SocketAddr};

use ring::digest;

/// Length of a NAT-D hash: SHA-1 (RFC 7296 §3.10.1).
pub const NAT_HASH_LEN: usize = 20;

/// The IKE port (RFC 7296 §2).
pub const IKE_PORT: u16 = 500;
/// The NAT-T port (RFC 3948 §2.2, RFC 7296 §2.23).
pub const NAT_T_PORT: u16 = 4500;
/// The non-ESP marker that precedes IKE messages on the NAT-T port (RFC 3948 §2.2).
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// What NAT-D needs to know: the UDP addresses of this IKE SA, and whether to fake a NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatT {
    /// Our address and port as the socket is bound (what the peer would see without a NAT).
    pub local: SocketAddr,
    /// The peer's address and port as we send to it.
    pub remote: SocketAddr,
    /// Always encapsulate: our NAT_DETECTION_SOURCE_IP is a hash of nothing we own.
    pub force: bool,
}

/// `SHA-1(SPIi | SPIr | IP | port)` (RFC 7296 §2.23).
pub fn nat_hash(spi_i: u64, spi_r: u64, addr: SocketAddr) -> [u8; NAT_HASH_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&spi_i.to_be_bytes());
    ctx.update(&spi_r.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(a) => ctx.update(&a.octets()),
        IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&addr.port().to_be_bytes());
    let mut out = [0u8; NAT_HASH_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The source hash we send: of our address, or (forced) of the unspecified address and port 0,
/// which no peer can see us at.
pub fn source_hash(nat: &NatT, spi_i: u64, spi_r: u64) -> [u8; NAT_HASH_LEN] {
    let addr = if nat.force {
        let unspecified: IpAddr = match nat.local.ip() {
            IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        SocketAddr::new(unspecified, 0)
    } else {
        nat.local
    };
    nat_hash(spi_i, spi_r, addr)
}

/// Whether the peer's NAT-D notifies (`sources`, `destination`) show a NAT between us, or we
/// force encapsulation. `None` when the peer sent no NAT-D at all (it does not do NAT-T).
pub fn detect(
    nat: &NatT,
    spi_i: u64,
    spi_r: u64,
    sources: &[&[u8]],
    destination: Option<&[u8]>,
) -> Option<bool> {
    if sources.is_empty() && destination.is_none() {
        return None;
    }
    let peer = nat_hash(spi_i, spi_r, nat.remote);
    let us = nat_hash(spi_i, spi_r, nat.local);
    let peer_behind_nat = !sources.contains(&peer.as_slice());
    let we_are_behind_nat = destination.is_some_and(|d| d != us.as_slice());
    Some(nat.force || peer_behind_nat || we_are_behind_nat)
}

/// The NAT-keepalive (RFC 3948 §2.3): one 0xFF byte on the NAT-T port, sent by the end behind
/// a NAT so the mapping stays open; the receiver ignores it.
pub const NAT_KEEPALIVE: [u8; 1] = [0xff];
/// How often the end behind a NAT sends [`NAT_KEEPALIVE`] when it sent nothing else
/// (RFC 3948 §4: 20 s by default).
pub const NAT_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);

/// How an IKE message travels: on the IKE port as is, or on the NAT-T port behind the non-ESP
/// marker (RFC 3948 §2.2), where the IKE SA's ESP also goes (in UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP 500 (or the configured IKE port), the bare IKE message.
    Ike,
    /// UDP 4500 (or the configured NAT-T port), the non-ESP marker and the IKE message.
    NatT,
}

impl Transport {
    /// The standard port of this transport.
    pub fn port(self) -> u16 {
        match self {
            Self::Ike => IKE_PORT,
            Self::NatT => NAT_T_PORT,
        }
    }

    /// The UDP payload that carries `ike` on this transport.
    pub fn frame(self, ike: &[u8]) -> Vec<u8> {
        match self {
            Self::Ike => ike.to_vec(),
            Self::NatT => {
                let mut d = Vec::with_capacity(NON_ESP_MARKER.len() + ike.len());
                d.extend_from_slice(&NON_ESP_MARKER);
                d.extend_from_slice(ike);
                d
            }
        }
    }
}

/// The move to the NAT-T port (RFC 7296 §2.23), as a decision the driver follows for each
/// datagram an IKE SA gives it: IKE_SA_INIT travels on the transport the exchange started on
/// (`start`: the initiator's configured port, or for a responder the transport the request
/// came in on); every later message goes on the NAT-T port when NAT-D found a NAT or one end
/// forced encapsulation (`encapsulate`, [`crate::IkeSa::udp_encapsulation`]), or when the
/// exchange started there already.
pub fn transport_for(message: &[u8], start: Transport, encapsulate: bool) -> Transport {
    // Byte 18 of the IKE header is the exchange type (RFC 7296 §3.1); 34 is IKE_SA_INIT.
    let is_init = message.get(18) == Some(&(crate::wire::ExchangeType::IkeSaInit as u8));
    if is_init || start == Transport::NatT {
        start
    } else if encapsulate {
        Transport::NatT
    } else {
        Transport::Ike
    }
}

/// What a datagram on the NAT-T port is (RFC 3948 §2.2, §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatTDatagram<'a> {
    /// An IKE message (the marker stripped).
    Ike(&'a [u8]),
    /// An ESP packet (it starts with its non-zero SPI).
    Esp(&'a [u8]),
    /// A NAT-keepalive: ignore it.
    Keepalive,
    /// Too short to be either (count and drop).
    Invalid,
}

/// Sorts a datagram received on the NAT-T port. Never panics.
pub fn classify_nat_t(datagram: &[u8]) -> NatTDatagram<'_> {
    if datagram == NAT_KEEPALIVE {
        return NatTDatagram::Keepalive;
    }
    if let Some(ike) = datagram.strip_prefix(&NON_ESP_MARKER[..]) {
        // An IKE header is 28 bytes; anything shorter behind the marker is junk.
        return if ike.len() >= crate::wire::HEADER_LEN {
            NatTDatagram::Ike(ike)
        } else {
            NatTDatagram::Invalid
        };
    }
    // ESP: SPI (4, non-zero: zero is the marker) and sequence number (4) at least.
    if datagram.len() >= 8 {
        NatTDatagram::Esp(datagram)
    } else {
        NatTDatagram::Invalid
    }
}
