//! Keepalive jitter on the simulator, at the `fast` profile's timers (10 ms / 30 ms): two tunnels
//! of one gateway, and the two gateways of one tunnel, start in lockstep (they come Up at the same
//! virtual instant, or one latency apart) and drift apart; a keepalive is never late, so a cut is
//! still detected within `dpd_timeout` + one `dpd_interval`; and the same seed gives the same
//! send times.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, clippy::print_stderr)]

mod common;

use common::*;
use std::time::{Duration, Instant};
use tandem_engine::{KEEPALIVE_JITTER_PCT, TunnelState, keepalives_per_interval};

/// A liveness message on the wire: 16 bytes of ESP header and IV, 20 + 2 + 2 bytes of
/// ciphertext, a 16-byte ICV (docs/protocol.md, liveness messages). With no application flow
/// it is the only ESP datagram of that size.
const LIVENESS_DATAGRAM: usize = 16 + 24 + 16;

fn fast() -> Setup {
    Setup {
        seed: 19,
        dpd_interval: ms(10),
        dpd_timeout: ms(30),
        ..Setup::default()
    }
}

fn keepalive_interval(s: &Setup) -> Duration {
    s.dpd_interval / keepalives_per_interval(s.dpd_interval)
}

/// Send times of `side`'s liveness datagrams on `tunnel`, from `from` on.
fn liveness_sends(sim: &Sim, side: Side, tunnel: usize, from: Instant) -> Vec<Instant> {
    sim.wire
        .iter()
        .filter(|(at, s, t, b)| {
            *at >= from
                && *s == side
                && *t == tunnel
                && b.len() == LIVENESS_DATAGRAM
                && b[..4] != [0; 4]
        })
        .map(|(at, ..)| *at)
        .collect()
}

