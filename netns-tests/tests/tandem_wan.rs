//! tandem over a rough WAN (the userspace emulator on isp1) and with two head-end namespaces.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::thread::sleep;
use std::time::Duration;

use tandem_netns_tests::drill::{DrillRig, TcpLoad, cut_isp1, gap_bound};
use tandem_netns_tests::impair::Direction;
use tandem_netns_tests::probe::{ProbeStream, REFLECT_PORT, Reflector};
use tandem_netns_tests::tandem::{TandemOpts, TandemPair};
use tandem_netns_tests::topo::{Family, HeadEnds, Isp, Lab, vpc_ip};
use tandem_netns_tests::traffic::ping;
use tandem_netns_tests::wanem::{Impair, WanEmulator};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn duplicated_and_reordered_esp_is_absorbed_by_the_replay_window_and_tunnels_stay_up() {
    if !tandem_netns_tests::can_run_as_root("tandem over a rough WAN") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    tandem_netns_tests::helper::set_helper(env!("CARGO_BIN_EXE_probe"), &[]);
    let lab = Lab::new().unwrap();
    // Delay and jitter well under dpd_timeout, so the tunnels must stay Up throughout.
    let imp = Impair {
        delay: ms(10),
        jitter: ms(4),
        reorder_pct: 10,
        reorder_extra: ms(3),
        dup_pct: 20,
        ..Impair::default()
    };
    let _emu = WanEmulator::start(&lab.isp1, &["cgw", "vpcgw"], imp).unwrap();
    let pair = TandemPair::start(&lab, TandemOpts::default()).unwrap();
    let _r = Reflector::start(&lab.vpc, REFLECT_PORT).unwrap();
    let s = ProbeStream::start(
        &lab.office,
        SocketAddr::new(vpc_ip(Family::V4), REFLECT_PORT),
    )
    .unwrap();
    sleep(ms(1500));
    let r = s.stop().unwrap();
    eprintln!("over the emulated WAN: {r}");
    // Every ESP duplicate is a replay: none reaches the office, and nothing is lost.
    assert_eq!(r.duplicates, 0, "{r}");
    assert_eq!(r.lost, 0, "{r}");
    // The probes felt the WAN: 2 x 10 ms at least.
    assert!(r.rtt_avg_ms >= 20.0, "{r}");
    let st = pair.cgw.status().unwrap();
    assert!(st.both_up(), "{}", st.0);
    assert_eq!(
        st.active().as_deref(),
        Some("tunnel1"),
        "no failover on a slow path: {}",
        st.0
    );
    assert_eq!(st.num("tunnel1", "failovers"), Some(0.0), "{}", st.0);
}

#[test]
fn with_two_head_ends_traffic_moves_to_the_second_head_end_when_isp1_dies() {
    if !tandem_netns_tests::can_run_as_root("tandem with two head-ends") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    tandem_netns_tests::helper::set_helper(env!("CARGO_BIN_EXE_probe"), &[]);
    let lab = Lab::build(HeadEnds::Two).unwrap();
    let pair = TandemPair::start(&lab, TandemOpts::default()).unwrap();
    let he2 = pair.vpcgw2.as_ref().unwrap();
    // The VPC answers through the second head-end: office -> vpc rides tunnel1 (vpcgw),
    // vpc -> office rides tunnel2 (vpcgw2); receive is accepted on every tunnel.
    lab.vpc_via(Isp::Two).unwrap();
    let r = ping(&lab.office, vpc_ip(Family::V4), 10, ms(10)).unwrap();
    assert_eq!(r.received, 10, "{r:?}");
    let rig = DrillRig::new(&lab, Family::V4).unwrap();
    let bound = gap_bound(&pair);
    let out = rig
        .run(&lab, TcpLoad::Saturating(2), ms(400), ms(300), || {
            // vpcgw loses its only tunnel; cgw moves to tunnel2 (vpcgw2). Once both sides see
            // tunnel1 Down, the cut is held 600 ms more while each head-end's receive counter of
            // its tunnel is read at both ends of that window.
            let (_cut, times) = cut_isp1(&lab, &pair, Direction::Both, Duration::ZERO)?;
            let active = pair.cgw.status()?.active();
            let rx = || -> Result<[f64; 2], tandem_netns_tests::Error> {
                let get = |st: tandem_netns_tests::tandem::Status, t: &str| {
                    st.num(t, "rx_packets").ok_or_else(|| {
                        tandem_netns_tests::Error::Parse(format!("no {t} rx_packets: {}", st.0))
                    })
                };
                Ok([
                    get(pair.vpcgw.status()?, "tunnel1")?,
                    get(he2.status()?, "tunnel2")?,
                ])
            };
            let before = rx()?;
            sleep(ms(600));
            let after = rx()?;
            Ok((times, active, [after[0] - before[0], after[1] - before[1]]))
        })
        .unwrap();
    eprintln!(
        "two head-ends, isp1 cut: {} ; {:?} ; tcp {:?}",
        out.probe, out.action, out.tcp
    );
    assert!(
        out.probe.lost > 0,
        "the cut hit the active path: {}",
        out.probe
    );
    assert_eq!(
        out.action.1.as_deref(),
        Some("tunnel2"),
        "cgw moved to vpcgw2's tunnel"
    );
    assert!(out.tcp.is_ok(), "{:?}", out.tcp);
    assert!(
        out.probe.largest_gap_ms <= bound.as_secs_f64() * 1e3,
        "{}",
        out.probe
    );
    // Which head-end carried the traffic while isp1 was cut: vpcgw received nothing on its
    // tunnel, vpcgw2 received at least the probes of the 600 ms window (one per ms, less slack
    // for scheduling), plus the TCP stream.
    let [he1_rx, he2_rx] = out.action.2;
    assert_eq!(he1_rx, 0.0, "vpcgw received over the cut isp1");
    assert!(
        he2_rx >= 300.0,
        "vpcgw2 carried the traffic: {he2_rx} packets in 600 ms"
    );
}
