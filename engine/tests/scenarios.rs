//! Protocol scenarios on the deterministic simulator (see `common/mod.rs`). Every scenario also
//! checks, on every datagram, that no (key, nonce) pair is used twice and that no data is sent
//! on a tunnel that is not Up.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use common::*;
use std::time::Duration;
use tandem_engine::TunnelState;

#[test]
fn both_tunnels_come_up_and_the_standby_stays_up_on_keepalives_alone() {
    let mut sim = Sim::new(Setup::default());
    sim.add_bidirectional_traffic(ms(20), ms(2000));
    sim.run_until(secs(300));
    for side in [Side::A, Side::B] {
        for t in 0..2 {
            assert_eq!(sim.state(side, t), TunnelState::Up, "{side:?} tunnel {t}");
            let tr = sim.transitions(side, t);
            assert_eq!(
                tr.iter().filter(|(_, s)| *s == TunnelState::Up).count(),
                1,
                "{side:?} tunnel {t} came Up once: {tr:?}"
            );
            assert!(
                tr.iter().all(|(_, s)| *s != TunnelState::Down),
                "{side:?} tunnel {t} went Down: {tr:?}"
            );
            assert!(
                tr[0].0 - sim.base < ms(500),
                "{side:?} tunnel {t} Up after {:?}",
                tr[0].0 - sim.base
            );
        }
        assert_eq!(sim.active(side), Some(0));
        // The standby carried no data, only keepalives, and rekeyed like the primary.
        assert_eq!(sim.data_sent_per_tunnel[side as usize][1], 0);
        let c = sim.counters(side, 1);
        assert!(
            c.rx_packets >= 300 * 4 - 10,
            "standby heard {} packets",
            c.rx_packets
        );
        assert!(
            c.handshakes >= 3,
            "standby rekeyed: {} handshakes",
            c.handshakes
        );
        assert!(c.rtt.is_some());
    }
    let (sent, delivered, dup) = sim.flow_stats(1, sim.at(ms(2000)), sim.at(secs(300)));
    assert_eq!((delivered, dup), (sent, 0));
    let (sent, delivered, dup) = sim.flow_stats(2, sim.at(ms(2000)), sim.at(secs(300)));
    assert_eq!((delivered, dup), (sent, 0));
    assert!(sim.nonces_checked > 30_000);
}

#[test]
fn primary_cut_both_ways_moves_traffic_to_the_standby_within_dpd_timeout_plus_one_interval() {
    let setup = Setup::default();
    let bound = setup.failover_bound();
    let mut sim = Sim::new(setup);
    sim.add_bidirectional_traffic(ms(10), secs(2));
    sim.run_until(secs(30));
    let cut = sim.now;
    sim.cut_both(0, true);
    sim.run_until(secs(40));
    sim.assert_both_switched_once(cut, 1, bound);
    for flow in [1, 2] {
        // Counted exactly: the packets lost are exactly those sent on the primary after the cut,
        // and there are no more of them than the detection bound allows at 10 ms spacing.
        let mut lost = 0;
        let mut first_standby: Option<std::time::Instant> = None;
        for ((f, _), fate) in &sim.fates {
            let Some(at) = fate
                .sent_at
                .filter(|t| *f == flow && *t > cut && *t < sim.at(secs(40) - ms(50)))
            else {
                continue;
            };
            match fate.sent_on {
                Some(0) => {
                    assert_eq!(fate.delivered, 0);
                    lost += 1;
                }
                Some(1) => {
                    assert_eq!(fate.delivered, 1);
                    first_standby = Some(first_standby.map_or(at, |x| x.min(at)));
                }
                other => panic!("flow {flow} packet at {at:?} sent on {other:?}"),
            }
        }
        let max_lost = (bound.as_millis() / 10) as u64 + 1;
        assert!(
            lost > 0 && lost <= max_lost,
            "flow {flow}: {lost} lost, bound {max_lost}"
        );
        assert!(first_standby.unwrap() - cut <= bound);
        assert_no_loss(&sim, flow, secs(30) + bound + ms(20), secs(40) - ms(50));
    }
}

#[test]
fn a_one_way_cut_in_either_direction_takes_the_primary_down_on_both_sides_and_both_directions_use_the_standby()
 {
    for dir in [Side::A, Side::B] {
        let setup = Setup::default();
        let bound = setup.failover_bound();
        let mut sim = Sim::new(setup);
        sim.add_bidirectional_traffic(ms(10), secs(2));
        sim.run_until(secs(30));
        let cut = sim.now;
        sim.cut(0, dir, true);
        sim.run_until(secs(40));
        for side in [Side::A, Side::B] {
            let down = sim
                .transitions(side, 0)
                .into_iter()
                .find(|(t, s)| *t >= cut && *s == TunnelState::Down);
            let (t, _) = down.unwrap_or_else(|| panic!("cut {dir:?}->: {side:?} never went Down"));
            assert!(
                t - cut <= bound,
                "cut {dir:?}->: {side:?} Down after {:?}",
                t - cut
            );
            assert_eq!(
                sim.state(side, 0),
                TunnelState::Down,
                "stays Down while the cut lasts"
            );
            assert_eq!(sim.active(side), Some(1));
        }
        assert_no_loss(&sim, 1, secs(30) + bound + ms(20), secs(40) - ms(50));
        assert_no_loss(&sim, 2, secs(30) + bound + ms(20), secs(40) - ms(50));
    }
}

#[test]
fn the_primary_heals_and_traffic_fails_back_after_the_hold_down_with_zero_loss() {
    let setup = Setup::default();
    let hold = setup.failback.unwrap();
    let mut sim = Sim::new(setup);
    sim.add_bidirectional_traffic(ms(10), secs(2));
    sim.run_until(secs(30));
    sim.cut_both(0, true);
    sim.run_until(secs(40));
    let heal = sim.now;
    sim.cut_both(0, false);
    sim.run_until(secs(70));
    for side in [Side::A, Side::B] {
        let up = sim
            .transitions(side, 0)
            .into_iter()
            .find(|(t, s)| *t >= heal && *s == TunnelState::Up)
            .unwrap()
            .0;
        assert!(
            up - heal < ms(600),
            "{side:?} primary Up {:?} after the heal",
            up - heal
        );
        let back: Vec<_> = sim
            .switches(side)
            .into_iter()
            .filter(|(t, _)| *t >= heal)
            .collect();
        assert_eq!(back.len(), 1, "{side:?}: {back:?}");
        assert_eq!(back[0].1, Some(0));
        assert!(
            back[0].0 - up >= hold && back[0].0 - up < hold + ms(1),
            "{side:?} failback {:?} after Up",
            back[0].0 - up
        );
    }
    // Zero loss from the heal on, across the failback, in both directions.
    assert_no_loss(&sim, 1, secs(40), secs(70) - ms(50));
    assert_no_loss(&sim, 2, secs(40), secs(70) - ms(50));
}

