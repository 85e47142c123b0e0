//! Inner-packet classification, as packets from the TUN meet it: the engine's header parser, the
//! route / selector / MTU decision of `Engine::handle_tun_packet` (with its in-place ICMP errors),
//! the TCP MSS clamp and the tunnel-control message parser, on arbitrary bytes.
//! Invariants: no panic; a parsed header never claims more bytes than it was given; an ICMP error
//! lies inside the buffer, parses, goes back to the offender's source and has a valid checksum;
//! the MSS clamp keeps a valid TCP checksum valid and is idempotent; a control message that parses
//! writes back to the same bytes.
#![no_main]

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tandem_engine::inner::{self, InnerHeader};
use tandem_engine::liveness::{LIVENESS_MSG_LEN, LivenessMsg};
use tandem_engine::{
    ConnectionConfig, Engine, EngineConfig, HEADROOM, TAILROOM, TunAction, TunnelConfig,
};

const MTU: u16 = 1400;

fn engine() -> Engine {
    let mut c = ConnectionConfig::with_defaults("fuzz");
    c.local_subnets = vec![
        "10.10.0.0/24".parse().expect("net"),
        "fd00:10::/64".parse().expect("net"),
    ];
    c.remote_subnets = vec![
        "10.20.0.0/16".parse().expect("net"),
        "fd00:20::/64".parse().expect("net"),
    ];
    c.tunnels = vec![TunnelConfig {
        name: "t1".into(),
        local: None,
        remote: Some("192.0.2.2:4500".parse().expect("addr")),
        peer_public_key: [9; 32],
        psk: [7; 32].into(),
        priority: 1,
        ike: None,
    }];
    let cfg = EngineConfig {
        private_key: [5; 32].into(),
        mtu: MTU,
        connections: vec![c],
    };
    Engine::new(cfg, [3; 32], origin(), Duration::from_secs(1_700_000_000))
}

fn origin() -> Instant {
    thread_local!(static T: Instant = Instant::now());
    T.with(|t| *t)
}

thread_local! {
    static ENGINE: RefCell<Engine> = RefCell::new(engine());
}

/// Pseudo-header + segment checksum of a TCP packet whose header `hdr` describes (0 = valid).
fn tcp_checksum(pkt: &[u8], hdr: &InnerHeader) -> Option<u16> {
    let l4 = hdr.l4?;
    let seg = pkt.get(l4..hdr.len)?;
    let mut pseudo = Vec::with_capacity(40 + seg.len());
    match (hdr.src, hdr.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
        }
        _ => return None,
    }
    pseudo.extend_from_slice(seg);
    Some(inner::checksum(&pseudo))
}

fuzz_target!(|data: &[u8]| {
    // 1) The header parser.
    let parsed = InnerHeader::parse(data);
    if let Ok(h) = &parsed {
        assert!(
            h.len <= data.len(),
            "header claims {} of {} bytes",
            h.len,
            data.len()
        );
        assert_eq!(h.src.is_ipv4(), h.dst.is_ipv4());
        if let Some(l4) = h.l4 {
            assert!(l4 <= h.len);
        }
        let _ = h.flow_hash(data);
    }

    // 2) The MSS clamp: a valid TCP checksum stays valid; a second clamp changes nothing.
    if let Ok(h) = parsed {
        if h.proto == 6 {
            let mut pkt = data.to_vec();
            let before = tcp_checksum(&pkt, &h);
            let changed = inner::clamp_mss(&mut pkt, &h, MTU);
            if changed && before == Some(0) {
                assert_eq!(
                    tcp_checksum(&pkt, &h),
                    Some(0),
                    "clamp broke the TCP checksum"
                );
            }
            assert!(
                !inner::clamp_mss(&mut pkt, &h, MTU),
                "clamp is not idempotent"
            );
            if !changed {
                assert_eq!(pkt, data, "an unchanged packet was modified");
            }
        }
    }

    // 3) The engine's TUN path, with the headroom and tailroom the daemon gives it.
    let mut buf = vec![0u8; HEADROOM + data.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
    let now = origin();
    let action = ENGINE.with(|e| {
        e.borrow_mut()
            .handle_tun_packet(&mut buf, HEADROOM..HEADROOM + data.len(), now)
    });
    match action {
        TunAction::Reply { packet } => {
            assert!(packet.end <= buf.len() && packet.start <= packet.end);
            let icmp = &buf[packet.clone()];
            let ih = InnerHeader::parse(icmp).expect("the ICMP error parses");
            let orig = InnerHeader::parse(data).expect("only a parsed packet gets an error");
            assert_eq!(ih.dst, orig.src, "the error goes back to the offender");
            let l4 = ih.l4.expect("ICMP has a transport header");
            if ih.src.is_ipv4() {
                assert_eq!(inner::checksum(&icmp[..20]), 0, "IPv4 header checksum");
                assert_eq!(inner::checksum(&icmp[l4..ih.len]), 0, "ICMP checksum");
            }
        }
        TunAction::Send { datagram, .. } => {
            assert!(datagram.end <= buf.len());
        }
        TunAction::Drop(_) => {}
    }

    // 4) Tunnel-control messages.
    if let Some(msg) = data.get(..LIVENESS_MSG_LEN) {
        if let Some(c) = LivenessMsg::parse(msg) {
            let mut out = [0u8; LIVENESS_MSG_LEN];
            c.write(&mut out);
            assert_eq!(&out[..], msg, "control message does not round-trip");
        }
    }
});
