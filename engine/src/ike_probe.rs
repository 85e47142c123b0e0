//! Drill probes on IKEv2 tunnels (docs/protocol.md, "Drill probes on IKEv2 tunnels"): a standard
//! IPsec peer knows nothing of tandem's in-SA liveness messages, so a drill probe is an ordinary
//! ICMP (or ICMPv6) echo request, sealed into the tunnel's current Child SA from the tunnel's
//! probe source (an address inside `local_subnets`) to its probe target (an address inside
//! `remote_subnets` that answers pings: by default the peer's inside address). The peer
//! decrypts it, its host answers, and the reply comes back through the Child SA because its
//! destination is inside our selectors.
//!
//! Recognising the reply: an echo reply from the target to the source with our identifier
//! ([`PROBE_IDENT`]) and a payload that starts with [`PROBE_TAG`] and carries the probe id and
//! its send time is ours; it is consumed (never written to the TUN). One from the target to
//! the source with our identifier whose length, tag or checksum is wrong is counted as
//! malformed and dropped. Everything else is not a probe and goes on as traffic.
//!
//! No allocation: the request is written into the caller's buffer at the ESP headroom and
//! sealed in place; the reply is read where it was opened.

use std::net::IpAddr;
use std::ops::Range;

use crate::checksum::{checksum, finish, pseudo_header, sum, verifies};
use crate::config::IkeProbe;
use crate::inner::{ICMP_HEADER_LEN, IPV4_HEADER_LEN, IPV6_HEADER_LEN, PROTO_ICMP, PROTO_ICMPV6};
use crate::types::MAX_CONTROL_DATAGRAM;
use tandem_crypto::esp;

/// The ICMP identifier of tandem's drill probes ("td"): with the tag, how a reply is known.
pub(crate) const PROBE_IDENT: u16 = 0x7464;
/// The first payload bytes of a probe; an echo reply returns the payload unchanged
/// (RFC 792, RFC 4443 §4.2).
pub(crate) const PROBE_TAG: [u8; 8] = *b"tandemPb";
/// Payload: tag, probe id (8), send time in ns since the engine's epoch (8).
const PAYLOAD_LEN: usize = PROBE_TAG.len() + 8 + 8;
/// TTL / hop limit of a probe: the peer's host may be a few hops behind its gateway.
const PROBE_TTL: u8 = 64;
/// IPv4 "don't fragment" (RFC 791): a probe is small.
const IPV4_DF: u16 = 0x4000;
/// ICMP echo types (RFC 792; RFC 4443 §4).
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// The longest probe packet (IPv6).
const MAX_PROBE_LEN: usize = IPV6_HEADER_LEN + ICMP_HEADER_LEN + PAYLOAD_LEN;
// A sealed probe fits the buffer the daemon gives `poll_transmit`.
const _: () = assert!(esp::HEADROOM + MAX_PROBE_LEN + esp::TAILROOM <= MAX_CONTROL_DATAGRAM);

/// What an opened inner packet is to the prober.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeReply {
    /// Not a reply to a probe of ours: ordinary traffic.
    NotOurs,
    /// Our probe `id`, sent at `timestamp` (ns since the engine's epoch).
    Ours { id: u64, timestamp: u64 },
    /// Addressed to the prober with our identifier, but its length, tag or checksum is wrong.
    Malformed,
}

/// Writes probe `id` (sent at `timestamp`) as an echo request from `addrs.source` to
/// `addrs.target` into `buf` at `start`; returns the packet's range, or `None` when `buf` is too
/// short or the addresses' families differ (the config never builds such a pair).
pub(crate) fn write_request(
    buf: &mut [u8],
    start: usize,
    addrs: &IkeProbe,
    id: u64,
    timestamp: u64,
) -> Option<Range<usize>> {
    let mut payload = [0u8; PAYLOAD_LEN];
    payload[..8].copy_from_slice(&PROBE_TAG);
    payload[8..16].copy_from_slice(&id.to_be_bytes());
    payload[16..24].copy_from_slice(&timestamp.to_be_bytes());
    let seq = (id as u16).to_be_bytes();
    let ident = PROBE_IDENT.to_be_bytes();
    match (addrs.source, addrs.target) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let total = IPV4_HEADER_LEN + ICMP_HEADER_LEN + PAYLOAD_LEN;
            let out = buf.get_mut(start..start.checked_add(total)?)?;
            let (ip, rest) = out.split_at_mut(IPV4_HEADER_LEN);
            ip.fill(0);
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip[6..8].copy_from_slice(&IPV4_DF.to_be_bytes());
            ip[8] = PROBE_TTL;
            ip[9] = PROTO_ICMP;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let c = checksum(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            rest[..4].copy_from_slice(&[ICMP_ECHO_REQUEST, 0, 0, 0]);
            rest[4..6].copy_from_slice(&ident);
            rest[6..8].copy_from_slice(&seq);
            rest[ICMP_HEADER_LEN..].copy_from_slice(&payload);
            let c = checksum(rest);
            rest[2..4].copy_from_slice(&c.to_be_bytes());
            Some(start..start + total)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let upper = ICMP_HEADER_LEN + PAYLOAD_LEN;
            let total = IPV6_HEADER_LEN + upper;
            let out = buf.get_mut(start..start.checked_add(total)?)?;
            let (ip, rest) = out.split_at_mut(IPV6_HEADER_LEN);
            ip[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, PROTO_ICMPV6, PROBE_TTL]);
            ip[4..6].copy_from_slice(&(upper as u16).to_be_bytes());
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            rest[..4].copy_from_slice(&[ICMPV6_ECHO_REQUEST, 0, 0, 0]);
            rest[4..6].copy_from_slice(&ident);
            rest[6..8].copy_from_slice(&seq);
            rest[ICMP_HEADER_LEN..].copy_from_slice(&payload);
            // RFC 8200 §8.1: the ICMPv6 checksum covers a pseudo-header.
            let acc = pseudo_header(&ip[8..40], PROTO_ICMPV6, upper as u32);
            let c = finish(sum(acc, rest));
            rest[2..4].copy_from_slice(&c.to_be_bytes());
            Some(start..start + total)
        }
        _ => None,
    }
}

