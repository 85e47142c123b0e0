//! The inner-packet path through a live pair of engines (docs/protocol.md): routing, traffic
//! selectors, ICMP errors back into the TUN, MSS clamping across the tunnel, status JSON.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use common::*;
use tandem_engine::{DropReason, HEADROOM, NetAction, TAILROOM, TunAction};

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize, df: bool) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = if df { 0x40 } else { 0 };
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = tandem_engine::inner::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

fn tcp_syn(src: [u8; 4], dst: [u8; 4], mss: u16) -> Vec<u8> {
    let mut p = ipv4(src, dst, 6, 44, true);
    p[32] = 6 << 4;
    p[33] = 0x02;
    p[40..44].copy_from_slice(&[2, 4, 0, 0]);
    p[42..44].copy_from_slice(&mss.to_be_bytes());
    p
}

fn in_buf(pkt: &[u8]) -> (Vec<u8>, std::ops::Range<usize>) {
    let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
    (buf, HEADROOM..HEADROOM + pkt.len())
}

fn up_pair() -> Sim {
    let mut sim = Sim::new(Setup::default());
    sim.run_until(secs(3));
    sim
}

#[test]
fn an_oversized_df_packet_gets_fragmentation_needed_back_into_the_tun() {
    let mut sim = up_pair();
    let now = sim.now;
    let (mut buf, r) = in_buf(&ipv4([10, 10, 0, 10], [10, 20, 0, 10], 17, 1500, true));
    let TunAction::Reply { packet } = sim.engine(Side::A).handle_tun_packet(&mut buf, r, now)
    else {
        panic!()
    };
    let icmp = &buf[packet];
    assert_eq!((icmp[20], icmp[21]), (3, 4));
    assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1400);
    assert_eq!(&icmp[16..20], &[10, 10, 0, 10], "back to the sender");
    assert_eq!(tandem_engine::inner::checksum(&icmp[20..]), 0);
    assert_eq!(
        sim.engine(Side::A).drop_counters().get(DropReason::TooBig),
        1
    );
    // Without DF it is carried (the outer packet may be fragmented).
    let (mut buf, r) = in_buf(&ipv4([10, 10, 0, 10], [10, 20, 0, 10], 17, 1500, false));
    assert!(matches!(
        sim.engine(Side::A).handle_tun_packet(&mut buf, r, now),
        TunAction::Send { .. }
    ));
}

#[test]
fn an_unrouted_destination_gets_unreachable_and_a_foreign_source_is_a_selector_drop() {
    let mut sim = up_pair();
    let now = sim.now;
    let (mut buf, r) = in_buf(&ipv4([10, 10, 0, 10], [172, 16, 0, 1], 17, 60, false));
    let TunAction::Reply { packet } = sim.engine(Side::A).handle_tun_packet(&mut buf, r, now)
    else {
        panic!()
    };
    assert_eq!((buf[packet.start + 20], buf[packet.start + 21]), (3, 0));
    assert_eq!(
        sim.engine(Side::A).drop_counters().get(DropReason::NoRoute),
        1
    );
    let (mut buf, r) = in_buf(&ipv4([10, 99, 0, 10], [10, 20, 0, 10], 17, 60, false));
    assert_eq!(
        sim.engine(Side::A).handle_tun_packet(&mut buf, r, now),
        TunAction::Drop(DropReason::Selector)
    );
    let (mut buf, r) = in_buf(&[0x45, 0, 0]);
    assert_eq!(
        sim.engine(Side::A).handle_tun_packet(&mut buf, r, now),
        TunAction::Drop(DropReason::Malformed)
    );
}

#[test]
fn a_decrypted_packet_outside_the_selectors_is_dropped_and_a_syn_arrives_with_its_mss_clamped() {
    // B may send from 10.20.0.0/16 but A only accepts 10.20.0.0/24 from this connection.
    let setup = Setup::default();
    let a = config(&setup, Side::A);
    let mut b = config(&setup, Side::B);
    b.connections[0].local_subnets = vec!["10.20.0.0/16".parse().unwrap()];
    let mut sim = Sim::with_configs(setup, a, b);
    sim.run_until(secs(3));
    let now = sim.now;
    let (mut buf, r) = in_buf(&ipv4([10, 20, 9, 9], [10, 10, 0, 10], 17, 60, false));
    let TunAction::Send {
        tunnel, datagram, ..
    } = sim.engine(Side::B).handle_tun_packet(&mut buf, r, now)
    else {
        panic!()
    };
    let from = addr(Side::B, usize::from(tunnel.0));
    assert_eq!(
        sim.engine(Side::A)
            .handle_datagram(tunnel, from, &mut buf, datagram, now),
        NetAction::Drop(DropReason::Selector)
    );

    let (mut buf, r) = in_buf(&tcp_syn([10, 20, 0, 10], [10, 10, 0, 10], 1460));
    let TunAction::Send {
        tunnel, datagram, ..
    } = sim.engine(Side::B).handle_tun_packet(&mut buf, r, now)
    else {
        panic!()
    };
    let NetAction::Deliver { packet, .. } =
        sim.engine(Side::A)
            .handle_datagram(tunnel, from, &mut buf, datagram.clone(), now)
    else {
        panic!()
    };
    assert_eq!(
        u16::from_be_bytes([buf[packet.start + 42], buf[packet.start + 43]]),
        1360
    );
}