/// For each time of `a`, the distance to the nearest time of `b` (both sorted).
fn nearest(a: &[Instant], b: &[Instant]) -> Vec<Duration> {
    a.iter()
        .map(|x| {
            let i = b.partition_point(|y| y < x);
            let after = b.get(i).map(|y| *y - *x);
            let before = i.checked_sub(1).map(|j| *x - b[j]);
            after.into_iter().chain(before).min().unwrap()
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Share of `d` under `limit`.
fn share_under(d: &[Duration], limit: Duration) -> f64 {
    d.iter().filter(|x| **x < limit).count() as f64 / d.len() as f64
}

fn run_idle(setup: Setup, until: Duration) -> Sim {
    let mut sim = Sim::new(setup);
    sim.record_wire = true;
    sim.run_until(until);
    for side in [Side::A, Side::B] {
        for t in 0..2 {
            assert_eq!(sim.state(side, t), TunnelState::Up, "{side:?} tunnel {t}");
        }
    }
    sim
}

#[test]
fn two_tunnels_and_two_gateways_keepalives_drift_apart_instead_of_staying_in_lockstep() {
    let setup = fast();
    let ki = keepalive_interval(&setup);
    let sim = run_idle(setup, secs(20));
    let late = sim.at(secs(10));
    let a0 = liveness_sends(&sim, Side::A, 0, late);
    let a1 = liveness_sends(&sim, Side::A, 1, late);
    let b0 = liveness_sends(&sim, Side::B, 0, late);
    // Both tunnels came Up at the same virtual instant, and B one latency (10 ms, two keepalive
    // intervals) after A: without jitter every keepalive would coincide with another.
    let ups: Vec<Instant> = (0..2).map(|t| sim.transitions(Side::A, t)[0].0).collect();
    eprintln!(
        "A's tunnels Up at {:?}",
        ups.iter().map(|u| *u - sim.base).collect::<Vec<_>>()
    );
    let close = ki / 50; // 100 µs
    for (what, d) in [
        ("A tunnel1 vs A tunnel2", nearest(&a0, &a1)),
        ("A tunnel1 vs B tunnel1", nearest(&a0, &b0)),
    ] {
        let share = share_under(&d, close);
        let med = median(d);
        eprintln!(
            "{what}: {:.1} % within {close:?}, median distance {med:?}",
            share * 100.0
        );
        // Independent phases: ~2 x 100 µs / 5 ms = 4 % within 100 µs, median ~ki/4.
        assert!(
            share < 0.15,
            "{what}: {:.0} % of keepalives coincide",
            share * 100.0
        );
        assert!(med > ki / 10, "{what}: median distance {med:?}");
    }
}

/// Every gap between two liveness datagrams of one side on one tunnel is at most the keepalive
/// interval, and their rate is what the interval, the jitter and the echo replies make.
fn keepalives_never_late_and_at_the_expected_rate(setup: Setup) {
    let ki = keepalive_interval(&setup);
    let per_interval = keepalives_per_interval(setup.dpd_interval);
    let sim = run_idle(setup, secs(20));
    for side in [Side::A, Side::B] {
        for t in 0..2 {
            let sends = liveness_sends(&sim, side, t, sim.at(secs(1)));
            let gaps: Vec<Duration> = sends.windows(2).map(|w| w[1] - w[0]).collect();
            let max = *gaps.iter().max().unwrap();
            assert!(max <= ki, "{side:?} tunnel {t}: a gap of {max:?} > {ki:?}");
            // Keepalives come on average half the jitter early. An echo reply (one per 8 of
            // the peer's keepalives) stands in for the next keepalive, which then comes one
            // interval after it. At two keepalives per interval that saves on average half a
            // datagram per reply (a reply sent besides the keepalives would add 1/8 of the
            // rate: 6 % more than allowed). At one per interval a reply tends to follow one of
            // our keepalives closely (the peer's echo requests keep the phase of its
            // keepalives, which ours, moved by our last reply, follow), so it is counted as a
            // whole datagram.
            let span = (*sends.last().unwrap() - sends[0]).as_secs_f64();
            let rate = (sends.len() - 1) as f64 / span;
            let mean = ki.as_secs_f64() * (1.0 - f64::from(KEEPALIVE_JITTER_PCT) / 200.0);
            let replies = if per_interval == 2 {
                1.0 / 16.0
            } else {
                1.0 / 8.0
            };
            let most = (1.0 / mean) * (1.0 + replies + 0.02);
            let least = 1.0 / ki.as_secs_f64();
            eprintln!(
                "{side:?} tunnel {t}: {rate:.1} liveness datagrams/s ({:.0} B/s of UDP payload), max gap {max:?}",
                rate * LIVENESS_DATAGRAM as f64
            );
            assert!(
                (least..=most).contains(&rate),
                "{side:?} tunnel {t}: {rate:.1}/s outside {least:.1}..={most:.1}"
            );
        }
    }
}

#[test]
fn a_keepalive_is_never_later_than_the_interval_and_at_most_the_jitter_early() {
    // `fast`: two keepalives per dpd_interval, one every 5 ms.
    assert_eq!(keepalives_per_interval(fast().dpd_interval), 2);
    keepalives_never_late_and_at_the_expected_rate(fast());
}

#[test]
fn at_the_default_timers_one_keepalive_per_interval_goes_out_while_the_peer_is_heard() {
    // 250 ms / 1 s: one keepalive per dpd_interval (~4.6 a second with the jitter and the
    // replies, where two per interval made ~8.9).
    let setup = Setup {
        seed: 23,
        ..Setup::default()
    };
    assert_eq!(keepalives_per_interval(setup.dpd_interval), 1);
    keepalives_never_late_and_at_the_expected_rate(setup);
}

/// With one keepalive per interval, a side whose peer goes quiet polls it: its keepalives go as
/// echo requests every half interval until the peer is heard again.
#[test]
fn a_peer_whose_keepalive_is_overdue_is_polled_every_half_interval() {
    let setup = Setup {
        seed: 29,
        ..Setup::default()
    };
    let ki = keepalive_interval(&setup);
    let mut sim = run_idle(setup, secs(5));
    // B's datagrams on tunnel 0 stop reaching A (one-way cut) for 800 ms: less than
    // dpd_timeout, so nothing goes Down, but A finds B overdue (after 9/8 of an interval, at
    // its next keepalive) and polls.
    let t0 = sim.elapsed();
    sim.cut(0, Side::B, true);
    sim.run_until(t0 + ms(800));
    sim.cut(0, Side::B, false);
    sim.run_until(t0 + secs(3));
    let from = sim.at(t0);
    let during: Vec<Instant> = liveness_sends(&sim, Side::A, 0, from)
        .into_iter()
        .filter(|&t| t <= from + ms(800))
        .collect();
    let gaps: Vec<Duration> = during.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("A's liveness datagrams during the cut, gaps {gaps:?}");
    assert!(
        gaps.iter().filter(|&&g| g <= ki / 2).count() >= 2,
        "A did not poll its quiet peer every half interval: gaps {gaps:?}"
    );
    for side in [Side::A, Side::B] {
        assert!(
            sim.transitions(side, 0)
                .iter()
                .all(|(at, st)| *at < from || *st == TunnelState::Up),
            "{side:?}: an 800 ms one-way gap took tunnel 0 Down"
        );
    }
    // Heard again: back to one per interval (in 1.8 s: ~8 keepalives and ~2 echo replies;
    // polling every half interval would be ~15).
    let after = liveness_sends(&sim, Side::A, 0, sim.at(t0 + ms(1200)));
    assert!(
        after.len() < 12,
        "A still polls after the peer is heard: {} datagrams in 1.8 s",
        after.len()
    );
}

#[test]
fn jittered_keepalives_are_the_same_for_the_same_seed() {
    let times = |seed| {
        let sim = run_idle(Setup { seed, ..fast() }, secs(2));
        liveness_sends(&sim, Side::A, 0, sim.base)
            .into_iter()
            .map(|t| t - sim.base)
            .collect::<Vec<_>>()
    };
    let first = times(19);
    assert_eq!(first, times(19));
    assert_ne!(first, times(20));
}

#[test]
fn a_silent_cut_at_fast_timers_is_detected_within_dpd_timeout_plus_one_interval() {
    let setup = Setup {
        failback: Some(ms(50)),
        ..fast()
    };
    let bound = setup.failover_bound();
    let mut sim = Sim::new(setup);
    sim.add_bidirectional_traffic(ms(1), ms(500));
    // 50 cuts, each at another phase of the jittered keepalives; each healed after 200 ms and
    // failed back before the next.
    let mut worst = Duration::ZERO;
    for i in 0..50u32 {
        let at = secs(1) + ms(500) * i + Duration::from_micros(137 * u64::from(i));
        sim.run_until(at);
        assert_eq!(sim.active(Side::A), Some(0), "cut {i}: on tunnel1 before");
        sim.cut_both(0, true);
        sim.run_until(at + ms(200));
        for side in [Side::A, Side::B] {
            let down = sim
                .transitions(side, 0)
                .into_iter()
                .find(|(t, s)| *t >= sim.at(at) && *s == TunnelState::Down)
                .unwrap_or_else(|| panic!("cut {i}: {side:?} tunnel1 never went Down"));
            let took = down.0 - sim.at(at);
            worst = worst.max(took);
            assert!(
                took <= bound,
                "cut {i}: {side:?} Down after {took:?} > {bound:?}"
            );
        }
        sim.cut_both(0, false);
    }
    eprintln!("worst detection over 50 cuts: {worst:?} (bound {bound:?})");
}
