//! An HA pair of office gateways (docs/routing.md, "HA pair"; topology in `netns-tests/src/ha.rs`):
//! `cgwa` and `cgwb` each run tandem with their own two tunnels to the head-end and announce
//! the VPC by BGP to the office router, `cgwb` as the backup (prepend); the head-end announces
//! the VPC and learns the office from both. SIGKILL of cgwa's tandem, and separately a silent
//! cut of both of cgwa's uplinks, move every flow to cgwb: the figures are the probe stream's
//! gap and loss. Drill timers (100 ms / 300 ms).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::{IpAddr, SocketAddr};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tandem_netns_tests::ha::{Gw, HaLab, HaPair, OFFICE_HOST, VPC_HOST, head_end_if};
use tandem_netns_tests::impair::{Direction, NftImpairment};
use tandem_netns_tests::probe::{ProbeStream, Reflector};
use tandem_netns_tests::routed::{route_dev, wait_route_dev};
use tandem_netns_tests::tandem::TandemOpts;

const REFLECT_PORT: u16 = 7100;
/// More routers than the two-gateway lab: the office gateway's withdrawal crosses the office
/// LAN to `orouter` before the office's packets move.
const ROUTING_SLACK: Duration = Duration::from_millis(300);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn skip() -> bool {
    if !tandem_netns_tests::can_run_as_root("HA pair") {
        return true;
    }
    if !tandem_netns_tests::frr::installed() && std::env::var_os("CI").is_none() {
        eprintln!("SKIPPED HA pair: FRR is not installed (apt-get install frr)");
        return true;
    }
    false
}

/// The office router sends the VPC's traffic to `gw`, and the head-end the office's through
/// `gw`'s tunnel1; returns when each was seen, from `start`.
fn wait_on(lab: &HaLab, gw: Gw, start: Instant, timeout: Duration) -> (Duration, Duration) {
    loop {
        let o = lab
            .orouter
            .ipw(&format!("route get {VPC_HOST}"))
            .unwrap_or_default();
        if o.contains(&format!("via {} ", gw.lan())) {
            break;
        }
        assert!(
            start.elapsed() < timeout,
            "orouter: {VPC_HOST} {o}, expected via {}",
            gw.lan()
        );
        sleep(ms(20));
    }
    let office_side = start.elapsed();
    let left = timeout.saturating_sub(office_side);
    wait_route_dev(
        &lab.vpcgw,
        IpAddr::V4(OFFICE_HOST),
        &head_end_if(gw, 1),
        left,
    )
    .unwrap();
    (office_side, start.elapsed())
}

fn ha_failover(kill: bool) {
    let _g = tandem_netns_tests::serial();
    tandem_netns_tests::helper::set_helper(env!("CARGO_BIN_EXE_probe"), &[]);
    let lab = HaLab::new().unwrap();
    let opts = TandemOpts::default();
    let mut pair = HaPair::start(&lab, &opts).unwrap();
    wait_on(&lab, Gw::A, Instant::now(), Duration::from_secs(20));
    let _reflector = Reflector::start(&lab.vpc, REFLECT_PORT).unwrap();
    let probe = ProbeStream::start(
        &lab.office,
        SocketAddr::new(IpAddr::V4(VPC_HOST), REFLECT_PORT),
    )
    .unwrap();
    sleep(ms(500));
    // Traffic through cgwa: its tunnel1 carries the probes.
    let tx = |d: &tandem_netns_tests::tandem::Daemon| {
        d.status().unwrap().num("tunnel1", "tx_packets").unwrap()
    };
    let (a0, b0) = (tx(&pair.gw[0]), tx(&pair.gw[1]));
    sleep(ms(300));
    let (a1, b1) = (tx(&pair.gw[0]), tx(&pair.gw[1]));
    assert!(
        a1 - a0 >= 250.0 && b1 - b0 < 60.0,
        "before: cgwa tunnel1 +{} cgwb tunnel1 +{}",
        a1 - a0,
        b1 - b0
    );
    let t0 = Instant::now();
    let what;
    let _cut = if kill {
        what = "SIGKILL of cgwa's tandem";
        pair.gw[0].kill();
        Vec::new()
    } else {
        what = "silent cut of cgwa's two uplinks";
        vec![
            NftImpairment::blackhole(&lab.isp1, "cgwa", Direction::Both).unwrap(),
            NftImpairment::blackhole(&lab.isp2, "cgwa", Direction::Both).unwrap(),
        ]
    };
    let moved = wait_on(&lab, Gw::B, t0, Duration::from_secs(10));
    sleep(ms(1000));
    let report = probe.stop().unwrap();
    let bound = opts.dpd_timeout + opts.dpd_interval + ROUTING_SLACK;
    eprintln!(
        "HA pair, {what}: orouter -> cgwb after {:?}, vpcgw -> cgwb after {:?}; probes {report} (bound {bound:?})",
        moved.0, moved.1
    );
    // Everything flows through cgwb now: the VPC answers, and its tunnel carries it.
    let dev = route_dev(&lab.cgwb, IpAddr::V4(VPC_HOST), None).unwrap();
    assert_eq!(dev, "vpc-tunnel1", "cgwb's route to the VPC");
    assert!(
        report.largest_gap_ms <= bound.as_secs_f64() * 1e3,
        "{what}: gap {:.1} ms > {bound:?}: {report}\n{}",
        report.largest_gap_ms,
        pair.logs()
    );
    probe_after(&lab, &pair);
}

/// A fresh stream after the move: nothing lost, carried by cgwb's tunnel1.
fn probe_after(lab: &HaLab, pair: &HaPair) {
    let tx = || {
        pair.gw[1]
            .status()
            .unwrap()
            .num("tunnel1", "tx_packets")
            .unwrap()
    };
    let probe = ProbeStream::start(
        &lab.office,
        SocketAddr::new(IpAddr::V4(VPC_HOST), REFLECT_PORT),
    )
    .unwrap();
    sleep(ms(200));
    let b0 = tx();
    sleep(ms(300));
    let b1 = tx();
    let report = probe.stop().unwrap();
    assert_eq!(report.lost, 0, "after the move: {report}");
    assert!(b1 - b0 >= 250.0, "cgwb tunnel1 carried +{}", b1 - b0);
}

#[test]
fn ha_pair_sigkill_of_one_gateways_tandem_moves_all_flows_to_the_other() {
    if skip() {
        return;
    }
    ha_failover(true);
}

#[test]
fn ha_pair_silent_cut_of_one_gateways_uplinks_moves_all_flows_to_the_other() {
    if skip() {
        return;
    }
    ha_failover(false);
}