/// Whether the inner packet `pkt` (as opened, maybe with ESP padding after it) is the reply to
/// one of our probes over `addrs`.
pub(crate) fn match_reply(pkt: &[u8], addrs: &IkeProbe) -> ProbeReply {
    let Some(&first) = pkt.first() else {
        return ProbeReply::NotOurs;
    };
    let (icmp, echo_reply, v6_addrs) = match (first >> 4, addrs.source, addrs.target) {
        (4, IpAddr::V4(src), IpAddr::V4(dst)) => {
            let ihl = usize::from(first & 0x0f) * 4;
            if pkt.len() < IPV4_HEADER_LEN
                || ihl < IPV4_HEADER_LEN
                || pkt[9] != PROTO_ICMP
                || pkt[12..16] != dst.octets()
                || pkt[16..20] != src.octets()
                // A fragment is never ours: probes are small and sent with DF.
                || u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0
            {
                return ProbeReply::NotOurs;
            }
            let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            let Some(icmp) = pkt.get(ihl..total.min(pkt.len()).max(ihl)) else {
                return ProbeReply::NotOurs;
            };
            if total > pkt.len() {
                return shape(icmp, ICMP_ECHO_REPLY);
            }
            (icmp, ICMP_ECHO_REPLY, None)
        }
        (6, IpAddr::V6(src), IpAddr::V6(dst)) => {
            if pkt.len() < IPV6_HEADER_LEN
                || pkt[6] != PROTO_ICMPV6
                || pkt[8..24] != dst.octets()
                || pkt[24..40] != src.octets()
            {
                return ProbeReply::NotOurs;
            }
            let upper = usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            let end = IPV6_HEADER_LEN.saturating_add(upper);
            let icmp = &pkt[IPV6_HEADER_LEN..end.min(pkt.len())];
            if end > pkt.len() {
                return shape(icmp, ICMPV6_ECHO_REPLY);
            }
            (icmp, ICMPV6_ECHO_REPLY, Some(&pkt[8..40]))
        }
        _ => return ProbeReply::NotOurs,
    };
    if icmp.len() < ICMP_HEADER_LEN
        || icmp[0] != echo_reply
        || icmp[4..6] != PROBE_IDENT.to_be_bytes()
    {
        return ProbeReply::NotOurs;
    }
    let ok_sum = match v6_addrs {
        None => verifies(sum(0, icmp)),
        Some(a) => verifies(sum(pseudo_header(a, PROTO_ICMPV6, icmp.len() as u32), icmp)),
    };
    let payload = &icmp[ICMP_HEADER_LEN..];
    if !ok_sum || payload.len() != PAYLOAD_LEN || payload[..8] != PROBE_TAG {
        return ProbeReply::Malformed;
    }
    let word = |r: Range<usize>| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[r]);
        u64::from_be_bytes(b)
    };
    let id = word(8..16);
    if icmp[6..8] != (id as u16).to_be_bytes() {
        return ProbeReply::Malformed;
    }
    ProbeReply::Ours {
        id,
        timestamp: word(16..24),
    }
}