#[test]
fn a_primary_that_flaps_every_200_ms_causes_at_most_one_switch_per_hold_down() {
    let setup = Setup {
        dpd_interval: ms(50),
        dpd_timeout: ms(150),
        failback: Some(secs(2)),
        ..Setup::default()
    };
    let hold = setup.failback.unwrap();
    let mut sim = Sim::new(setup);
    sim.add_bidirectional_traffic(ms(10), secs(1));
    sim.run_until(secs(10));
    let mut cut = false;
    for k in 0..50u64 {
        cut = !cut;
        sim.cut_both(0, cut);
        sim.run_until(secs(10) + ms(200 * (k + 1)));
    }
    sim.cut_both(0, false);
    sim.run_until(secs(30));
    for side in [Side::A, Side::B] {
        let downs = sim
            .transitions(side, 0)
            .iter()
            .filter(|(_, s)| *s == TunnelState::Down)
            .count();
        assert!(
            downs >= 10,
            "{side:?}: the primary really flapped ({downs} Downs)"
        );
        let sw = sim.switches(side);
        for w in sw.windows(2).skip(1) {
            assert!(
                w[1].0 - w[0].0 >= hold,
                "{side:?}: two switches within a hold-down: {sw:?}"
            );
        }
        // Initial choice, away from the flapping primary once, back once it is stable.
        assert_eq!(
            sw.iter().map(|s| s.1).collect::<Vec<_>>(),
            vec![Some(0), Some(1), Some(0)],
            "{side:?}"
        );
        assert_eq!(sim.active(side), Some(0));
    }

    // At default timers (1 s DPD timeout) 200 ms outages never even take the primary Down.
    let mut sim = Sim::new(Setup::default());
    sim.add_bidirectional_traffic(ms(10), secs(1));
    sim.run_until(secs(10));
    let mut cut = false;
    for k in 0..50u64 {
        cut = !cut;
        sim.cut_both(0, cut);
        sim.run_until(secs(10) + ms(200 * (k + 1)));
    }
    sim.cut_both(0, false);
    sim.run_until(secs(30));
    for side in [Side::A, Side::B] {
        assert_eq!(
            sim.switches(side).len(),
            1,
            "{side:?}: only the initial choice"
        );
        assert!(
            sim.transitions(side, 0)
                .iter()
                .all(|(_, s)| *s != TunnelState::Down)
        );
    }
}

#[test]
fn rekeying_every_2_s_for_10_minutes_under_traffic_loses_nothing_and_never_reuses_a_nonce() {
    let setup = Setup {
        rekey_after: secs(2),
        ..Setup::default()
    };
    let mut sim = Sim::new(setup);
    sim.add_bidirectional_traffic(ms(10), secs(1));
    sim.run_until(secs(600));
    assert_no_loss(&sim, 1, secs(1), secs(600) - ms(50));
    assert_no_loss(&sim, 2, secs(1), secs(600) - ms(50));
    for side in [Side::A, Side::B] {
        for t in 0..2 {
            let c = sim.counters(side, t);
            assert!(
                c.handshakes >= 200,
                "{side:?} tunnel {t}: {} handshakes",
                c.handshakes
            );
            assert!(
                sim.transitions(side, usize::from(t))
                    .iter()
                    .all(|(_, s)| *s != TunnelState::Down)
            );
        }
    }
    // Every ESP datagram's (key, nonce) was checked: 120k data packets plus keepalives.
    assert!(
        sim.nonces_checked > 120_000 + 4 * 4 * 600,
        "{}",
        sim.nonces_checked
    );
}

#[test]
fn a_peer_restarting_with_its_state_lost_rehandshakes_traffic_resumes_and_a_replayed_old_initiation_changes_nothing()
 {
    let setup = Setup {
        b_responder_only: true,
        ..Setup::default()
    };
    let mut sim = Sim::new(setup);
    sim.record_wire = true;
    sim.add_bidirectional_traffic(ms(10), secs(2));
    sim.run_until(secs(30));
    let old_init = sim
        .wire
        .iter()
        .find(|(_, from, t, b)| {
            *from == Side::A && *t == 0 && b.len() > 5 && b[..5] == [0, 0, 0, 0, 1]
        })
        .map(|w| w.3.clone())
        .unwrap();
    let restart = sim.now;
    sim.restart(Side::B);
    sim.run_until(secs(45));
    // A notices (DPD), re-handshakes within its first retry (1 s +- 1/8), traffic resumes.
    let rehandshake = sim
        .events_of(Side::B)
        .find(|(t, e)| *t >= restart && matches!(e, tandem_engine::Event::HandshakeCompleted { tunnel, .. } if tunnel.0 == 0))
        .map(|(t, _)| t)
        .unwrap();
    assert!(
        rehandshake - restart < secs(3),
        "re-handshake after {:?}",
        rehandshake - restart
    );
    assert_eq!(sim.state(Side::A, 0), TunnelState::Up);
    assert_eq!(sim.state(Side::B, 0), TunnelState::Up);
    assert_no_loss(&sim, 1, secs(34), secs(45));
    assert_no_loss(&sim, 2, secs(34), secs(45));

    // The replay: B answers nothing, installs nothing, changes no state; traffic is untouched.
    let events_before = sim.events.len();
    let wire_before = sim.wire.len();
    let drops_before = sim
        .engine(Side::B)
        .drop_counters()
        .get(tandem_engine::DropReason::Handshake);
    let src = addr(Side::A, 0);
    let r = sim.inject(Side::B, 0, src, old_init);
    assert_eq!(
        r,
        tandem_engine::NetAction::Drop(tandem_engine::DropReason::Handshake)
    );
    assert_eq!(sim.events.len(), events_before, "no event from a replay");
    assert_eq!(
        sim.wire.len(),
        wire_before,
        "nothing sent in answer to a replay"
    );
    assert_eq!(
        sim.engine(Side::B)
            .drop_counters()
            .get(tandem_engine::DropReason::Handshake),
        drops_before + 1
    );
    sim.run_until(secs(60));
    assert_no_loss(&sim, 1, secs(34), secs(60) - ms(50));
    assert_no_loss(&sim, 2, secs(34), secs(60) - ms(50));
}

