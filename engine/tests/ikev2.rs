//! IKEv2 connections on the deterministic simulator (see `common/mod.rs`): both engines speak
//! `protocol = "ikev2"` — A initiates, B waits (`initiate = false`) — over the same simulated
//! paths as the tandem-protocol scenarios. The simulator's checks hold here too: no (key, nonce)
//! pair twice, no data on a tunnel not Up, every SA announced in the key log before use.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use common::*;
use tandem_engine::{Event, Silence, TunnelState};

#[test]
fn both_ikev2_tunnels_come_up_data_flows_both_ways_and_liveness_keeps_the_standby_up() {
    let mut sim = Sim::ikev2(Setup::default(), LONG_LIFETIMES);
    sim.add_bidirectional_traffic(ms(20), secs(1));
    sim.run_until(secs(60));
    for side in [Side::A, Side::B] {
        for t in 0..2 {
            let tr = sim.transitions(side, t);
            assert_eq!(
                tr.iter().map(|x| x.1).collect::<Vec<_>>(),
                vec![TunnelState::Up],
                "{side:?} tunnel {t}: {tr:?}"
            );
            assert!(
                tr[0].0 - sim.base < ms(200),
                "Up after {:?}",
                tr[0].0 - sim.base
            );
        }
        assert_eq!(sim.active(side), Some(0));
        assert_eq!(sim.data_sent_per_tunnel[side as usize][1], 0);
    }
    assert_no_loss(&sim, 1, secs(1), secs(60) - ms(50));
    assert_no_loss(&sim, 2, secs(1), secs(60) - ms(50));
    // The idle standby stays Up on liveness probes alone: A probes (an empty INFORMATIONAL) at
    // each quiet dpd_interval and B answers; B, hearing A's probes, probes in turn when quiet.
    let standby = sim.counters(Side::A, 1);
    assert_eq!(standby.tx_packets, 0, "no ESP on the idle standby");
    let now = sim.now;
    let status = sim.engine(Side::A).status(now);
    let t1 = &status.connections[0].tunnels[1];
    assert_eq!(status.connections[0].protocol, "ikev2");
    assert_eq!(t1.ike_state, Some("established"));
    assert_eq!(t1.ike_spi_i.as_ref().map(String::len), Some(16));
    assert!(sim.nonces_checked > 5000);
}

#[test]
fn child_and_ike_sa_rekeys_under_traffic_lose_nothing() {
    // Child SAs every ~9 s, the IKE SA every ~18 s, for two minutes, at a packet every 5 ms.
    let mut sim = Sim::ikev2(Setup::default(), (secs(20), secs(10)));
    sim.add_bidirectional_traffic(ms(5), secs(1));
    sim.run_until(secs(120));
    for side in [Side::A, Side::B] {
        for t in 0..2 {
            let tr = sim.transitions(side, t);
            assert_eq!(tr.len(), 1, "{side:?} tunnel {t} never left Up: {tr:?}");
        }
    }
    let rekeys = sim
        .events
        .iter()
        .filter(|(_, s, e)| {
            *s == Side::A
                && matches!(e, Event::HandshakeCompleted { tunnel, rekey: true, .. } if tunnel.0 == 0)
        })
        .count();
    assert!(rekeys >= 10, "{rekeys} Child SA rekeys on tunnel 1");
    let ike_rekeys = sim
        .events
        .iter()
        .filter(|(_, s, e)| {
            *s == Side::A && matches!(e, Event::IkeSaInstalled { tunnel, .. } if tunnel.0 == 0)
        })
        .count();
    // The first IKE SA and at least five rekeys.
    assert!(ike_rekeys >= 6, "{ike_rekeys} IKE SAs on tunnel 1");
    assert_no_loss(&sim, 1, secs(1), secs(120) - ms(50));
    assert_no_loss(&sim, 2, secs(1), secs(120) - ms(50));
}

#[test]
fn a_cut_ikev2_primary_fails_over_within_dpd_timeout_plus_one_interval_on_both_sides() {
    let setup = Setup::default();
    let bound = setup.failover_bound();
    let mut sim = Sim::ikev2(setup, LONG_LIFETIMES);
    sim.add_bidirectional_traffic(ms(10), secs(1));
    sim.run_until(secs(20));
    let cut = sim.now;
    sim.cut_both(0, true);
    sim.run_until(secs(30));
    sim.assert_both_switched_once(cut, 1, bound);
    assert_no_loss(&sim, 1, secs(20) + bound + ms(20), secs(30) - ms(50));
    assert_no_loss(&sim, 2, secs(20) + bound + ms(20), secs(30) - ms(50));
    // Healed: the same IKE SA answers the probes again, and traffic fails back.
    sim.cut_both(0, false);
    sim.run_until(secs(50));
    for side in [Side::A, Side::B] {
        assert_eq!(sim.state(side, 0), TunnelState::Up, "{side:?}");
        assert_eq!(sim.active(side), Some(0), "{side:?}");
    }
}