/// A truncated packet from the target to the source: ours (malformed) if it shows our echo
/// reply type and identifier, else not ours.
fn shape(icmp: &[u8], echo_reply: u8) -> ProbeReply {
    if icmp.len() >= ICMP_HEADER_LEN
        && icmp[0] == echo_reply
        && icmp[4..6] == PROBE_IDENT.to_be_bytes()
    {
        ProbeReply::Malformed
    } else {
        ProbeReply::NotOurs
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn v4() -> IkeProbe {
        IkeProbe {
            source: "10.10.0.1".parse().unwrap(),
            target: "10.20.0.1".parse().unwrap(),
        }
    }

    fn v6() -> IkeProbe {
        IkeProbe {
            source: "fd00:10::1".parse().unwrap(),
            target: "fd00:20::1".parse().unwrap(),
        }
    }

    /// What the peer's host does: swap the addresses, turn the request into a reply, fix the
    /// checksum (ICMPv4: the type word changes; ICMPv6: the type changes and the pseudo-header
    /// is symmetric in the addresses).
    fn answer(pkt: &mut [u8]) {
        if pkt[0] >> 4 == 4 {
            let (a, b) = (pkt[12..16].to_vec(), pkt[16..20].to_vec());
            pkt[12..16].copy_from_slice(&b);
            pkt[16..20].copy_from_slice(&a);
            pkt[20] = ICMP_ECHO_REPLY;
            pkt[22..24].fill(0);
            let c = checksum(&pkt[20..]);
            pkt[22..24].copy_from_slice(&c.to_be_bytes());
        } else {
            let (a, b) = (pkt[8..24].to_vec(), pkt[24..40].to_vec());
            pkt[8..24].copy_from_slice(&b);
            pkt[24..40].copy_from_slice(&a);
            pkt[40] = ICMPV6_ECHO_REPLY;
            pkt[42..44].fill(0);
            let acc = pseudo_header(&pkt[8..40], PROTO_ICMPV6, (pkt.len() - 40) as u32);
            let c = finish(sum(acc, &pkt[40..]));
            pkt[42..44].copy_from_slice(&c.to_be_bytes());
        }
    }

    #[test]
    fn a_request_answered_by_the_peer_is_recognised_as_our_probe_in_both_families() {
        for addrs in [v4(), v6()] {
            let mut buf = [0u8; 200];
            let r = write_request(&mut buf, 30, &addrs, 70_000, 123_456_789).unwrap();
            // The request itself is valid: its checksums verify.
            let pkt = &mut buf[r];
            if addrs.source.is_ipv4() {
                assert!(verifies(sum(0, &pkt[..20])));
                assert!(verifies(sum(0, &pkt[20..])));
            } else {
                let acc = pseudo_header(&pkt[8..40], PROTO_ICMPV6, (pkt.len() - 40) as u32);
                assert!(verifies(sum(acc, &pkt[40..])));
            }
            // Not ours as it stands (a request, and from us).
            assert_eq!(match_reply(pkt, &addrs), ProbeReply::NotOurs);
            answer(pkt);
            assert_eq!(
                match_reply(pkt, &addrs),
                ProbeReply::Ours {
                    id: 70_000,
                    timestamp: 123_456_789
                }
            );
        }
    }

    #[test]
    fn a_damaged_reply_is_malformed_and_other_pings_are_not_ours() {
        for addrs in [v4(), v6()] {
            let mut buf = [0u8; 200];
            let r = write_request(&mut buf, 0, &addrs, 5, 6).unwrap();
            let len = r.len();
            answer(&mut buf[..len]);
            let hdr = if addrs.source.is_ipv4() { 20 } else { 40 };
            // A flipped payload byte: the checksum fails.
            let mut bad = buf;
            bad[hdr + 12] ^= 1;
            assert_eq!(match_reply(&bad[..len], &addrs), ProbeReply::Malformed);
            // Cut short (the IP length says more than arrived).
            assert_eq!(match_reply(&buf[..len - 4], &addrs), ProbeReply::Malformed);
            // Another identifier (someone's own ping between the same hosts): not ours.
            let mut other = buf;
            other[hdr + 4] ^= 0xff;
            assert_eq!(match_reply(&other[..len], &addrs), ProbeReply::NotOurs);
            // From another host: not ours.
            let mut elsewhere = buf;
            elsewhere[if addrs.source.is_ipv4() { 15 } else { 23 }] ^= 1;
            assert_eq!(match_reply(&elsewhere[..len], &addrs), ProbeReply::NotOurs);
            // Empty and one-byte packets never panic.
            assert_eq!(match_reply(&[], &addrs), ProbeReply::NotOurs);
            assert_eq!(match_reply(&buf[..1], &addrs), ProbeReply::NotOurs);
            for n in 0..len {
                let _ = match_reply(&buf[..n], &addrs);
            }
        }
    }

    #[test]
    fn a_buffer_too_short_or_mixed_families_write_nothing() {
        let mut small = [0u8; 40];
        assert!(write_request(&mut small, 0, &v4(), 1, 1).is_none());
        let mixed = IkeProbe {
            source: v4().source,
            target: v6().target,
        };
        let mut buf = [0u8; 200];
        assert!(write_request(&mut buf, 0, &mixed, 1, 1).is_none());
    }
}