#[test]
fn a_closing_notice_moves_the_peer_within_one_rtt() {
    let mut sim = Sim::new(Setup::default());
    let latency = sim.links[0][0].latency;
    sim.add_bidirectional_traffic(ms(10), secs(2));
    sim.run_until(secs(30));
    let t0 = sim.now;
    sim.engine(Side::A)
        .silence(CONN, "tunnel1", tandem_engine::Silence::Graceful, t0)
        .unwrap();
    sim.run_until(secs(40));
    let a = sim.switches_since(Side::A, t0).first().copied();
    assert_eq!(a, Some((t0, Some(1))), "the closing side moves at once");
    sim.assert_peer_moved_on_closing_notice(t0, 2 * latency);
    assert_eq!(sim.state(Side::A, 0), TunnelState::AdminDown);
    // A->B: nothing lost (A moved first). B->A: at most what was in flight for one RTT.
    assert_no_loss(&sim, 1, secs(29), secs(40));
    let (sent, delivered, _) = sim.flow_stats(2, sim.at(secs(29)), sim.at(secs(40)));
    assert!(
        sent - delivered <= (2 * latency.as_millis() / 10) as u64 + 1,
        "{} lost",
        sent - delivered
    );
    // Restored: the tunnel comes back and traffic fails back after the hold-down.
    let t1 = sim.now;
    sim.engine(Side::A)
        .silence(CONN, "tunnel1", tandem_engine::Silence::Off, t1)
        .unwrap();
    sim.run_until(secs(60));
    assert_eq!(sim.state(Side::A, 0), TunnelState::Up);
    assert_eq!(sim.active(Side::A), Some(0));
    assert_eq!(sim.active(Side::B), Some(0));
    assert_no_loss(&sim, 1, secs(40), secs(60) - ms(50));
    assert_no_loss(&sim, 2, secs(40), secs(60) - ms(50));
}

#[test]
fn a_wrong_psk_on_tunnel1_only_keeps_tunnel1_from_coming_up_and_tunnel2_carries_everything() {
    let setup = Setup {
        wrong_psk: vec![0],
        ..Setup::default()
    };
    let mut sim = Sim::new(setup);
    sim.add_bidirectional_traffic(ms(10), secs(2));
    sim.run_until(secs(60));
    for side in [Side::A, Side::B] {
        assert!(
            sim.transitions(side, 0)
                .iter()
                .all(|(_, s)| *s != TunnelState::Up),
            "{side:?} tunnel1 came Up"
        );
        assert_ne!(sim.state(side, 0), TunnelState::Up);
        assert_eq!(sim.state(side, 1), TunnelState::Up);
        assert_eq!(sim.active(side), Some(1));
        assert_eq!(sim.data_sent_per_tunnel[side as usize][0], 0);
        // The response cannot authenticate with the wrong PSK.
        assert!(
            sim.engine(side)
                .drop_counters()
                .get(tandem_engine::DropReason::Auth)
                > 0
        );
    }
    assert_no_loss(&sim, 1, secs(2), secs(60) - ms(50));
    assert_no_loss(&sim, 2, secs(2), secs(60) - ms(50));
}

#[test]
fn active_active_spreads_flows_over_both_tunnels_and_a_cut_moves_only_the_dead_tunnels_flows() {
    let setup = Setup {
        mode: tandem_engine::Mode::ActiveActive,
        ..Setup::default()
    };
    let bound = setup.failover_bound();
    let mut sim = Sim::new(setup);
    for f in 0..16 {
        sim.add_flow(Side::A, 100 + f, ms(20), secs(2) + ms(u64::from(f)));
    }
    sim.run_until(secs(20));
    let tunnel_of = |sim: &Sim, flow: u32, from: std::time::Duration, to: std::time::Duration| {
        let set: std::collections::BTreeSet<_> = sim
            .fates
            .iter()
            .filter(|((f, _), fate)| {
                *f == flow
                    && fate
                        .sent_at
                        .is_some_and(|t| t >= sim.at(from) && t < sim.at(to))
            })
            .map(|(_, fate)| fate.sent_on)
            .collect();
        assert_eq!(set.len(), 1, "flow {flow} used {set:?}");
        set.into_iter().next().unwrap().unwrap()
    };
    let before: Vec<usize> = (0..16)
        .map(|f| tunnel_of(&sim, 100 + f, secs(2), secs(20)))
        .collect();
    let on0 = before.iter().filter(|&&t| t == 0).count();
    assert!(
        (3..=13).contains(&on0),
        "flows per tunnel: {on0} / {}",
        16 - on0
    );
    let cut = sim.now;
    sim.cut_both(1, true);
    sim.run_until(secs(30));
    for f in 0..16u32 {
        let after = tunnel_of(&sim, 100 + f, secs(20) + bound + ms(30), secs(30));
        assert_eq!(after, 0, "flow {f} ends on the live tunnel");
        if before[f as usize] == 0 {
            // Never moved, never lost a packet.
            assert_eq!(tunnel_of(&sim, 100 + f, secs(2), secs(30)), 0);
            assert_no_loss(&sim, 100 + f, secs(2), secs(30) - ms(50));
        }
    }
    let _ = cut;
}

#[test]
fn simultaneous_initiations_are_both_accepted_and_the_tunnels_come_up() {
    let mut sim = Sim::new(Setup::default());
    sim.add_bidirectional_traffic(ms(10), ms(500));
    sim.run_until(secs(10));
    for side in [Side::A, Side::B] {
        let roles: Vec<bool> = sim
            .events_of(side)
            .filter_map(|(_, e)| match e {
                tandem_engine::Event::HandshakeCompleted {
                    tunnel, initiator, ..
                } if tunnel.0 == 0 => Some(*initiator),
                _ => None,
            })
            .collect();
        assert!(
            roles.contains(&true) && roles.contains(&false),
            "{side:?} both initiated and responded: {roles:?}"
        );
        assert_eq!(sim.state(side, 0), TunnelState::Up);
    }
    assert_no_loss(&sim, 1, ms(500), secs(10) - ms(50));
    assert_no_loss(&sim, 2, ms(500), secs(10) - ms(50));
}

