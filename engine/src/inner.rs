//! Inner IP packets: the few fields the engine reads (version, addresses, DF, protocol, ports),
//! TCP MSS clamping, and ICMP errors written **in place** around the offending packet.
//!
//! Invariant: nothing here allocates or copies a packet. An ICMP error is built by writing the
//! new IP + ICMP headers into the headroom in front of the original packet, which becomes the
//! quoted part of the error (truncated to RFC 1812 §4.3.2.3's 576 bytes for IPv4 and RFC 4443
//! §2.4(c)'s 1280 bytes for IPv6). The source of a generated error is the original packet's
//! destination: the engine has no address of its own on the TUN, and Linux accepts
//! "fragmentation needed"/"packet too big" from any source whose quoted header matches.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use crate::checksum::{finish, pseudo_header, sum, update, verifies};
use crate::drop::DropReason;

/// IPv4 header without options (RFC 791).
pub const IPV4_HEADER_LEN: usize = 20;
/// IPv6 fixed header (RFC 8200).
pub const IPV6_HEADER_LEN: usize = 40;
/// ICMP / ICMPv6 error header: type, code, checksum, 4 bytes of "unused"/MTU (RFC 792, RFC 4443).
pub const ICMP_HEADER_LEN: usize = 8;
/// Bytes written in front of a packet for an ICMPv6 error (the larger of the two).
pub const ICMP_HEADROOM: usize = IPV6_HEADER_LEN + ICMP_HEADER_LEN;
/// RFC 1812 §4.3.2.3: an ICMPv4 error should not exceed 576 bytes.
const ICMPV4_MAX_LEN: usize = 576;
/// RFC 4443 §2.4(c): an ICMPv6 error must not exceed the minimum IPv6 MTU.
const ICMPV6_MAX_LEN: usize = 1280;
/// TCP header without options (RFC 9293 §3.1); with the IP header, subtracted from the MTU for
/// the clamped MSS.
pub const TCP_HEADER_LEN: usize = 20;
/// UDP header (RFC 768).
pub const UDP_HEADER_LEN: usize = 8;

// IP protocol numbers (IANA "Assigned Internet Protocol Numbers", first listed in RFC 790):
// IPv4's protocol field, IPv6's next header.

/// ICMP (RFC 792).
pub const PROTO_ICMP: u8 = 1;
/// TCP (RFC 9293).
pub const PROTO_TCP: u8 = 6;
/// UDP (RFC 768).
pub const PROTO_UDP: u8 = 17;
/// ICMPv6 (RFC 4443).
pub const PROTO_ICMPV6: u8 = 58;
/// TTL / hop limit of generated errors (Linux default).
const DEFAULT_TTL: u8 = 64;

// IPv6 extension headers that may stand between the fixed header and the upper-layer header
// (RFC 8200 §4.1; IANA "IPv6 Extension Header Types").

/// Hop-by-Hop Options (RFC 8200 §4.3).
pub const NEXT_HEADER_HOP_BY_HOP: u8 = 0;
/// Routing (RFC 8200 §4.4).
pub const NEXT_HEADER_ROUTING: u8 = 43;
/// Fragment (RFC 8200 §4.5).
pub const NEXT_HEADER_FRAGMENT: u8 = 44;
/// Authentication Header (RFC 4302).
pub const NEXT_HEADER_AH: u8 = 51;
/// Destination Options (RFC 8200 §4.6).
pub const NEXT_HEADER_DEST_OPTS: u8 = 60;
/// The Fragment header's fixed size (RFC 8200 §4.5).
const IPV6_FRAGMENT_LEN: usize = 8;

/// Where an IPv6 packet's upper-layer header is, past its extension headers (RFC 8200 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Upper {
    /// The upper-layer protocol: the chain's last next header (the one that could not be
    /// read, when the chain is cut short).
    pub proto: u8,
    /// Offset of its header, when this packet carries it: not in a non-first fragment, nor
    /// when the chain runs past the packet.
    pub offset: Option<usize>,
    /// Nothing but Hop-by-Hop and Destination Options headers (or nothing) comes before it:
    /// the packet is whole (no Fragment header), its upper-layer pseudo-header uses the fixed
    /// header's destination (after a Routing header it is the final one, RFC 8200 §8.1) and no
    /// header covers the payload (AH, RFC 4302).
    pub options_only: bool,
}

