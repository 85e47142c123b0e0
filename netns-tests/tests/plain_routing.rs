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
    let _g = tandem_netns_tests::serial();
    let lab = Lab::new().unwrap();
    for isp in [Isp::One, Isp::Two] {
        lab.plain_routes(isp).unwrap();
        // Each ISP's link to cgw, before the pings of this round.
        let before = [Isp::One, Isp::Two].map(|i| lab.isp(i).link_packets("cgw").unwrap());
        for f in Family::BOTH {
            let r = ping(&lab.office, vpc_ip(f), 5, Duration::from_millis(10)).unwrap();
            assert_eq!(r.received, 5, "{isp:?} {f:?}: {r:?}");
            let r = ping(&lab.vpc, office_ip(f), 5, Duration::from_millis(10)).unwrap();
            assert_eq!(r.received, 5, "{isp:?} {f:?} back: {r:?}");
        }
        // The pings really crossed `isp`: per family 5 requests and 5 replies arrive from cgw and
        // 5 + 5 leave towards it, so at least 20 each way over both families; the other ISP
        // carried none of them (fewer than 20: only neighbour discovery, if anything).
        let after = [Isp::One, Isp::Two].map(|i| lab.isp(i).link_packets("cgw").unwrap());
        for (k, i) in [Isp::One, Isp::Two].into_iter().enumerate() {
            let (rx, tx) = (after[k].0 - before[k].0, after[k].1 - before[k].1);
            if i == isp {
                assert!(rx >= 20 && tx >= 20, "{i:?} carried rx {rx} tx {tx}");
            } else {
                assert!(
                    rx < 20 && tx < 20,
                    "{i:?} carried {isp:?}'s pings: rx {rx} tx {tx}"
                );
            }
        }
    }
}

#[test]
fn iperf3_tcp_and_udp_run_through_the_lab_as_a_plain_router() {
    if !tandem_netns_tests::can_run_as_root("plain iperf3") {
        return;
    }
    let _g = tandem_netns_tests::serial();
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
    let _g = tandem_netns_tests::serial();
    let lab = Lab::build(HeadEnds::Two).unwrap();
    assert!(lab.vpcgw2.is_some());
    for isp in [Isp::One, Isp::Two] {
        lab.plain_routes(isp).unwrap();
        lab.vpc_via(isp).unwrap();
        let before = [Isp::One, Isp::Two].map(|i| lab.head_end(i).link_packets("lan").unwrap());
        for f in Family::BOTH {
            let r = ping(&lab.office, vpc_ip(f), 3, Duration::from_millis(10)).unwrap();
            assert_eq!(r.received, 3, "{isp:?} {f:?}: {r:?}");
        }
        // Which head-end carried them: 3 requests per family leave its LAN link and 3 replies
        // arrive on it (at least 6 each way); the other head-end's LAN link saw none of them
        // (the bridge floods a few neighbour discovery packets to both, fewer than 6).
        let after = [Isp::One, Isp::Two].map(|i| lab.head_end(i).link_packets("lan").unwrap());
        for (k, i) in [Isp::One, Isp::Two].into_iter().enumerate() {
            let (rx, tx) = (after[k].0 - before[k].0, after[k].1 - before[k].1);
            let he = lab.head_end(i).role();
            if i == isp {
                assert!(rx >= 6 && tx >= 6, "{he} carried rx {rx} tx {tx}");
            } else {
                assert!(
                    rx < 6 && tx < 6,
                    "{he} carried {isp:?}'s pings: rx {rx} tx {tx}"
                );
            }
        }
    }
}

#[test]
fn a_dropped_lab_leaves_no_namespace_behind_even_after_a_panic() {
    if !tandem_netns_tests::can_run_as_root("teardown") {
        return;
    }
    let _g = tandem_netns_tests::serial();
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