#[test]
fn a_planned_failover_pins_the_standby_without_loss_and_auto_returns_to_the_primary() {
    let mut sim = Sim::new(Setup::default());
    sim.add_bidirectional_traffic(ms(10), secs(2));
    sim.run_until(secs(20));
    let now = sim.now;
    sim.engine(Side::A)
        .failover(CONN, tandem_engine::FailoverTarget::Best, now)
        .unwrap();
    assert_eq!(sim.active(Side::A), Some(1));
    sim.run_until(secs(40));
    assert_eq!(sim.active(Side::A), Some(1), "pinned: no failback");
    assert!(sim.engine(Side::A).status(now).connections[0].pinned);
    let now = sim.now;
    sim.engine(Side::A)
        .failover(CONN, tandem_engine::FailoverTarget::Auto, now)
        .unwrap();
    assert_eq!(sim.active(Side::A), Some(0));
    sim.run_until(secs(50));
    assert_no_loss(&sim, 1, secs(2), secs(50) - ms(50));
    assert_no_loss(&sim, 2, secs(2), secs(50) - ms(50));
    let err = sim
        .engine(Side::A)
        .failover("nope", tandem_engine::FailoverTarget::Auto, now);
    assert!(matches!(
        err,
        Err(tandem_engine::AdminError::UnknownConnection(_))
    ));
}

#[test]
fn a_drill_probe_comes_back_as_an_event_with_the_round_trip_time() {
    let mut sim = Sim::new(Setup::default());
    let rtt = sim.links[0][0].latency + sim.links[0][1].latency;
    sim.run_until(secs(5));
    let now = sim.now;
    sim.engine(Side::A).send_probe(CONN, 77, now).unwrap();
    sim.run_until(secs(6));
    let got = sim.events_of(Side::A).find_map(|(_, e)| match e {
        tandem_engine::Event::ProbeReply {
            id: 77,
            rtt,
            tunnel,
            ..
        } => Some((*rtt, tunnel.0)),
        _ => None,
    });
    assert_eq!(got, Some((rtt, 0)));
}

