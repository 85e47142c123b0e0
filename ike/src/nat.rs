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
