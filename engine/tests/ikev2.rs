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