/// Walks the extension headers of the IPv6 packet `pkt` (the fixed header and what its payload
/// length covers) to the upper-layer header: Hop-by-Hop, Routing and Destination Options
/// (length in 8-octet units, not counting the first, RFC 8200 §4.3-4.6), Fragment (8 octets,
/// §4.5) and AH (4-octet units, not counting the first two, RFC 4302 §2.2), as Linux's
/// `ipv6_skip_exthdr` does. Anything else, ESP and No Next Header included, ends the chain.
/// Each header is at least 8 octets, so the walk is bounded by the packet's length.
#[must_use]
pub fn ipv6_upper(pkt: &[u8]) -> Ipv6Upper {
    let mut proto = pkt.get(6).copied().unwrap_or(0);
    let mut at = IPV6_HEADER_LEN;
    let mut options_only = true;
    loop {
        let cut = Ipv6Upper {
            proto,
            offset: None,
            options_only: false,
        };
        let len = match proto {
            NEXT_HEADER_HOP_BY_HOP | NEXT_HEADER_DEST_OPTS | NEXT_HEADER_ROUTING => {
                let Some(&n) = pkt.get(at + 1) else {
                    return cut;
                };
                (usize::from(n) + 1) * 8
            }
            NEXT_HEADER_AH => {
                let Some(&n) = pkt.get(at + 1) else {
                    return cut;
                };
                (usize::from(n) + 2) * 4
            }
            NEXT_HEADER_FRAGMENT => {
                let Some(f) = pkt.get(at..at + IPV6_FRAGMENT_LEN) else {
                    return cut;
                };
                if u16::from_be_bytes([f[2], f[3]]) & 0xfff8 != 0 {
                    // A non-first fragment: its upper-layer header is in the first one.
                    return Ipv6Upper { proto: f[0], ..cut };
                }
                IPV6_FRAGMENT_LEN
            }
            _ => {
                return Ipv6Upper {
                    proto,
                    offset: (at <= pkt.len()).then_some(at),
                    options_only,
                };
            }
        };
        if at + len > pkt.len() {
            return cut;
        }
        options_only &= matches!(proto, NEXT_HEADER_HOP_BY_HOP | NEXT_HEADER_DEST_OPTS);
        proto = pkt[at];
        at += len;
    }
}

/// The fields of an inner packet the engine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerHeader {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IPv4 DF bit; always true for IPv6 (routers never fragment IPv6).
    pub dont_fragment: bool,
    /// Transport protocol (IPv6: the upper-layer protocol, past the extension headers).
    pub proto: u8,
    /// Offset of the transport header, if this packet carries it (IPv4: not a non-first
    /// fragment; IPv6: see [`ipv6_upper`]).
    pub l4: Option<usize>,
    /// Length of the IP packet by its header (<= the buffer).
    pub len: usize,
}

impl InnerHeader {
    /// Reads the header of the IP packet in `pkt`.
    pub fn parse(pkt: &[u8]) -> Result<Self, DropReason> {
        match pkt.first().map(|b| b >> 4) {
            Some(4) => {
                if pkt.len() < IPV4_HEADER_LEN {
                    return Err(DropReason::Malformed);
                }
                let ihl = usize::from(pkt[0] & 0x0f) * 4;
                let len = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
                if ihl < IPV4_HEADER_LEN || len < ihl || len > pkt.len() {
                    return Err(DropReason::Malformed);
                }
                let frag_off = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff;
                let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
                let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
                Ok(InnerHeader {
                    src: IpAddr::V4(src),
                    dst: IpAddr::V4(dst),
                    dont_fragment: pkt[6] & 0x40 != 0,
                    proto: pkt[9],
                    l4: (frag_off == 0).then_some(ihl),
                    len,
                })
            }
            Some(6) => {
                if pkt.len() < IPV6_HEADER_LEN {
                    return Err(DropReason::Malformed);
                }
                let len = usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) + IPV6_HEADER_LEN;
                if len > pkt.len() {
                    return Err(DropReason::Malformed);
                }
                let mut s = [0u8; 16];
                s.copy_from_slice(&pkt[8..24]);
                let mut d = [0u8; 16];
                d.copy_from_slice(&pkt[24..40]);
                // Through Hop-by-Hop and the other extension headers, so that a SYN behind
                // them has its MSS clamped and an ICMPv6 error behind them is recognised.
                let upper = ipv6_upper(&pkt[..len]);
                Ok(InnerHeader {
                    src: IpAddr::V6(Ipv6Addr::from(s)),
                    dst: IpAddr::V6(Ipv6Addr::from(d)),
                    dont_fragment: true,
                    proto: upper.proto,
                    l4: upper.offset,
                    len,
                })
            }
            _ => Err(DropReason::Malformed),
        }
    }

    /// A hash of the flow's 5-tuple (addresses, protocol, ports when present), for per-flow
    /// tunnel choice. `DefaultHasher::new()` has fixed keys, so it is stable for the life of the
    /// process (and across runs of one build); the two gateways need not agree, since receive
    /// is accepted on every tunnel.
    #[must_use]
    pub fn flow_hash(&self, pkt: &[u8]) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.src.hash(&mut h);
        self.dst.hash(&mut h);
        self.proto.hash(&mut h);
        if let (Some(l4), PROTO_TCP | PROTO_UDP) = (self.l4, self.proto)
            && let Some(ports) = pkt.get(l4..l4 + 4)
        {
            ports.hash(&mut h);
        }
        h.finish()
    }
}