#[test]
fn a_replayed_or_tampered_esp_datagram_is_dropped_and_counted() {
    let mut sim = up_pair();
    let now = sim.now;
    let (mut buf, r) = in_buf(&ipv4([10, 10, 0, 10], [10, 20, 0, 10], 17, 100, false));
    let TunAction::Send {
        tunnel, datagram, ..
    } = sim.engine(Side::A).handle_tun_packet(&mut buf, r, now)
    else {
        panic!()
    };
    let wire = buf[datagram.clone()].to_vec();
    let from = addr(Side::A, 0);
    assert!(matches!(
        sim.inject(Side::B, usize::from(tunnel.0), from, wire.clone()),
        NetAction::Deliver { .. }
    ));
    assert_eq!(
        sim.inject(Side::B, usize::from(tunnel.0), from, wire.clone()),
        NetAction::Drop(DropReason::Replay)
    );
    let mut bad = wire;
    bad[20] ^= 1;
    bad[4..8].copy_from_slice(&1_000_000u32.to_be_bytes());
    bad[8..16].copy_from_slice(&1_000_000u64.to_be_bytes());
    assert_eq!(
        sim.inject(Side::B, usize::from(tunnel.0), from, bad),
        NetAction::Drop(DropReason::Auth)
    );
    let d = sim.engine(Side::B).drop_counters();
    assert_eq!((d.get(DropReason::Replay), d.get(DropReason::Auth)), (1, 1));
}

#[test]
fn status_serialises_with_the_spec_field_names() {
    let mut sim = up_pair();
    let now = sim.now;
    let v = serde_json::to_value(sim.engine(Side::A).status(now)).unwrap();
    let c = &v["connections"][0];
    assert_eq!(c["name"], "prod-vpc");
    assert_eq!(c["mode"], "active-standby");
    assert_eq!(c["active_tunnel"], "tunnel1");
    assert_eq!(c["pinned"], false);
    let t = &c["tunnels"][0];
    for k in [
        "name",
        "state",
        "local",
        "remote",
        "spi_in",
        "spi_out",
        "last_handshake_unix",
        "rx_bytes",
        "tx_bytes",
        "rx_packets",
        "tx_packets",
        "rtt_ms",
        "failovers",
    ] {
        assert!(t.get(k).is_some(), "missing {k}");
    }
    assert_eq!(t["state"], "up");
    assert_eq!(t["remote"], "192.0.2.2:4500");
    assert!(t["last_handshake_unix"].as_u64().unwrap() >= UNIX_BASE.as_secs());
    assert!(t["spi_in"].as_u64().unwrap() >= 256);
}

fn ipv6_udp(src: &str, dst: &str, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
    p[24..40].copy_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
    p
}

#[test]
fn ipv6_packets_cross_the_tunnel_and_an_oversized_one_gets_packet_too_big() {
    let setup = Setup::default();
    let mut a = config(&setup, Side::A);
    let mut b = config(&setup, Side::B);
    a.connections[0]
        .local_subnets
        .push("fd00:10::/64".parse().unwrap());
    a.connections[0]
        .remote_subnets
        .push("fd00:20::/64".parse().unwrap());
    b.connections[0]
        .local_subnets
        .push("fd00:20::/64".parse().unwrap());
    b.connections[0]
        .remote_subnets
        .push("fd00:10::/64".parse().unwrap());
    let mut sim = Sim::with_configs(setup, a, b);
    sim.run_until(secs(3));
    let now = sim.now;
    let pkt = ipv6_udp("fd00:10::10", "fd00:20::10", 200);
    let (mut buf, r) = in_buf(&pkt);
    let TunAction::Send {
        tunnel, datagram, ..
    } = sim.engine(Side::A).handle_tun_packet(&mut buf, r, now)
    else {
        panic!()
    };
    let from = addr(Side::A, usize::from(tunnel.0));
    let NetAction::Deliver { packet, .. } = sim
        .engine(Side::B)
        .handle_datagram(tunnel, from, &mut buf, datagram, now)
    else {
        panic!()
    };
    assert_eq!(&buf[packet], &pkt[..], "delivered byte for byte");

    let (mut buf, r) = in_buf(&ipv6_udp("fd00:10::10", "fd00:20::10", 1500));
    let TunAction::Reply { packet } = sim.engine(Side::A).handle_tun_packet(&mut buf, r, now)
    else {
        panic!()
    };
    let e = &buf[packet];
    assert_eq!((e[6], e[40], e[41]), (58, 2, 0));
    assert_eq!(u32::from_be_bytes([e[44], e[45], e[46], e[47]]), 1400);
    assert_eq!(e.len(), 1280);
}

#[test]
fn icmp_errors_are_rate_limited_and_every_dropped_packet_is_counted_once() {
    let mut sim = up_pair();
    let now = sim.now;
    let limit = tandem_engine::ICMP_ERRORS_PER_SECOND as usize;
    let pkt = ipv4([10, 10, 0, 10], [10, 20, 0, 10], 17, 1500, true);
    let mut replies = 0;
    for _ in 0..limit + 500 {
        let (mut buf, r) = in_buf(&pkt);
        match sim.engine(Side::A).handle_tun_packet(&mut buf, r, now) {
            TunAction::Reply { .. } => replies += 1,
            TunAction::Drop(DropReason::TooBig) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(replies, limit);
    assert_eq!(
        sim.engine(Side::A).drop_counters().get(DropReason::TooBig),
        (limit + 500) as u64
    );
    // A second later the budget is back.
    let (mut buf, r) = in_buf(&pkt);
    let later = now + secs(1);
    assert!(matches!(
        sim.engine(Side::A).handle_tun_packet(&mut buf, r, later),
        TunAction::Reply { .. }
    ));
}
