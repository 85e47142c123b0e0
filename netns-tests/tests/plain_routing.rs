//! The lab itself, without tandem: the topology routes, iperf3 and ping work through it, and
//! nothing is left behind.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::time::Duration;

use tandem_netns_tests::netns::namespaces_with_prefix;
use tandem_netns_tests::topo::{Family, HeadEnds, Isp, Lab, office_ip, vpc_ip};
use tandem_netns_tests::traffic::{Iperf3Server, IperfOpts, iperf3, ping};

#[test]
fn office_reaches_vpc_over_plain_routing_on_both_isps_and_both_families() {
    if !tandem_netns_tests::can_run_as_root("plain routing") {
        return;
    }
    let lab = Lab::new().unwrap();
    for isp in [Isp::One, Isp::Two] {
        lab.plain_routes(isp).unwrap();
        for f in Family::BOTH {
            let r = ping(&lab.office, vpc_ip(f), 5, Duration::from_millis(10)).unwrap();
            assert_eq!(r.received, 5, "{isp:?} {f:?}: {r:?}");
            let r = ping(&lab.vpc, office_ip(f), 5, Duration::from_millis(10)).unwrap();
            assert_eq!(r.received, 5, "{isp:?} {f:?} back: {r:?}");
        }
    }
    // The packets really crossed isp2 (the last plain route): its forwarding counters moved.
    let stats = lab.isp2.ip(["-s", "link", "show", "cgw"]).unwrap();
    assert!(stats.contains("RX:"), "{stats}");
}

#[test]
fn iperf3_tcp_and_udp_run_through_the_lab_as_a_plain_router() {
    if !tandem_netns_tests::can_run_as_root("plain iperf3") {
        return;
    }
    let lab = Lab::new().unwrap();
    lab.plain_routes(Isp::One).unwrap();
    let _srv = Iperf3Server::start(&lab.vpc, 5201).unwrap();
    let tcp = iperf3(&lab.office, vpc_ip(Family::V4), 5201, IperfOpts::default()).unwrap();
    assert!(tcp.gbps() > 0.1, "plain TCP {tcp:?}");
    let rev = iperf3(
        &lab.office,
        vpc_ip(Family::V6),
        5201,
        IperfOpts {
            reverse: true,
            ..IperfOpts::default()
        },
    )
    .unwrap();
    assert!(rev.gbps() > 0.1, "plain TCP reverse v6 {rev:?}");
    let udp = iperf3(
        &lab.office,
        vpc_ip(Family::V4),
        5201,
        IperfOpts {
            secs: 1,
            udp_len: Some(1400),
            ..IperfOpts::default()
        },
    )
    .unwrap();
    assert!(udp.udp_received_pps > 1000.0, "plain UDP {udp:?}");
}

#[test]
fn two_head_ends_each_carry_traffic_for_their_isp() {
    if !tandem_netns_tests::can_run_as_root("two head-ends") {
        return;
    }
    let lab = Lab::build(HeadEnds::Two).unwrap();
    assert!(lab.vpcgw2.is_some());
    for isp in [Isp::One, Isp::Two] {
        lab.plain_routes(isp).unwrap();
        lab.vpc_via(isp).unwrap();
        for f in Family::BOTH {
            let r = ping(&lab.office, vpc_ip(f), 3, Duration::from_millis(10)).unwrap();
            assert_eq!(r.received, 3, "{isp:?} {f:?}: {r:?}");
        }
    }
}

#[test]
fn a_dropped_lab_leaves_no_namespace_behind_even_after_a_panic() {
    if !tandem_netns_tests::can_run_as_root("teardown") {
        return;
    }
    let lab = Lab::build(HeadEnds::Two).unwrap();
    let prefix = lab.prefix().to_string();
    assert_eq!(namespaces_with_prefix(&prefix).len(), 7);
    drop(lab);
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());

    // A panicking test tears its lab down while unwinding.
    let prefix = std::thread::spawn(|| {
        let lab = Lab::new().unwrap();
        let prefix = lab.prefix().to_string();
        std::panic::panic_any(prefix);
    })
    .join()
    .unwrap_err()
    .downcast::<String>()
    .unwrap();
    assert!(prefix.starts_with("tdm-"));
    assert_eq!(namespaces_with_prefix(&prefix), Vec::<String>::new());
}
