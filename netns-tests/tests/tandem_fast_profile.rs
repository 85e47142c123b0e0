//! The `fast` timer profile (`timers = "fast"`: dpd_interval 10 ms, dpd_timeout 30 ms,
//! docs/failover-profiles.md) on the lab: a silent blackhole of isp1 under a 1 ms probe stream
//! costs at most [`FAST_GAP_BOUND`] of traffic.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::time::Duration;

use tandem_netns_tests::drill::{DrillRig, TcpLoad, cut_isp1};
use tandem_netns_tests::impair::Direction;
use tandem_netns_tests::tandem::{TandemOpts, TandemPair};
use tandem_netns_tests::topo::{Family, Lab};

/// The profile's promise for a silent cut: detection within `dpd_timeout` + one keepalive
/// interval (5 ms) after the last packet, plus the time for the switch and the next probe —
/// 60 ms leaves ~25 ms for scheduling on a shared CI machine.
const FAST_GAP_BOUND: Duration = Duration::from_millis(60);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn with_the_fast_profile_a_silent_blackhole_of_isp1_costs_at_most_60_ms_of_probes() {
    if !tandem_netns_tests::can_run_as_root("fast profile blackhole") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    tandem_netns_tests::helper::set_helper(env!("CARGO_BIN_EXE_probe"), &[]);
    let lab = Lab::new().unwrap();
    let pair = TandemPair::start(
        &lab,
        TandemOpts {
            timers: Some("fast"),
            dpd_interval: ms(10),
            dpd_timeout: ms(30),
            ..TandemOpts::default()
        },
    )
    .unwrap();
    pair.wait_settled(ms(500), Duration::from_secs(10)).unwrap();
    let rig = DrillRig::new(&lab, Family::V4).unwrap();
    let mut held = None;
    let cut = rig
        .run(&lab, TcpLoad::None, ms(300), ms(200), || {
            let (bh, times) = cut_isp1(&lab, &pair, Direction::Both, ms(500))?;
            held = Some(bh);
            Ok(times)
        })
        .unwrap();
    eprintln!(
        "fast profile, blackhole isp1: {} ; {:?}",
        cut.probe, cut.action
    );
    assert!(cut.probe.lost > 0, "the cut was real: {}", cut.probe);
    assert!(
        cut.probe.largest_gap_ms <= FAST_GAP_BOUND.as_secs_f64() * 1e3,
        "largest gap {:.1} ms > {FAST_GAP_BOUND:?}: {}",
        cut.probe.largest_gap_ms,
        cut.probe
    );
    assert_eq!(
        pair.cgw.status().unwrap().active().as_deref(),
        Some("tunnel2")
    );
    drop(held);
}