/// The Internet checksum (RFC 1071), at the path the tests and fuzz targets have always used.
pub use crate::checksum::checksum;

/// Clamps the MSS option of a TCP SYN to fit `mtu`; returns whether the packet changed.
/// The TCP checksum is updated incrementally (RFC 1624 eqn. 3).
pub fn clamp_mss(pkt: &mut [u8], hdr: &InnerHeader, mtu: u16) -> bool {
    let (Some(l4), PROTO_TCP) = (hdr.l4, hdr.proto) else {
        return false;
    };
    let ip_sz = if hdr.src.is_ipv4() {
        IPV4_HEADER_LEN
    } else {
        IPV6_HEADER_LEN
    };
    let max_mss = usize::from(mtu).saturating_sub(ip_sz + TCP_HEADER_LEN) as u16;
    let end = hdr.len.min(pkt.len());
    let Some(tcp) = pkt.get_mut(l4..end) else {
        return false;
    };
    if tcp.len() < TCP_HEADER_LEN || tcp[13] & 0x02 == 0 {
        return false;
    }
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < TCP_HEADER_LEN || doff > tcp.len() {
        return false;
    }
    let mut i = TCP_HEADER_LEN;
    while i < doff {
        match tcp[i] {
            0 => return false,
            1 => i += 1,
            kind => {
                let Some(&olen) = tcp.get(i + 1) else {
                    return false;
                };
                let olen = usize::from(olen);
                if olen < 2 || i + olen > doff {
                    return false;
                }
                if kind == 2 && olen == 4 {
                    let old = u16::from_be_bytes([tcp[i + 2], tcp[i + 3]]);
                    if old <= max_mss {
                        return false;
                    }
                    tcp[i + 2..i + 4].copy_from_slice(&max_mss.to_be_bytes());
                    // RFC 1624 incremental update. The checksum sums 16-bit words from the
                    // start of the segment: a value at an odd offset straddles two words and
                    // counts byte-swapped (found by the inner_packet fuzz target).
                    let (old_w, new_w) = if i % 2 == 0 {
                        (old, max_mss)
                    } else {
                        (old.swap_bytes(), max_mss.swap_bytes())
                    };
                    let hc = u16::from_be_bytes([tcp[16], tcp[17]]);
                    tcp[16..18].copy_from_slice(&update(hc, old_w, new_w).to_be_bytes());
                    return true;
                }
                i += olen;
            }
        }
    }
    false
}

/// Writes all ones into the zero checksum field of a UDP datagram whose checksum computes to
/// zero, as RFC 768 says a sender must (RFC 8200 §8.1: over IPv6 a zero field is invalid, and
/// the receiver drops the datagram). Returns whether it did.
///
/// For packets read from a TUN with checksum offload, whose checksum the reader completes: the
/// TUN library's completion of a packet that is not a GSO super-packet writes a computed zero as
/// zero, about one datagram in 65 536, which costs IPv6 that datagram (the far host counts it in
/// `Udp6InCsumErrors`) and IPv4 its checksum (zero means "none"). A zero that an IPv4 sender
/// meant as "none" is left alone, unless the datagram happens to sum to zero, when all ones is
/// its correct checksum anyway. Only a zero field costs a sum.
pub fn udp_zero_checksum_to_ones(pkt: &mut [u8]) -> bool {
    let (l4, end, addrs) = match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= IPV4_HEADER_LEN => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let first_fragment = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff == 0;
            if pkt[9] != PROTO_UDP || !first_fragment {
                return false;
            }
            (
                ihl,
                usize::from(u16::from_be_bytes([pkt[2], pkt[3]])),
                12..20,
            )
        }
        Some(6) if pkt.len() >= IPV6_HEADER_LEN => {
            let end = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            let upper = ipv6_upper(pkt.get(..end).unwrap_or(pkt));
            // Past a Routing header the pseudo-header names another destination: not ours to
            // judge (and not what the TUN library completes wrongly).
            let (PROTO_UDP, Some(l4), true) = (upper.proto, upper.offset, upper.options_only)
            else {
                return false;
            };
            (l4, end, 8..40)
        }
        _ => return false,
    };
    let Some(udp) = pkt.get(l4..end) else {
        return false;
    };
    if udp.len() < UDP_HEADER_LEN || udp[6..8] != [0, 0] {
        return false;
    }
    if !verifies(sum(
        pseudo_header(&pkt[addrs], PROTO_UDP, udp.len() as u32),
        udp,
    )) {
        return false;
    }
    pkt[l4 + 6..l4 + 8].copy_from_slice(&[0xff, 0xff]);
    true
}

