//! Failover drills with the docs/protocol.md drill timers (dpd_interval 100 ms, dpd_timeout 300 ms), each
//! under a 1 ms probe stream (exact loss and largest gap) and an iperf3 TCP stream.
//! Unplanned failures must keep the largest gap <= dpd_timeout + 2 x dpd_interval + 50 ms;
//! planned moves (failback, `tandem failover`, reload) must lose zero probes.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::thread::sleep;
use std::time::{Duration, Instant};

use tandem_netns_tests::drill::{DrillReport, DrillRig, TcpLoad, cut_isp1, gap_bound};
use tandem_netns_tests::impair::Direction;
use tandem_netns_tests::tandem::{Daemon, Side, TandemOpts, TandemPair};
use tandem_netns_tests::topo::{Family, Lab, vpc_ip};
use tandem_netns_tests::traffic::wait_reachable;

/// Planned moves must lose zero probes, so their TCP stream leaves headroom (see `TcpLoad`).
const CAPPED_TCP: TcpLoad = TcpLoad::Capped { secs: 3, mbps: 50 };

fn setup() -> (Lab, TandemPair, DrillRig) {
    tandem_netns_tests::helper::set_helper(env!("CARGO_BIN_EXE_probe"), &[]);
    let lab = Lab::new().unwrap();
    let pair = TandemPair::start(&lab, TandemOpts::default()).unwrap();
    let rig = DrillRig::new(&lab, Family::V4).unwrap();
    (lab, pair, rig)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_silent_blackhole_of_isp1_keeps_tcp_alive_and_the_gap_within_bound_then_failback_loses_nothing()
{
    if !tandem_netns_tests::can_run_as_root("blackhole drill") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let (lab, pair, rig) = setup();
    let bound = gap_bound(&pair);
    // 1) The cut, under TCP and probes; the cut is held while the second stream starts.
    let mut held = None;
    let cut = rig
        .run(&lab, TcpLoad::Saturating(3), ms(500), ms(300), || {
            let (bh, times) = cut_isp1(&lab, &pair, Direction::Both, ms(1200))?;
            held = Some(bh);
            Ok(times)
        })
        .unwrap();
    eprintln!(
        "blackhole isp1: {} ; {:?} ; tcp {:?}",
        cut.probe, cut.action, cut.tcp
    );
    let tcp = cut.tcp.as_ref().expect("the TCP stream survived the cut");
    assert!(tcp.bytes > 0, "{tcp:?}");
    assert!(
        cut.probe.largest_gap_ms <= bound.as_secs_f64() * 1e3,
        "largest gap {:.1} ms > bound {bound:?}: {}",
        cut.probe.largest_gap_ms,
        cut.probe
    );
    assert!(cut.probe.lost > 0, "the cut was real: {}", cut.probe);
    assert_eq!(
        pair.cgw.status().unwrap().active().as_deref(),
        Some("tunnel2")
    );

    // 2) isp1 heals: failback after the hold-down (1 s), with zero probes lost.
    let failback = rig
        .run(&lab, TcpLoad::None, ms(300), ms(300), || {
            // Time from before the heal: the path opens while `heal()` is still returning,
            // and the hold-down runs from when the tunnel is Up again, which is after that.
            let healed = Instant::now();
            held.take().unwrap().heal()?;
            pair.wait_until(Duration::from_secs(6), "failback to tunnel1", |a, b| {
                a.active().as_deref() == Some("tunnel1") && b.active().as_deref() == Some("tunnel1")
            })?;
            Ok(healed.elapsed())
        })
        .unwrap();
    eprintln!("failback after {:?}: {}", failback.action, failback.probe);
    assert!(
        failback.action >= pair.setup.opts().failback.unwrap(),
        "hold-down respected"
    );
    assert_eq!(
        failback.probe.lost, 0,
        "failback is lossless: {}",
        failback.probe
    );
}

#[test]
fn tandem_failover_moves_traffic_with_zero_probes_lost() {
    if !tandem_netns_tests::can_run_as_root("planned failover drill") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let (lab, pair, rig) = setup();
    let out = rig
        .run(&lab, CAPPED_TCP, ms(500), ms(500), || {
            pair.cgw.failover(Some("tunnel2"), false)?;
            pair.wait_until(Duration::from_secs(2), "cgw on tunnel2", |a, _| {
                a.active().as_deref() == Some("tunnel2")
            })?;
            sleep(ms(500));
            pair.cgw.failover(None, true)?;
            pair.wait_until(Duration::from_secs(4), "cgw back on tunnel1", |a, _| {
                a.active().as_deref() == Some("tunnel1")
            })
        })
        .unwrap();
    eprintln!("tandem failover: {} ; tcp {:?}", out.probe, out.tcp);
    assert!(out.tcp.is_ok(), "{:?}", out.tcp);
    assert_eq!(
        out.probe.lost, 0,
        "planned failover is lossless: {}",
        out.probe
    );
    let st = pair.cgw.status().unwrap();
    assert!(
        st.num("tunnel2", "tx_packets").unwrap() > 100.0,
        "traffic really used tunnel2: {}",
        st.0
    );
}

#[test]
fn a_one_way_cut_in_each_direction_takes_the_tunnel_down_on_both_sides_and_traffic_flows() {
    if !tandem_netns_tests::can_run_as_root("one-way cut drill") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let (lab, pair, rig) = setup();
    let bound = gap_bound(&pair);
    // Ingress at isp1's cgw link: cgw -> vpcgw is cut; egress: vpcgw -> cgw is cut.
    for dir in [Direction::Ingress, Direction::Egress] {
        let out = rig
            .run(&lab, TcpLoad::Saturating(2), ms(400), ms(300), || {
                let (bh, times) = cut_isp1(&lab, &pair, dir, ms(1000))?;
                let a = pair.cgw.status()?;
                let b = pair.vpcgw.status()?;
                drop(bh);
                Ok((times, a, b))
            })
            .unwrap();
        let (times, a, b) = &out.action;
        eprintln!(
            "one-way cut {dir:?}: {} ; {times:?} ; tcp {:?}",
            out.probe, out.tcp
        );
        for (who, st) in [("cgw", a), ("vpcgw", b)] {
            let state = st.state("tunnel1");
            assert!(state.is_some(), "{who}: no tunnel1 state: {}", st.0);
            assert_ne!(state.as_deref(), Some("up"), "{who}: {}", st.0);
        }
        assert_eq!(a.active().as_deref(), Some("tunnel2"), "{}", a.0);
        assert_eq!(b.active().as_deref(), Some("tunnel2"), "{}", b.0);
        assert!(out.tcp.is_ok(), "{:?}", out.tcp);
        assert!(
            out.probe.largest_gap_ms <= bound.as_secs_f64() * 1e3,
            "{dir:?}: gap {:.1} ms > {bound:?}: {}",
            out.probe.largest_gap_ms,
            out.probe
        );
        // Back to the preferred tunnel before the other direction.
        pair.wait_until(Duration::from_secs(6), "failback", |a, b| {
            a.active().as_deref() == Some("tunnel1") && b.active().as_deref() == Some("tunnel1")
        })
        .unwrap();
    }
}

#[test]
fn a_sigkilled_head_end_restarted_carries_traffic_again_within_two_seconds() {
    if !tandem_netns_tests::can_run_as_root("kill drill") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let (lab, mut pair, _rig) = setup();
    pair.vpcgw.signal("KILL").unwrap();
    pair.vpcgw.kill();
    sleep(ms(500));
    let restarted = Instant::now();
    pair.vpcgw = Daemon::start(&pair.setup, Side::Vpcgw, &lab.vpcgw).unwrap();
    let back = wait_reachable(&lab.office, vpc_ip(Family::V4), Duration::from_secs(5)).unwrap();
    let total = restarted.elapsed();
    eprintln!("head-end restarted: traffic back after {total:?} (ping loop {back:?})");
    assert!(
        total <= Duration::from_secs(2),
        "traffic back after {total:?}"
    );
}

#[test]
fn reload_with_an_unchanged_config_loses_nothing_and_makes_no_new_handshake() {
    if !tandem_netns_tests::can_run_as_root("reload drill") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let (lab, pair, rig) = setup();
    // Let the start-up handshakes settle first: the SAs are stable when they have not changed
    // for 1.5 s.
    let settled = pair.wait_settled(ms(1500), Duration::from_secs(8)).unwrap();
    eprintln!("SAs settled after {settled:?}");
    let before = [pair.cgw.status().unwrap(), pair.vpcgw.status().unwrap()];
    let out = rig
        .run(&lab, CAPPED_TCP, ms(500), ms(500), || {
            let a = pair.cgw.reload()?;
            let b = pair.vpcgw.reload()?;
            Ok(format!("cgw: {} vpcgw: {}", a.trim(), b.trim()))
        })
        .unwrap();
    let after = [pair.cgw.status().unwrap(), pair.vpcgw.status().unwrap()];
    eprintln!("reload ({}): {} ; tcp {:?}", out.action, out.probe, out.tcp);
    assert_eq!(out.probe.lost, 0, "{}", out.probe);
    assert!(out.tcp.is_ok(), "{:?}", out.tcp);
    for (b, a) in before.iter().zip(&after) {
        for t in ["tunnel1", "tunnel2"] {
            assert!(b.spis(t).is_some(), "no SPIs on {t}: {}", b.0);
            assert_eq!(b.spis(t), a.spis(t), "same SAs on {t}: {} -> {}", b.0, a.0);
            assert!(b.num(t, "last_handshake_unix").is_some(), "{}", b.0);
            assert_eq!(
                b.num(t, "last_handshake_unix"),
                a.num(t, "last_handshake_unix"),
                "no new handshake on {t}"
            );
        }
    }
}

#[test]
fn tandem_drill_reports_time_to_move_probes_lost_and_time_back() {
    if !tandem_netns_tests::can_run_as_root("tandem drill") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let (lab, pair, rig) = setup();
    let bound = gap_bound(&pair);
    let opts = pair.setup.opts();
    let silence = Duration::from_secs(1);
    let out = rig
        .run(&lab, TcpLoad::None, ms(300), ms(300), || {
            pair.cgw.drill(silence, false)
        })
        .unwrap();
    eprintln!(
        "tandem drill:\n{}\nprobe stream meanwhile: {}",
        out.action, out.probe
    );
    let d = DrillReport::parse(&out.action);
    eprintln!("{d:?}");
    let bound_ms = bound.as_secs_f64() * 1e3;
    // The drill's own figures: it moved to tunnel2 through DPD, within the documented bound (dpd_timeout + one dpd_interval).
    assert_eq!(d.switched_to, "tunnel2", "{}", out.action);
    assert!(d.detection_ms <= bound_ms, "{}", out.action);
    assert!(d.gap_ms <= bound_ms, "{}", out.action);
    // The drill's probes go every 1 ms from before the silence until after the failback.
    assert!(d.sent >= silence.as_millis() as u64, "{}", out.action);
    assert!(
        d.lost > 0,
        "the silence lost no drill probe: {}",
        out.action
    );
    // Failback waits for the hold-down from the restore (and comes within the drill's grace of
    // 3 s after it, or the drill would have printed "-").
    let hold_ms = opts.failback.unwrap().as_secs_f64() * 1e3;
    assert!(
        d.failback_ms >= hold_ms && d.failback_ms <= hold_ms + 3000.0,
        "{}",
        out.action
    );
    // Our own probe stream (office -> vpc, through both gateways) saw the same outage. It also
    // waits for the head-end's own detection (the echoes come back on the head-end's active
    // tunnel), which can trail cgw's by up to one dpd_interval, so the two figures agree within
    // dpd_interval + 50 ms of scheduling slack (and the loss within as many 1 ms probes).
    let tol_ms = (opts.dpd_interval + ms(50)).as_secs_f64() * 1e3;
    assert!(
        (d.gap_ms - out.probe.largest_gap_ms).abs() <= tol_ms,
        "drill gap {} ms vs probe stream {:.1} ms (tolerance {tol_ms} ms): {}",
        d.gap_ms,
        out.probe.largest_gap_ms,
        out.probe
    );
    assert!(
        (d.lost as f64 - out.probe.lost as f64).abs() <= tol_ms,
        "drill lost {} vs probe stream {} (tolerance {tol_ms} probes): {}",
        d.lost,
        out.probe.lost,
        out.probe
    );
    assert!(out.probe.largest_gap_ms <= bound_ms, "{}", out.probe);
    pair.wait_until(Duration::from_secs(5), "back on tunnel1", |a, _| {
        a.active().as_deref() == Some("tunnel1")
    })
    .unwrap();
}