#[test]
fn an_ikev2_delete_is_the_closing_notice_and_the_tunnel_comes_back_when_restored() {
    let mut sim = Sim::ikev2(Setup::default(), LONG_LIFETIMES);
    let latency = sim.links[0][0].latency;
    sim.add_bidirectional_traffic(ms(10), secs(1));
    sim.run_until(secs(10));
    let t0 = sim.now;
    sim.engine(Side::A)
        .silence(CONN, "tunnel1", Silence::Graceful, t0)
        .unwrap();
    sim.run_until(secs(20));
    sim.assert_peer_moved_on_closing_notice(t0, 2 * latency);
    assert_no_loss(&sim, 1, secs(9), secs(20));
    let t1 = sim.now;
    sim.engine(Side::A)
        .silence(CONN, "tunnel1", Silence::Off, t1)
        .unwrap();
    sim.run_until(secs(40));
    assert_eq!(sim.state(Side::A, 0), TunnelState::Up);
    assert_eq!(sim.state(Side::B, 0), TunnelState::Up);
    assert_no_loss(&sim, 1, secs(20), secs(40) - ms(50));
    assert_no_loss(&sim, 2, secs(20), secs(40) - ms(50));
}

#[test]
fn a_wrong_ikev2_psk_keeps_tunnel1_down_reports_authentication_failed_and_tunnel2_carries_traffic()
{
    let setup = Setup {
        wrong_psk: vec![0],
        ..Setup::default()
    };
    let mut sim = Sim::ikev2(setup, LONG_LIFETIMES);
    sim.add_bidirectional_traffic(ms(10), secs(1));
    sim.run_until(secs(30));
    for side in [Side::A, Side::B] {
        assert!(
            sim.transitions(side, 0).is_empty(),
            "{side:?}: tunnel 1 never Up"
        );
        assert_eq!(sim.active(side), Some(1));
    }
    let failures: Vec<String> = sim
        .events_of(Side::A)
        .filter_map(|(_, e)| match e {
            Event::IkeFailed { tunnel, reason } if tunnel.0 == 0 => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert!(
        failures.iter().any(|r| r.contains("AUTHENTICATION_FAILED")),
        "{failures:?}"
    );
    assert_no_loss(&sim, 1, secs(1), secs(30) - ms(50));
    assert_no_loss(&sim, 2, secs(1), secs(30) - ms(50));
}

/// A's NAT-T port on tunnel 1 moves (the NAT in front of A rebinds) at `at`.
fn rebind_a(sim: &mut Sim) -> std::net::SocketAddr {
    let moved = std::net::SocketAddr::new(addr(Side::A, 0).ip(), 61_000);
    sim.src_addr[0][Side::A as usize] = moved;
    moved
}

fn endpoint_events(sim: &Sim) -> Vec<std::net::SocketAddr> {
    sim.events_of(Side::B)
        .filter_map(|(_, e)| match e {
            Event::PeerEndpoint { tunnel, addr } if tunnel.0 == 0 => Some(*addr),
            _ => None,
        })
        .collect()
}

#[test]
fn an_idle_ikev2_tunnel_follows_the_peers_nat_t_port_when_its_nat_rebinds() {
    // No traffic: only IKE liveness. B must answer A's probe from the new port there (a
    // response goes where its request came from) and send its own requests there too.
    let mut sim = Sim::ikev2(Setup::default(), LONG_LIFETIMES);
    sim.run_until(secs(10));
    let b0 = tandem_engine::TunnelId(0);
    assert_eq!(
        sim.engine(Side::B).tunnel_remote(b0),
        Some(addr(Side::A, 0))
    );
    let moved = rebind_a(&mut sim);
    sim.run_until(secs(40));
    assert_eq!(sim.engine(Side::B).tunnel_remote(b0), Some(moved));
    assert_eq!(endpoint_events(&sim), vec![moved]);
    for side in [Side::A, Side::B] {
        let tr = sim.transitions(side, 0);
        assert_eq!(
            tr.iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![TunnelState::Up],
            "{side:?} tunnel 1 never left Up: {tr:?}"
        );
    }
}

#[test]
fn an_ikev2_tunnel_under_traffic_follows_a_rebound_nat_t_port_at_the_first_esp_packet() {
    let mut sim = Sim::ikev2(Setup::default(), LONG_LIFETIMES);
    sim.add_bidirectional_traffic(ms(10), secs(1));
    sim.run_until(secs(10));
    let moved = rebind_a(&mut sim);
    sim.run_until(secs(20));
    assert_eq!(
        sim.engine(Side::B)
            .tunnel_remote(tandem_engine::TunnelId(0)),
        Some(moved)
    );
    // Only what B sent before A's first packet from the new port arrived is lost.
    assert_no_loss(&sim, 1, secs(1), secs(20) - ms(50));
    assert_no_loss(&sim, 2, secs(10) + ms(100), secs(20) - ms(50));
    for side in [Side::A, Side::B] {
        assert_eq!(sim.transitions(side, 0).len(), 1, "{side:?}");
    }
}

#[test]
fn a_replayed_ike_request_or_esp_packet_from_another_port_does_not_move_the_endpoint() {
    let mut sim = Sim::ikev2(Setup::default(), LONG_LIFETIMES);
    sim.record_wire = true;
    sim.add_flow(Side::A, 1, ms(50), secs(1));
    sim.run_until(secs(10));
    sim.stop_flows();
    sim.run_until(secs(10) + ms(30));
    let b0 = tandem_engine::TunnelId(0);
    let home = addr(Side::A, 0);
    let spoof = std::net::SocketAddr::new(home.ip(), 9_999);
    // Copies of datagrams B has already received (the link's latency is 10 ms): replays.
    let delivered_by = sim.now - ms(20);
    let from_a = |ike: bool| {
        sim.wire
            .iter()
            .rev()
            .filter(|w| w.0 <= delivered_by)
            .find(|(_, side, t, d)| {
                // IKE: the non-ESP marker, then a request (flags at byte 19 of the message).
                let is_ike_request = d.len() > 24 && d[..4] == [0; 4] && d[4 + 19] & 0x20 == 0;
                *side == Side::A && *t == 0 && (is_ike_request == ike) && (ike || d[..4] != [0; 4])
            })
            .map(|w| w.3.clone())
            .unwrap()
    };
    let (ike, esp) = (from_a(true), from_a(false));
    // The IKE request is answered again from the cache (to where it came from), the ESP
    // packet is a replay: neither is fresh.
    sim.inject(Side::B, 0, spoof, ike);
    assert!(matches!(
        sim.inject(Side::B, 0, spoof, esp),
        tandem_engine::NetAction::Drop(tandem_engine::DropReason::Replay)
    ));
    assert_eq!(sim.engine(Side::B).tunnel_remote(b0), Some(home));
    assert!(endpoint_events(&sim).is_empty());
}

#[test]
fn a_peer_behind_a_nat_comes_up_from_a_nat_t_port_that_is_not_the_configured_one() {
    // A's NAT maps its port 4500 to 61000 from the start: B, configured with A's address and
    // port 4500, answers IKE_SA_INIT where it came from and follows A there once IKE_AUTH
    // authenticates it.
    let mut sim = Sim::ikev2(Setup::default(), LONG_LIFETIMES);
    let moved = rebind_a(&mut sim);
    sim.add_bidirectional_traffic(ms(10), secs(2));
    sim.run_until(secs(10));
    for side in [Side::A, Side::B] {
        assert_eq!(sim.state(side, 0), TunnelState::Up, "{side:?}");
        assert_eq!(sim.active(side), Some(0), "{side:?}");
    }
    assert_eq!(
        sim.engine(Side::B)
            .tunnel_remote(tandem_engine::TunnelId(0)),
        Some(moved)
    );
    assert_no_loss(&sim, 1, secs(2), secs(10) - ms(50));
    assert_no_loss(&sim, 2, secs(2), secs(10) - ms(50));
}

#[test]
fn a_nat_keepalive_from_the_peer_is_consumed_and_counted_nowhere() {
    let mut sim = Sim::ikev2(Setup::default(), LONG_LIFETIMES);
    sim.run_until(secs(5));
    let before = sim.engine(Side::B).drop_counters().total();
    let r = sim.inject(
        Side::B,
        0,
        addr(Side::A, 0),
        tandem_ike::nat::NAT_KEEPALIVE.to_vec(),
    );
    assert_eq!(r, tandem_engine::NetAction::Consumed);
    assert_eq!(sim.engine(Side::B).drop_counters().total(), before);
}