#[test]
fn a_responder_only_head_end_learns_and_follows_the_peer_endpoint_from_authenticated_packets_only()
{
    let setup = Setup {
        b_responder_only: true,
        ..Setup::default()
    };
    let mut sim = Sim::new(setup);
    sim.add_bidirectional_traffic(ms(10), secs(2));
    sim.run_until(secs(10));
    let b0 = tandem_engine::TunnelId(0);
    assert_eq!(
        sim.engine(Side::B).tunnel_remote(b0),
        Some(addr(Side::A, 0))
    );
    // Junk from a spoofed address: dropped, endpoint unchanged.
    let spoof: std::net::SocketAddr = "203.0.113.9:4500".parse().unwrap();
    let mut junk = vec![0u8; 64];
    junk[..4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    assert!(matches!(
        sim.inject(Side::B, 0, spoof, junk),
        tandem_engine::NetAction::Drop(_)
    ));
    assert_eq!(
        sim.engine(Side::B).tunnel_remote(b0),
        Some(addr(Side::A, 0))
    );
    // NAT rebinding on A's side: B follows after the next authenticated packet.
    let moved: std::net::SocketAddr = "192.0.2.77:61000".parse().unwrap();
    sim.src_addr[0][0] = moved;
    sim.run_until(secs(20));
    assert_eq!(sim.engine(Side::B).tunnel_remote(b0), Some(moved));
    assert_no_loss(&sim, 1, secs(2), secs(20) - ms(50));
    assert_no_loss(&sim, 2, secs(10) + ms(50), secs(20) - ms(50));
}

fn down_count(sim: &Sim, tunnel: usize) -> usize {
    [Side::A, Side::B]
        .iter()
        .map(|&s| {
            sim.transitions(s, tunnel)
                .iter()
                .filter(|(_, st)| *st == TunnelState::Down)
                .count()
        })
        .sum()
}

/// Random loss and false Downs.
///
/// At the default timers each side sends a keepalive every I = dpd_interval = 250 ms (every 4th
/// as an echo request, whose reply is one more packet), declares the peer unheard after
/// T = dpd_timeout = 4 I without an authenticated packet, and polls (sends its keepalive as an
/// echo request, every I / 2) while the peer's last packet is more than 9 I / 8 old
/// (`SPARSE_KEEPALIVES_FROM`). Latency is constant in the simulator, so arrivals keep their
/// spacing. Without the polls a false Down would need the k = 4 keepalives after one that
/// arrived all lost: per keepalive (1 - p) p^4, and each such run takes the tunnel Down on both
/// sides (the deaf side says so at once), so over H seconds, 2 tunnels, 2 directions
///     E1 = 2 sides * 2 directions * 2 tunnels * (H / I) * (1 - p) * p^4.
/// The polls rescue most of those runs: a false Down also needs every poll from the first
/// keepalive timer after the peer went overdue on (at least four before T; a poll fails if its
/// request or its reply is lost), about 16 p^7 per interval instead of p^4.
/// p = 5 %, H = 3600 s: E1 = 8 * 14400 * 0.95 * 6.25e-6 = 0.68, with the polls ~1e-3: zero is
/// what we must see. p = 20 %, H = 3600 s: E1 = 147; the polls must at least halve that (the
/// estimate above gives ~24). p = 50 %, H = 600 s: E1 = 600, and we require 0 < Downs <= E1:
/// the counter is not trivially zero.
#[test]
#[allow(clippy::print_stderr)] // the measured counts are worth seeing next to the expectation
fn five_percent_loss_causes_no_false_down_with_traffic_or_with_keepalives_alone_within_the_analytic_expectation()
 {
    let dpd_interval = Setup::default().dpd_interval;
    assert_eq!(
        tandem_engine::keepalives_per_interval(dpd_interval),
        1,
        "the model below is the one-keepalive-per-interval one"
    );
    let interval = dpd_interval.as_secs_f64();
    let e1 = |p: f64, secs_run: f64| 8.0 * (secs_run / interval) * (1.0 - p) * p.powi(4);

    // Traffic flowing on the active tunnel: no tunnel ever goes Down, no failover ever.
    let mut sim = Sim::new(Setup {
        seed: 5,
        ..Setup::default()
    });
    sim.set_links(|l| l.loss = 0.05);
    sim.add_bidirectional_traffic(ms(20), secs(2));
    sim.run_until(secs(3600));
    eprintln!(
        "5 % loss, traffic: Downs {} / {} (without polls <= {:.2})",
        down_count(&sim, 0),
        down_count(&sim, 1),
        e1(0.05, 3600.0)
    );
    assert_eq!(down_count(&sim, 0), 0, "false Down on the active tunnel");
    assert_eq!(down_count(&sim, 1), 0, "false Down on the standby");
    for side in [Side::A, Side::B] {
        assert_eq!(
            sim.switches(side).len(),
            1,
            "{side:?} only the initial choice"
        );
    }
    let (sent, delivered, _) = sim.flow_stats(1, sim.at(secs(2)), sim.at(secs(3599)));
    assert!(
        delivered as f64 > sent as f64 * 0.93,
        "{delivered} of {sent}: loss is only the path's"
    );

    // Keepalives alone: false Downs over `secs` at `loss`, with their no-poll bound.
    let downs_at = |seed: u64, loss: f64, secs_run: u64| {
        let mut sim = Sim::new(Setup {
            seed,
            ..Setup::default()
        });
        sim.set_links(|l| l.loss = loss);
        sim.run_until(secs(secs_run));
        let downs = (down_count(&sim, 0) + down_count(&sim, 1)) as f64;
        let e = e1(loss, secs_run as f64);
        eprintln!(
            "{:.0} % loss, keepalives alone: Downs {downs} (without polls {e:.2})",
            loss * 100.0
        );
        (downs, e)
    };
    let (downs, _) = downs_at(6, 0.05, 3600);
    assert_eq!(downs, 0.0);
    // The polls at work.
    let (downs, e) = downs_at(8, 0.20, 3600);
    assert!(
        downs <= e / 2.0,
        "{downs} false Downs at 20 % loss: the polls should at least halve {e:.0}"
    );
    let (downs, e) = downs_at(7, 0.50, 600);
    assert!(
        downs > 0.0 && downs <= e,
        "{downs} false Downs at 50 % loss, expected 0 < Downs <= {e:.0}"
    );
}

mod properties {
    //! Random interleavings of cuts, heals, rekeys (rekey_after = 3 s), restarts, drills,
    //! planned switches, replays of recorded datagrams and traffic. The simulator checks on every
    //! datagram that no (key, nonce) pair repeats and that no data leaves on a tunnel not Up;
    //! nothing may panic; and once every path is healed and every drill lifted, every tunnel must
    //! be Up again on both sides and traffic must flow without loss.
    use super::*;
    use proptest::prelude::*;
    use tandem_engine::{FailoverTarget, Mode, Silence};

    #[derive(Debug, Clone)]
    enum Op {
        Advance(u16),
        Cut {
            tunnel: usize,
            dir: u8,
        },
        Heal {
            tunnel: usize,
        },
        Restart(bool),
        Silence {
            a: bool,
            tunnel: usize,
            graceful: bool,
        },
        Unsilence {
            a: bool,
            tunnel: usize,
        },
        Failover {
            a: bool,
            to: Option<usize>,
        },
        Replay(usize),
        Garbage {
            to_a: bool,
            tunnel: usize,
            bytes: Vec<u8>,
        },
        Impair {
            tunnel: usize,
            loss: u8,
            dup: u8,
            reorder: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u16..3000).prop_map(Op::Advance),
            2 => (0..2usize, 0..3u8).prop_map(|(tunnel, dir)| Op::Cut { tunnel, dir }),
            2 => (0..2usize).prop_map(|tunnel| Op::Heal { tunnel }),
            1 => any::<bool>().prop_map(Op::Restart),
            1 => (any::<bool>(), 0..2usize, any::<bool>()).prop_map(|(a, tunnel, graceful)| Op::Silence { a, tunnel, graceful }),
            1 => (any::<bool>(), 0..2usize).prop_map(|(a, tunnel)| Op::Unsilence { a, tunnel }),
            1 => (any::<bool>(), proptest::option::of(0..2usize)).prop_map(|(a, to)| Op::Failover { a, to }),
            2 => any::<usize>().prop_map(Op::Replay),
            1 => (0..2usize, 0..30u8, 0..20u8, 0..50u8).prop_map(|(tunnel, loss, dup, reorder)| Op::Impair { tunnel, loss, dup, reorder }),
            1 => (any::<bool>(), 0..2usize, proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(to_a, tunnel, mut bytes)| {
                // Half of them look like control messages or carry a plausible SPI.
                if bytes.len() > 5 && bytes[0] % 2 == 0 {
                    bytes[..4].fill(0);
                    bytes[4] = 1 + bytes[5] % 3;
                }
                Op::Garbage { to_a, tunnel, bytes }
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

        #[test]
        fn random_cuts_heals_rekeys_restarts_and_replays_never_panic_reuse_a_nonce_or_send_on_a_down_tunnel(
            seed in any::<u64>(),
            responder_only in any::<bool>(),
            active_active in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..25),
        ) {
            let setup = Setup {
                seed,
                b_responder_only: responder_only,
                mode: if active_active { Mode::ActiveActive } else { Mode::ActiveStandby },
                rekey_after: secs(3),
                failback: Some(secs(2)),
                ..Setup::default()
            };
            let mut sim = Sim::new(setup);
            sim.record_wire = true;
            sim.add_bidirectional_traffic(ms(20), ms(100));
            let mut t = ms(0);
            for op in ops {
                match op {
                    Op::Advance(d) => {
                        t += ms(u64::from(d));
                        sim.run_until(t);
                    }
                    Op::Cut { tunnel, dir } => match dir {
                        0 => sim.cut(tunnel, Side::A, true),
                        1 => sim.cut(tunnel, Side::B, true),
                        _ => sim.cut_both(tunnel, true),
                    },
                    Op::Heal { tunnel } => sim.cut_both(tunnel, false),
                    Op::Restart(a) => sim.restart(if a { Side::A } else { Side::B }),
                    Op::Silence { a, tunnel, graceful } => {
                        let now = sim.now;
                        let mode = if graceful { Silence::Graceful } else { Silence::Silent };
                        sim.engine(if a { Side::A } else { Side::B }).silence(CONN, &format!("tunnel{}", tunnel + 1), mode, now).unwrap();
                    }
                    Op::Unsilence { a, tunnel } => {
                        let now = sim.now;
                        sim.engine(if a { Side::A } else { Side::B }).silence(CONN, &format!("tunnel{}", tunnel + 1), Silence::Off, now).unwrap();
                    }
                    Op::Failover { a, to } => {
                        let now = sim.now;
                        let target = match to {
                            Some(i) => FailoverTarget::To(format!("tunnel{}", i + 1)),
                            None => FailoverTarget::Auto,
                        };
                        // May fail (target not Up): that is an answer, not a panic.
                        let _ = sim.engine(if a { Side::A } else { Side::B }).failover(CONN, target, now);
                    }
                    Op::Replay(i) => {
                        if !sim.wire.is_empty() {
                            let (_, from, tunnel, bytes) = sim.wire[i % sim.wire.len()].clone();
                            let src = sim.src_addr[tunnel][from as usize];
                            sim.inject(from.other(), tunnel, src, bytes);
                        }
                    }
                    Op::Garbage { to_a, tunnel, bytes } => {
                        let to = if to_a { Side::A } else { Side::B };
                        let src = sim.src_addr[tunnel][to.other() as usize];
                        let r = sim.inject(to, tunnel, src, bytes);
                        prop_assert!(!matches!(r, tandem_engine::NetAction::Deliver { .. }), "junk was delivered");
                    }
                    Op::Impair { tunnel, loss, dup, reorder } => {
                        for l in &mut sim.links[tunnel] {
                            l.loss = f64::from(loss) / 100.0;
                            l.duplicate = f64::from(dup) / 100.0;
                            l.reorder = f64::from(reorder) / 100.0;
                        }
                    }
                }
                sim.wire.truncate(2000);
            }
            // Heal everything: every tunnel comes back Up on both sides and traffic flows.
            sim.set_links(|l| *l = Link::default());
            for side in [Side::A, Side::B] {
                let now = sim.now;
                for tunnel in ["tunnel1", "tunnel2"] {
                    sim.engine(side).silence(CONN, tunnel, Silence::Off, now).unwrap();
                }
                let _ = sim.engine(side).failover(CONN, FailoverTarget::Auto, now);
            }
            let healed = t;
            sim.run_until(healed + secs(30));
            for side in [Side::A, Side::B] {
                for tunnel in 0..2 {
                    prop_assert_eq!(sim.state(side, tunnel), TunnelState::Up, "{:?} tunnel {} after healing", side, tunnel);
                }
            }
            sim.run_until(healed + secs(40));
            assert_no_loss(&sim, 1, healed + secs(30), healed + secs(40) - ms(50));
            assert_no_loss(&sim, 2, healed + secs(30), healed + secs(40) - ms(50));
        }
    }
}

#[test]
fn a_reload_keeps_unchanged_tunnels_with_their_sas_and_restarts_only_the_changed_one() {
    let setup = Setup::default();
    let mut sim = Sim::new(setup.clone());
    sim.add_bidirectional_traffic(ms(10), secs(2));
    sim.run_until(secs(20));
    let handshakes = |sim: &mut Sim, t: u16| {
        sim.engine(Side::A)
            .tunnel_counters(tandem_engine::TunnelId(t))
            .unwrap()
            .handshakes
    };
    let (h0, h1) = (handshakes(&mut sim, 0), handshakes(&mut sim, 1));

    // Same config: everything kept, nothing re-handshakes, nothing is lost.
    let now = sim.now;
    let summary = sim
        .engine(Side::A)
        .reconfigure(config(&setup, Side::A), now)
        .unwrap();
    assert_eq!(summary.kept.len(), 2);
    assert!(
        summary.added.is_empty() && summary.removed.is_empty() && summary.renumbered.is_empty()
    );
    sim.run_until(secs(30));
    assert_eq!((handshakes(&mut sim, 0), handshakes(&mut sim, 1)), (h0, h1));
    assert_eq!(sim.active(Side::A), Some(0));

    // Tunnel2's priority changes (on A only): tunnel1 is kept, tunnel2 starts over and comes Up.
    let mut cfg = config(&setup, Side::A);
    cfg.connections[0].tunnels[1].priority = 5;
    let now = sim.now;
    let summary = sim.engine(Side::A).reconfigure(cfg, now).unwrap();
    assert_eq!(summary.kept, vec![tandem_engine::TunnelId(0)]);
    assert_eq!(summary.added, vec![tandem_engine::TunnelId(1)]);
    assert_eq!(summary.removed, vec![tandem_engine::TunnelId(1)]);
    sim.run_until(secs(40));
    assert_eq!(handshakes(&mut sim, 0), h0);
    assert_eq!(sim.state(Side::A, 1), TunnelState::Up);
    assert_eq!(sim.state(Side::B, 1), TunnelState::Up);
    assert_eq!(sim.active(Side::A), Some(0));
    assert_no_loss(&sim, 1, secs(2), secs(40) - ms(50));
    assert_no_loss(&sim, 2, secs(2), secs(40) - ms(50));
}

#[test]
fn the_packet_budget_triggers_a_rekey_long_before_the_time_limit_and_an_sa_never_sends_past_its_hard_limit()
 {
    use tandem_crypto::esp::{REJECT_AFTER_PACKETS, REKEY_AFTER_PACKETS};
    let mut sim = Sim::new(Setup::default());
    sim.record_wire = true;
    sim.add_bidirectional_traffic(ms(10), secs(2));
    sim.run_until(secs(10));
    let t0 = tandem_engine::TunnelId(0);
    let rekeys = |sim: &Sim, after: std::time::Instant| {
        sim.events_of(Side::A)
            .filter(|(t, e)| *t >= after && matches!(e, tandem_engine::Event::HandshakeCompleted { tunnel, initiator: true, rekey: true } if tunnel.0 == 0))
            .count()
    };
    let mark = sim.now;
    sim.engine(Side::A)
        .set_send_counter_for_testing(t0, REKEY_AFTER_PACKETS - 20);
    sim.run_until(secs(12));
    assert_eq!(
        rekeys(&sim, mark),
        1,
        "soft limit: one rekey, at 2^27 packets, not at 2 minutes"
    );
    assert_no_loss(&sim, 1, secs(2), secs(12) - ms(50));

    // Hard limit: the SA stops sending at 2^28 even before a new one is there.
    let mark = sim.now;
    sim.engine(Side::A)
        .set_send_counter_for_testing(t0, REJECT_AFTER_PACKETS - 3);
    sim.run_until(secs(20));
    let max_seq = sim
        .wire
        .iter()
        .filter(|(t, from, tunnel, b)| {
            *t >= mark && *from == Side::A && *tunnel == 0 && b.len() > 16 && b[..4] != [0; 4]
        })
        .map(|(_, _, _, b)| u64::from_be_bytes(b[8..16].try_into().unwrap()))
        .max()
        .unwrap();
    assert!(max_seq <= REJECT_AFTER_PACKETS, "sent seq {max_seq}");
    assert!(
        rekeys(&sim, mark) >= 1,
        "a new SA replaced the exhausted one"
    );
    assert_eq!(sim.state(Side::A, 0), TunnelState::Up);
    assert_no_loss(&sim, 1, secs(14), secs(20) - ms(50));
}

#[test]
fn reordering_and_duplication_on_both_paths_lose_nothing_and_deliver_nothing_twice() {
    let mut sim = Sim::new(Setup {
        seed: 11,
        ..Setup::default()
    });
    sim.set_links(|l| {
        l.reorder = 0.3;
        l.reorder_delay = ms(7);
        l.duplicate = 0.1;
    });
    sim.add_bidirectional_traffic(ms(2), secs(1));
    sim.run_until(secs(60));
    assert_no_loss(&sim, 1, secs(1), secs(60) - ms(50));
    assert_no_loss(&sim, 2, secs(1), secs(60) - ms(50));
    for side in [Side::A, Side::B] {
        let replays = sim
            .engine(side)
            .drop_counters()
            .get(tandem_engine::DropReason::Replay);
        assert!(
            replays > 2000,
            "{side:?}: duplicates are caught by the replay window ({replays})"
        );
        assert!(
            sim.transitions(side, 0)
                .iter()
                .all(|(_, s)| *s != TunnelState::Down)
        );
    }
}

#[test]
fn a_cut_longer_than_the_sa_lifetime_heals_by_handshaking_again() {
    let mut sim = Sim::new(Setup::default());
    sim.add_bidirectional_traffic(ms(10), secs(2));
    sim.run_until(secs(10));
    sim.cut_both(0, true);
    sim.run_until(secs(10 + 300));
    assert_eq!(sim.active(Side::A), Some(1));
    let heal = sim.now;
    sim.cut_both(0, false);
    sim.run_until(secs(10 + 300 + 30));
    for side in [Side::A, Side::B] {
        let up = sim
            .transitions(side, 0)
            .into_iter()
            .find(|(t, s)| *t >= heal && *s == TunnelState::Up);
        let (t, _) = up.unwrap_or_else(|| panic!("{side:?} tunnel1 never came back"));
        // Handshake retries run every <= 5 s (+1/8 jitter) during the cut.
        assert!(t - heal <= ms(5700), "{side:?} back after {:?}", t - heal);
    }
    assert_no_loss(&sim, 1, secs(10) + secs(2), secs(340) - ms(50));
    assert_no_loss(&sim, 2, secs(10) + secs(2), secs(340) - ms(50));
}

#[test]
fn a_silent_drill_behaves_like_a_dead_path_and_both_sides_detect_it_by_dpd() {
    let setup = Setup {
        dpd_interval: ms(100),
        dpd_timeout: ms(300),
        ..Setup::default()
    };
    let bound = setup.failover_bound();
    let mut sim = Sim::new(setup);
    sim.add_bidirectional_traffic(ms(1), secs(1));
    sim.run_until(secs(10));
    let t0 = sim.now;
    sim.engine(Side::A)
        .silence(CONN, "tunnel1", tandem_engine::Silence::Silent, t0)
        .unwrap();
    sim.run_until(secs(20));
    for side in [Side::A, Side::B] {
        let (t, cause) = sim
            .events_of(side)
            .find_map(|(t, e)| match e {
                tandem_engine::Event::TunnelState {
                    tunnel,
                    to: TunnelState::Down,
                    cause,
                    ..
                } if t >= t0 && tunnel.0 == 0 => Some((t, *cause)),
                _ => None,
            })
            .unwrap();
        assert!(
            t - t0 <= bound && t - t0 >= ms(200),
            "{side:?} detected after {:?}",
            t - t0
        );
        assert!(matches!(
            cause,
            tandem_engine::StateCause::DpdTimeout | tandem_engine::StateCause::PeerDoesNotHearUs
        ));
        assert_eq!(sim.active(side), Some(1));
    }
    // The gap is real and bounded: A's packets vanished until A's own DPD moved them.
    let (sent, delivered, _) = sim.flow_stats(1, t0, sim.at(secs(20)));
    let lost = sent - delivered;
    assert!(
        lost >= 200 && lost <= bound.as_millis() as u64 + 2,
        "{lost} packets lost in the drill"
    );
    assert!(
        sim.engine(Side::A)
            .drop_counters()
            .get(tandem_engine::DropReason::Silenced)
            >= lost
    );
    let t1 = sim.now;
    sim.engine(Side::A)
        .silence(CONN, "tunnel1", tandem_engine::Silence::Off, t1)
        .unwrap();
    sim.run_until(secs(40));
    assert_eq!(sim.active(Side::A), Some(0));
    assert_eq!(sim.active(Side::B), Some(0));
    assert_no_loss(&sim, 1, secs(11), secs(40) - ms(50));
}

/// A responder-only B, traffic both ways for 10 s, and A's first initiation on tunnel1 as it
/// crossed the wire (for replays and floods).
fn responder_only_sim_with_a_captured_initiation() -> (Sim, Vec<u8>) {
    let setup = Setup {
        b_responder_only: true,
        ..Setup::default()
    };
    let mut sim = Sim::new(setup);
    sim.record_wire = true;
    sim.add_bidirectional_traffic(ms(10), secs(2));
    sim.run_until(secs(10));
    let old_init = sim
        .wire
        .iter()
        .find(|(_, from, t, b)| {
            *from == Side::A && *t == 0 && b.len() > 5 && b[..5] == [0, 0, 0, 0, 1]
        })
        .map(|w| w.3.clone())
        .unwrap();
    (sim, old_init)
}

/// Replays `init` to B's tunnel 0 from `from`, `per_second` times a second, until `until`.
fn flood_initiations(
    sim: &mut Sim,
    from: std::net::SocketAddr,
    init: &[u8],
    per_second: u64,
    until: Duration,
) {
    let step = Duration::from_micros(1_000_000 / per_second);
    let mut t = sim.elapsed();
    while t < until {
        t += step;
        sim.run_until(t);
        let r = sim.inject(Side::B, 0, from, init.to_vec());
        assert!(matches!(
            r,
            tandem_engine::NetAction::Consumed | tandem_engine::NetAction::Drop(_)
        ));
    }
}

/// A's initiations on tunnel 0 sent at or after `mark`, in order.
fn initiations_from_a(sim: &Sim, mark: std::time::Instant) -> Vec<Vec<u8>> {
    sim.wire
        .iter()
        .filter(|(t, s, tun, b)| {
            *t >= mark && *s == Side::A && *tun == 0 && b.len() > 5 && b[..5] == [0, 0, 0, 0, 1]
        })
        .map(|w| w.3.clone())
        .collect()
}

fn mac2_is_zero(initiation: &[u8]) -> bool {
    initiation[initiation.len() - 16..].iter().all(|&b| b == 0)
}

#[test]
fn a_responder_under_a_flood_of_initiations_answers_with_a_cookie_and_the_real_peer_still_rekeys() {
    let (mut sim, old_init) = responder_only_sim_with_a_captured_initiation();
    let cookie_replies = |sim: &Sim| {
        sim.wire
            .iter()
            .filter(|(_, s, _, b)| *s == Side::B && b.len() > 5 && b[..5] == [0, 0, 0, 0, 3])
            .count()
    };
    // 80 initiations a second (more than the responder handles without cookies) from the peer's
    // own address; 0.8 s into the flood (the responder counts initiations per second, so it is
    // under load from the 51st), the real peer must rekey.
    flood_initiations(
        &mut sim,
        addr(Side::A, 0),
        &old_init,
        80,
        secs(10) + ms(800),
    );
    let mark = sim.now;
    sim.engine(Side::A).set_send_counter_for_testing(
        tandem_engine::TunnelId(0),
        tandem_crypto::esp::REKEY_AFTER_PACKETS,
    );
    flood_initiations(&mut sim, addr(Side::A, 0), &old_init, 80, secs(15));
    assert!(
        cookie_replies(&sim) > 0,
        "under load, the responder answers with cookie replies"
    );
    let done = sim.events_of(Side::A).any(|(t, e)| {
        t >= mark && matches!(e, tandem_engine::Event::HandshakeCompleted { tunnel, initiator: true, .. } if tunnel.0 == 0)
    });
    assert!(done, "the rekey completed through the cookie");
    // The rekey's first initiation had no cookie (mac2 zero) and was answered with a cookie
    // reply; the retry carried it (mac2 set) and was accepted: the cookie waits for the retry
    // timer, it does not trigger an immediate retry.
    let inits = initiations_from_a(&sim, mark);
    assert!(
        inits.len() >= 2,
        "a first attempt and a retry: {}",
        inits.len()
    );
    assert!(mac2_is_zero(&inits[0]));
    assert!(
        inits[1..].iter().any(|i| !mac2_is_zero(i)),
        "a retry carried the cookie"
    );
    sim.run_until(secs(24));
    assert_eq!(sim.state(Side::A, 0), TunnelState::Up);
    assert_no_loss(&sim, 1, secs(2), secs(24) - ms(50));
    assert_no_loss(&sim, 2, secs(2), secs(24) - ms(50));
}

#[test]
fn under_a_flood_cookie_replies_go_to_each_initiations_source_and_the_real_peer_still_gets_in() {
    let (mut sim, old_init) = responder_only_sim_with_a_captured_initiation();
    // 80 initiations within a second from an address that is not the endpoint (a peer that
    // roamed looks the same): the first 50 are handled, the other 30 earn a cookie reply, sent
    // back to that source — not to the endpoint, and not dropped.
    let stranger: std::net::SocketAddr = "203.0.113.9:4500".parse().unwrap();
    let misdirected_before = sim.misdirected;
    for _ in 0..80 {
        let _ = sim.inject(Side::B, 0, stranger, old_init.clone());
    }
    assert_eq!(
        sim.misdirected - misdirected_before,
        30,
        "one cookie reply per initiation past the load threshold, each to its source"
    );
    // The real peer rekeys while the responder stays loaded: it gets its cookie and gets in.
    let mark = sim.now;
    sim.engine(Side::A).set_send_counter_for_testing(
        tandem_engine::TunnelId(0),
        tandem_crypto::esp::REKEY_AFTER_PACKETS,
    );
    flood_initiations(&mut sim, stranger, &old_init, 80, secs(14));
    let done = sim.events_of(Side::A).any(|(t, e)| {
        t >= mark && matches!(e, tandem_engine::Event::HandshakeCompleted { tunnel, initiator: true, .. } if tunnel.0 == 0)
    });
    assert!(done, "the rekey completed through the cookie");
    sim.run_until(secs(24));
    assert_eq!(sim.state(Side::A, 0), TunnelState::Up);
    assert_no_loss(&sim, 1, secs(2), secs(24) - ms(50));
}

#[test]
fn a_stale_liveness_view_reordered_behind_a_newer_one_does_not_take_a_healed_tunnel_down_again() {
    // Fast timers, and every link reorders: half the packets arrive 8 ms late, more than the
    // 5 ms between keepalives. A one-way cut A -> B makes B say "I do not hear you"; when it
    // heals, B says "I hear you" at once, and an older "I do not hear you" that was delayed
    // must not undo that.
    let setup = Setup {
        dpd_interval: ms(10),
        dpd_timeout: ms(30),
        ..Setup::default()
    };
    let mut sim = Sim::new(setup);
    sim.set_links(|l| {
        l.reorder = 0.5;
        l.reorder_delay = ms(8);
    });
    sim.run_until(secs(5));
    let mut flaps = Vec::new();
    for _ in 0..30 {
        let t = sim.elapsed();
        sim.cut(0, Side::A, true);
        sim.run_until(t + ms(200));
        assert_eq!(sim.state(Side::A, 0), TunnelState::Down, "the cut was seen");
        let healed = sim.now;
        sim.cut(0, Side::A, false);
        sim.run_until(t + ms(700));
        for side in [Side::A, Side::B] {
            let after: Vec<_> = sim
                .transitions(side, 0)
                .into_iter()
                .filter(|(at, _)| *at >= healed)
                .collect();
            if after.iter().any(|(_, s)| *s == TunnelState::Down) {
                flaps.push((side, after));
            }
            assert_eq!(sim.state(side, 0), TunnelState::Up, "healed: {side:?} Up");
        }
    }
    assert!(flaps.is_empty(), "Down again after the heal: {flaps:?}");
}
