//! Traffic-selector narrowing (RFC 7296 §2.9): the responder answers with the intersection of
//! what the initiator proposed and what its own policy allows; the initiator accepts an answer
//! only if every selector in it lies inside one it proposed.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::{AddrRange, TrafficSelector};

/// A selector for a whole IPv4 prefix, any protocol and port.
pub fn ipv4_prefix(addr: Ipv4Addr, len: u8) -> TrafficSelector {
    let len = len.min(32);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let start = u32::from(addr) & mask;
    TrafficSelector {
        ip_proto: 0,
        start_port: 0,
        end_port: u16::MAX,
        addrs: AddrRange::V4(start.into(), (start | !mask).into()),
    }
}

/// A selector for a whole IPv6 prefix, any protocol and port.
pub fn ipv6_prefix(addr: Ipv6Addr, len: u8) -> TrafficSelector {
    let len = len.min(128);
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    let start = u128::from(addr) & mask;
    TrafficSelector {
        ip_proto: 0,
        start_port: 0,
        end_port: u16::MAX,
        addrs: AddrRange::V6(start.into(), (start | !mask).into()),
    }
}

/// The intersection of two selectors, if not empty.
pub fn intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    let ip_proto = match (a.ip_proto, b.ip_proto) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    let start_port = a.start_port.max(b.start_port);
    let end_port = a.end_port.min(b.end_port);
    if start_port > end_port {
        return None;
    }
    let addrs = match (a.addrs, b.addrs) {
        (AddrRange::V4(s1, e1), AddrRange::V4(s2, e2)) => {
            let (s, e) = (s1.max(s2), e1.min(e2));
            if s > e {
                return None;
            }
            AddrRange::V4(s, e)
        }
        (AddrRange::V6(s1, e1), AddrRange::V6(s2, e2)) => {
            let (s, e) = (s1.max(s2), e1.min(e2));
            if s > e {
                return None;
            }
            AddrRange::V6(s, e)
        }
        _ => return None,
    };
    Some(TrafficSelector {
        ip_proto,
        start_port,
        end_port,
        addrs,
    })
}

/// The responder's narrowing: every non-empty intersection of an offered selector with one of
/// `policy`, without duplicates. Empty means TS_UNACCEPTABLE.
pub fn narrow(offered: &[TrafficSelector], policy: &[TrafficSelector]) -> Vec<TrafficSelector> {
    let mut out = Vec::new();
    for o in offered {
        for p in policy {
            if let Some(x) = intersect(o, p)
                && !out.contains(&x)
            {
                out.push(x);
            }
        }
    }
    out
}

/// Whether every selector of `answer` lies inside one of `proposed` (the initiator's check of
/// a narrowed answer).
pub fn within(answer: &[TrafficSelector], proposed: &[TrafficSelector]) -> bool {
    !answer.is_empty()
        && answer
            .iter()
            .all(|a| proposed.iter().any(|p| intersect(a, p).as_ref() == Some(a)))
}