/// Whether the packet is itself an ICMP error (never answered with another, RFC 1122 §3.2.2).
fn is_icmp_error(pkt: &[u8], hdr: &InnerHeader) -> bool {
    let Some(l4) = hdr.l4 else {
        // A non-first IPv4 fragment: never answered either (RFC 1812 §4.3.2.7).
        return hdr.src.is_ipv4();
    };
    let ty = pkt.get(l4).copied().unwrap_or(0);
    match hdr.proto {
        PROTO_ICMP => matches!(ty, 3 | 4 | 5 | 11 | 12),
        PROTO_ICMPV6 => ty < 128,
        _ => false,
    }
}

/// Which ICMP error to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// IPv4 "fragmentation needed and DF set" (type 3 code 4) / ICMPv6 "packet too big" (type 2).
    TooBig {
        /// The MTU to announce.
        mtu: u16,
    },
    /// IPv4 "network unreachable" (type 3 code 0) / ICMPv6 "no route to destination" (type 1 code 0).
    Unreachable,
}

/// Writes an ICMP error about the packet at `buf[packet]` into `buf`, in place: the new
/// headers go into the `ICMP_HEADROOM` bytes before `packet.start`. Returns the range of the
/// error packet, or `None` if no error may be sent (the packet is an ICMP error itself, a
/// non-first fragment, from an unspecified/multicast source, or there is no headroom).
pub fn write_icmp_error(
    buf: &mut [u8],
    packet: Range<usize>,
    kind: IcmpError,
) -> Option<Range<usize>> {
    let pkt = buf.get(packet.clone())?;
    let hdr = InnerHeader::parse(pkt).ok()?;
    // RFC 1812 §4.3.2.7 / RFC 4443 §2.4(e): no error about an error, nor from/to multicast,
    // broadcast or the unspecified address.
    if is_icmp_error(pkt, &hdr)
        || hdr.src.is_unspecified()
        || hdr.src.is_multicast()
        || hdr.dst.is_multicast()
        || matches!(hdr.dst, IpAddr::V4(d) if d.is_broadcast())
    {
        return None;
    }
    match (hdr.src, hdr.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            if src.is_broadcast() {
                return None;
            }
            let head = IPV4_HEADER_LEN + ICMP_HEADER_LEN;
            let start = packet.start.checked_sub(head)?;
            let quoted = packet.len().min(ICMPV4_MAX_LEN - head);
            let total = head + quoted;
            let out = &mut buf[start..start + total];
            let (ip, rest) = out.split_at_mut(IPV4_HEADER_LEN);
            ip.copy_from_slice(&[
                0x45,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                DEFAULT_TTL,
                PROTO_ICMP,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ]);
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip[12..16].copy_from_slice(&dst.octets());
            ip[16..20].copy_from_slice(&src.octets());
            let c = checksum(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let (ty, code, mtu) = match kind {
                IcmpError::TooBig { mtu } => (3, 4, mtu),
                IcmpError::Unreachable => (3, 0, 0),
            };
            rest[..ICMP_HEADER_LEN].copy_from_slice(&[ty, code, 0, 0, 0, 0, 0, 0]);
            rest[6..8].copy_from_slice(&mtu.to_be_bytes());
            let c = checksum(rest);
            rest[2..4].copy_from_slice(&c.to_be_bytes());
            Some(start..start + total)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let head = IPV6_HEADER_LEN + ICMP_HEADER_LEN;
            let start = packet.start.checked_sub(head)?;
            let quoted = packet.len().min(ICMPV6_MAX_LEN - head);
            let total = head + quoted;
            let out = &mut buf[start..start + total];
            let (ip, rest) = out.split_at_mut(IPV6_HEADER_LEN);
            ip[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, PROTO_ICMPV6, DEFAULT_TTL]);
            ip[4..6].copy_from_slice(&((ICMP_HEADER_LEN + quoted) as u16).to_be_bytes());
            ip[8..24].copy_from_slice(&dst.octets());
            ip[24..40].copy_from_slice(&src.octets());
            let (ty, code, mtu) = match kind {
                IcmpError::TooBig { mtu } => (2, 0, u32::from(mtu)),
                IcmpError::Unreachable => (1, 0, 0),
            };
            rest[..ICMP_HEADER_LEN].copy_from_slice(&[ty, code, 0, 0, 0, 0, 0, 0]);
            rest[4..8].copy_from_slice(&mtu.to_be_bytes());
            // RFC 8200 §8.1 pseudo-header: source, destination, upper-layer length, next header.
            let acc = pseudo_header(&ip[8..40], PROTO_ICMPV6, (ICMP_HEADER_LEN + quoted) as u32);
            let c = finish(sum(acc, rest));
            rest[2..4].copy_from_slice(&c.to_be_bytes());
            Some(start..start + total)
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ipv4_tcp_syn(mss: u16, len: usize, df: bool) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = if df { 0x40 } else { 0 };
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 10, 0, 10]);
        p[16..20].copy_from_slice(&[10, 20, 0, 10]);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&443u16.to_be_bytes());
        t[12] = 6 << 4; // 24-byte header: one MSS option
        t[13] = 0x02;
        t[20..24].copy_from_slice(&[2, 4, 0, 0]);
        t[22..24].copy_from_slice(&mss.to_be_bytes());
        let c = tcp4_checksum(&p);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn tcp4_checksum(p: &[u8]) -> u16 {
        let acc = pseudo_header(&p[12..20], PROTO_TCP, (p.len() - 20) as u32);
        finish(sum(acc, &p[20..]))
    }

    #[test]
    fn an_ipv4_syn_gets_its_mss_clamped_and_its_checksum_stays_valid() {
        let mut p = ipv4_tcp_syn(1460, 60, true);
        assert_eq!(tcp4_checksum(&p), 0, "fixture checksum");
        let hdr = InnerHeader::parse(&p).unwrap();
        assert!(clamp_mss(&mut p, &hdr, 1400));
        assert_eq!(u16::from_be_bytes([p[42], p[43]]), 1360);
        assert_eq!(tcp4_checksum(&p), 0, "checksum must verify after clamping");
        // Already small enough: untouched.
        let mut q = ipv4_tcp_syn(1200, 60, true);
        let hdr = InnerHeader::parse(&q).unwrap();
        assert!(!clamp_mss(&mut q, &hdr, 1400));
        assert_eq!(u16::from_be_bytes([q[42], q[43]]), 1200);
    }

    #[test]
    fn an_mss_option_at_an_odd_offset_is_clamped_with_a_valid_checksum() {
        // The inner_packet fuzz target's reproducer: NOP, then MSS 0xb403 at TCP offset 21.
        let mut p = vec![
            0x45, 0x00, 0x00, 0x30, 0x00, 0x01, 0x40, 0x00, 0x40, 0x06, 0x26, 0x96, 0x0a, 0x0a,
            0x00, 0x0a, 0x0a, 0x14, 0x00, 0x0a, 0x9c, 0x40, 0x14, 0x51, 0x00, 0x00, 0x00, 0x01,
            0x00, 0x00, 0x00, 0x00, 0x70, 0x02, 0xfa, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02,
            0x04, 0xb4, 0x03, 0x05, 0x03, 0x07,
        ];
        let c = tcp4_checksum(&p);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        assert_eq!(tcp4_checksum(&p), 0, "fixture checksum");
        let hdr = InnerHeader::parse(&p).unwrap();
        assert!(clamp_mss(&mut p, &hdr, 1400));
        assert_eq!(u16::from_be_bytes([p[43], p[44]]), 1360);
        assert_eq!(tcp4_checksum(&p), 0, "checksum must verify after clamping");
        assert!(
            !clamp_mss(&mut p, &hdr, 1400),
            "a second clamp changes nothing"
        );
    }

    /// An IPv6 TCP SYN from fd00:10::10 to fd00:20::10 with one MSS option, behind the
    /// extension headers `exts` (in order; each one's next header is filled in), checksum
    /// valid. Returns the packet and the TCP header's offset.
    fn ipv6_tcp_syn(mss: u16, exts: &[u8]) -> (Vec<u8>, usize) {
        let mut p = vec![0u8; IPV6_HEADER_LEN];
        p[0] = 0x60;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd00:10::10".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd00:20::10".parse::<Ipv6Addr>().unwrap().octets());
        let mut next_at = 6;
        for &e in exts {
            p[next_at] = e;
            next_at = p.len();
            let ext: Vec<u8> = match e {
                // PadN over the 6 option bytes (RFC 8200 §4.2).
                NEXT_HEADER_HOP_BY_HOP | NEXT_HEADER_DEST_OPTS => vec![0, 0, 1, 4, 0, 0, 0, 0],
                // A segment routing header (RFC 8754) with segments left 0 and one segment:
                // the final destination, as in the fixed header.
                NEXT_HEADER_ROUTING => {
                    let mut r = vec![0, 2, 4, 0, 0, 0, 0, 0];
                    r.extend_from_slice(&p[24..40]);
                    r
                }
                // An atomic fragment (offset 0, M clear, RFC 6946).
                NEXT_HEADER_FRAGMENT => vec![0, 0, 0, 0, 0, 0, 0x12, 0x34],
                other => panic!("no fixture for extension header {other}"),
            };
            p.extend_from_slice(&ext);
        }
        p[next_at] = PROTO_TCP;
        let l4 = p.len();
        let mut t = [0u8; 24];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&443u16.to_be_bytes());
        t[12] = 6 << 4; // 24-byte header: one MSS option
        t[13] = 0x02;
        t[20..22].copy_from_slice(&[2, 4]);
        t[22..24].copy_from_slice(&mss.to_be_bytes());
        p.extend_from_slice(&t);
        let payload_len = (p.len() - IPV6_HEADER_LEN) as u16;
        p[4..6].copy_from_slice(&payload_len.to_be_bytes());
        let c = tcp6_checksum(&p, l4);
        p[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        (p, l4)
    }

    /// The TCP checksum over an IPv6 packet's segment at `l4` (0 = valid), RFC 8200 §8.1.
    fn tcp6_checksum(p: &[u8], l4: usize) -> u16 {
        let acc = pseudo_header(&p[8..40], PROTO_TCP, (p.len() - l4) as u32);
        finish(sum(acc, &p[l4..]))
    }

    fn clamps_ipv6_syn_behind(exts: &[u8]) {
        let (mut p, l4) = ipv6_tcp_syn(1440, exts);
        assert_eq!(tcp6_checksum(&p, l4), 0, "fixture checksum");
        let hdr = InnerHeader::parse(&p).unwrap();
        assert_eq!((hdr.proto, hdr.l4), (PROTO_TCP, Some(l4)), "{exts:?}");
        assert!(clamp_mss(&mut p, &hdr, 1400), "{exts:?}: clamped");
        // 1400 - 40 (fixed IPv6 header) - 20 (TCP header), RFC 6691 §2.
        assert_eq!(u16::from_be_bytes([p[l4 + 22], p[l4 + 23]]), 1340);
        assert_eq!(
            tcp6_checksum(&p, l4),
            0,
            "{exts:?}: checksum after clamping"
        );
        assert!(
            !clamp_mss(&mut p, &hdr, 1400),
            "a second clamp changes nothing"
        );
    }

    #[test]
    fn an_ipv6_syn_gets_its_mss_clamped_without_extension_headers() {
        clamps_ipv6_syn_behind(&[]);
    }

    #[test]
    fn an_ipv6_syn_behind_a_hop_by_hop_header_gets_its_mss_clamped() {
        clamps_ipv6_syn_behind(&[NEXT_HEADER_HOP_BY_HOP]);
    }

    #[test]
    fn an_ipv6_syn_behind_a_chain_of_extension_headers_gets_its_mss_clamped() {
        clamps_ipv6_syn_behind(&[
            NEXT_HEADER_HOP_BY_HOP,
            NEXT_HEADER_DEST_OPTS,
            NEXT_HEADER_ROUTING,
            NEXT_HEADER_FRAGMENT,
            NEXT_HEADER_DEST_OPTS,
        ]);
    }

    #[test]
    fn the_ipv6_chain_tells_options_only_from_routing_fragments_and_cut_chains() {
        let (p, l4) = ipv6_tcp_syn(1440, &[NEXT_HEADER_HOP_BY_HOP, NEXT_HEADER_DEST_OPTS]);
        assert_eq!(
            ipv6_upper(&p),
            Ipv6Upper {
                proto: PROTO_TCP,
                offset: Some(l4),
                options_only: true
            }
        );
        for ext in [NEXT_HEADER_ROUTING, NEXT_HEADER_FRAGMENT] {
            let (p, l4) = ipv6_tcp_syn(1440, &[NEXT_HEADER_HOP_BY_HOP, ext]);
            let u = ipv6_upper(&p);
            assert_eq!(
                (u.proto, u.offset, u.options_only),
                (PROTO_TCP, Some(l4), false)
            );
        }
        // A non-first fragment carries no TCP header: nothing to clamp.
        let (mut p, _) = ipv6_tcp_syn(1440, &[NEXT_HEADER_FRAGMENT]);
        p[42..44].copy_from_slice(&(185u16 << 3).to_be_bytes());
        let hdr = InnerHeader::parse(&p).unwrap();
        assert_eq!((hdr.proto, hdr.l4), (PROTO_TCP, None));
        let before = p.clone();
        assert!(!clamp_mss(&mut p, &hdr, 1400));
        assert_eq!(p, before);
        // A Hop-by-Hop header that claims more than the packet holds ends the walk.
        let (mut p, _) = ipv6_tcp_syn(1440, &[NEXT_HEADER_HOP_BY_HOP]);
        p[41] = 200;
        let hdr = InnerHeader::parse(&p).unwrap();
        assert_eq!((hdr.proto, hdr.l4), (NEXT_HEADER_HOP_BY_HOP, None));
    }

    #[test]
    fn an_icmpv6_error_behind_a_hop_by_hop_header_is_never_answered() {
        let (mut p, l4) = ipv6_tcp_syn(1440, &[NEXT_HEADER_HOP_BY_HOP]);
        p[40] = PROTO_ICMPV6;
        p[l4] = 1; // destination unreachable
        let head = 64;
        let mut buf = vec![0u8; head + p.len()];
        buf[head..].copy_from_slice(&p);
        let packet = head..head + p.len();
        assert_eq!(
            write_icmp_error(&mut buf, packet.clone(), IcmpError::Unreachable),
            None
        );
        // An informational message (echo request) behind it is answered.
        buf[head + l4] = 128;
        assert!(write_icmp_error(&mut buf, packet, IcmpError::Unreachable).is_some());
    }

    /// An IPv6 UDP datagram whose checksum computes to zero, its checksum field `field`.
    fn ipv6_udp_summing_to_zero(field: u16) -> Vec<u8> {
        let (mut p, _) = ipv6_tcp_syn(1440, &[]);
        p.truncate(40);
        p[6] = PROTO_UDP;
        p.extend_from_slice(&[
            0x9c, 0x40, 0x14, 0x51, 0, 14, 0, 0, 0xab, 0xcd, 0x12, 0x34, 0, 0,
        ]);
        p[4..6].copy_from_slice(&14u16.to_be_bytes());
        // The last payload word makes the sum all ones, so the checksum computes to zero.
        let s = crate::checksum::fold(sum(pseudo_header(&p[8..40], PROTO_UDP, 14), &p[40..]));
        p[52..54].copy_from_slice(&(0xffff - s).to_be_bytes());
        p[46..48].copy_from_slice(&field.to_be_bytes());
        p
    }

    #[test]
    fn a_udp_checksum_that_computes_to_zero_is_sent_as_all_ones() {
        let mut p = ipv6_udp_summing_to_zero(0);
        assert!(udp_zero_checksum_to_ones(&mut p));
        assert_eq!(&p[46..48], &[0xff, 0xff]);
        let acc = pseudo_header(&p[8..40], PROTO_UDP, 14);
        assert!(verifies(sum(acc, &p[40..])), "all ones verifies");
        assert!(
            !udp_zero_checksum_to_ones(&mut p),
            "only a zero field changes"
        );
        // Behind a Hop-by-Hop header too.
        let mut h = ipv6_udp_summing_to_zero(0);
        h.splice(40..40, [PROTO_UDP, 0, 1, 4, 0, 0, 0, 0]);
        h[6] = NEXT_HEADER_HOP_BY_HOP;
        h[4..6].copy_from_slice(&22u16.to_be_bytes());
        assert!(udp_zero_checksum_to_ones(&mut h));
        assert_eq!(&h[54..56], &[0xff, 0xff]);
    }

    #[test]
    fn a_zero_udp_checksum_meant_as_none_or_a_wrong_one_is_left_alone() {
        // IPv4 "no checksum" (RFC 768) over a datagram that does not sum to zero.
        let mut p = vec![0u8; 28 + 6];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&34u16.to_be_bytes());
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&[10, 10, 0, 10]);
        p[16..20].copy_from_slice(&[10, 20, 0, 10]);
        p[24..26].copy_from_slice(&14u16.to_be_bytes());
        p[28..].copy_from_slice(b"tandem");
        let before = p.clone();
        assert!(!udp_zero_checksum_to_ones(&mut p));
        assert_eq!(p, before);
        // An IPv6 datagram with zero and a payload bit flipped: still wrong, not made right.
        let mut q = ipv6_udp_summing_to_zero(0);
        q[50] ^= 0x01;
        let before = q.clone();
        assert!(!udp_zero_checksum_to_ones(&mut q));
        assert_eq!(q, before);
    }

    #[test]
    fn a_non_syn_segment_is_never_clamped() {
        let mut p = ipv4_tcp_syn(1460, 60, true);
        p[33] = 0x10; // ACK only
        let hdr = InnerHeader::parse(&p).unwrap();
        assert!(!clamp_mss(&mut p, &hdr, 1400));
    }

    #[test]
    fn an_ipv4_fragmentation_needed_error_is_built_in_place_with_valid_checksums() {
        let head = 48;
        let p = ipv4_tcp_syn(1460, 1500, true);
        let mut buf = vec![0u8; head + p.len() + 16];
        buf[head..head + p.len()].copy_from_slice(&p);
        let r = write_icmp_error(
            &mut buf,
            head..head + p.len(),
            IcmpError::TooBig { mtu: 1400 },
        )
        .unwrap();
        let e = &buf[r.clone()];
        assert_eq!(e.len(), 576);
        assert_eq!(r.start, head - 28);
        assert_eq!(e[0], 0x45);
        assert_eq!(u16::from_be_bytes([e[2], e[3]]), 576);
        assert_eq!(e[9], PROTO_ICMP);
        assert_eq!(checksum(&e[..20]), 0, "IPv4 header checksum");
        assert_eq!(&e[12..16], &[10, 20, 0, 10]);
        assert_eq!(&e[16..20], &[10, 10, 0, 10]);
        assert_eq!((e[20], e[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([e[26], e[27]]), 1400);
        assert_eq!(checksum(&e[20..]), 0, "ICMP checksum");
        assert_eq!(&e[28..48], &p[..20], "the original header is quoted");
    }

    #[test]
    fn an_ipv6_packet_too_big_error_has_a_valid_pseudo_header_checksum() {
        let mut p = vec![0u8; 1500];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(1460u16).to_be_bytes());
        p[6] = PROTO_UDP;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd00:10::10".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd00:20::10".parse::<Ipv6Addr>().unwrap().octets());
        let head = 64;
        let mut buf = vec![0u8; head + p.len()];
        buf[head..].copy_from_slice(&p);
        let r = write_icmp_error(
            &mut buf,
            head..head + p.len(),
            IcmpError::TooBig { mtu: 1400 },
        )
        .unwrap();
        let e = &buf[r];
        assert_eq!(e.len(), 1280);
        assert_eq!(e[6], PROTO_ICMPV6);
        assert_eq!(u16::from_be_bytes([e[4], e[5]]) as usize, 1280 - 40);
        assert_eq!(&e[8..24], &p[24..40]);
        assert_eq!(&e[24..40], &p[8..24]);
        assert_eq!((e[40], e[41]), (2, 0));
        assert_eq!(u32::from_be_bytes([e[44], e[45], e[46], e[47]]), 1400);
        let acc = pseudo_header(&e[8..40], PROTO_ICMPV6, (e.len() - 40) as u32);
        assert_eq!(finish(sum(acc, &e[40..])), 0, "ICMPv6 checksum");
    }

    #[test]
    fn an_icmp_error_or_a_multicast_packet_is_never_answered_with_an_error() {
        let head = 48;
        let p = ipv4_tcp_syn(1460, 600, true);
        let mut buf = vec![0u8; head + p.len()];
        buf[head..].copy_from_slice(&p);
        let r = write_icmp_error(&mut buf, head..head + p.len(), IcmpError::Unreachable).unwrap();
        let e = buf[r].to_vec();
        assert_eq!((e[20], e[21]), (3, 0));
        let mut buf2 = vec![0u8; head + e.len()];
        buf2[head..].copy_from_slice(&e);
        assert_eq!(
            write_icmp_error(&mut buf2, head..head + e.len(), IcmpError::Unreachable),
            None
        );
        // Nor about a packet to a multicast group.
        let mut m = ipv4_tcp_syn(1460, 60, true);
        m[16..20].copy_from_slice(&[224, 0, 0, 251]);
        let mut buf3 = vec![0u8; head + m.len()];
        buf3[head..].copy_from_slice(&m);
        assert_eq!(
            write_icmp_error(&mut buf3, head..head + m.len(), IcmpError::Unreachable),
            None
        );
    }

    #[test]
    fn flows_hash_by_five_tuple() {
        let a = ipv4_tcp_syn(1460, 60, true);
        let mut b = a.clone();
        b[20] ^= 1; // another source port
        let ha = InnerHeader::parse(&a).unwrap();
        let hb = InnerHeader::parse(&b).unwrap();
        assert_eq!(ha.flow_hash(&a), ha.flow_hash(&a.clone()));
        assert_ne!(ha.flow_hash(&a), hb.flow_hash(&b));
    }

    #[test]
    fn truncated_or_lying_headers_are_malformed() {
        assert_eq!(InnerHeader::parse(&[]), Err(DropReason::Malformed));
        assert_eq!(InnerHeader::parse(&[0x45; 10]), Err(DropReason::Malformed));
        let mut p = ipv4_tcp_syn(1460, 60, true);
        p[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(InnerHeader::parse(&p), Err(DropReason::Malformed));
        assert_eq!(InnerHeader::parse(&[0x70; 60]), Err(DropReason::Malformed));
    }
}
