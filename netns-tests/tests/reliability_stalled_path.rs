//! A path that stops taking packets must not stop the gateway: the tunnel sockets are
//! non-blocking, so a send that finds the socket's buffer full is dropped and counted
//! (`tandem_dropped_packets_total{reason="send_queue_full"}`) and the data plane goes on serving
//! the other tunnel, the TUN and the control socket.
//!
//! The stall is a neighbour that never resolves, the way a dead next hop looks to the kernel:
//! cgw's isp1 router stops answering ARP, so every datagram cgw sends on tunnel1 waits in the
//! neighbour's queue (made larger than the socket buffer, and resolution slow), still charged to
//! tunnel1's socket, until the buffer is full. With a blocking socket the data plane would wait
//! in `sendmmsg` for the neighbour to fail (here: 100 probes 10 s apart) and every tunnel,
//! status and metrics with it.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod reliability_common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reliability_common::*;
use tandem_netns_tests::drill::{DRILL_IPERF_PORT, DrillRig, gap_bound};
use tandem_netns_tests::probe::{ProbeStream, REFLECT_PORT};
use tandem_netns_tests::tandem::TandemOpts;
use tandem_netns_tests::topo::{Family, Lab, vpc_ip};
use tandem_netns_tests::traffic::{Iperf3Client, IperfOpts};

#[test]
fn a_neighbour_that_never_resolves_fills_tunnel1s_send_queue_and_tunnel2_carries_on() {
    if !tandem_netns_tests::can_run_as_root("stalled path") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let lab = Lab::new().unwrap();
    // Default timers: a second of the flood goes to tunnel1 before cgw gives up on it.
    let pair = start_pair(
        &lab,
        TandemOpts {
            dpd_interval: Duration::from_millis(250),
            dpd_timeout: Duration::from_secs(1),
            ..TandemOpts::default()
        },
        "",
    );
    let _rig = DrillRig::new(&lab, Family::V4).unwrap();
    let before = drops(&metrics(&lab.cgw));
    let target = SocketAddr::new(vpc_ip(Family::V4), REFLECT_PORT);
    let probe = ProbeStream::start(&lab.office, target).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // Enough data to fill the buffer in a fraction of a second; it goes to tunnel1 until cgw
    // moves to tunnel2, a DPD timeout after the stall. It starts first: iperf3's control
    // connection must get through.
    let flood = Iperf3Client::spawn(
        &lab.office,
        vpc_ip(Family::V4),
        DRILL_IPERF_PORT,
        IperfOpts {
            secs: 4,
            udp_len: Some(1200),
            ..IperfOpts::default()
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(700));

    // The stall.
    for (knob, v) in [
        ("unres_qlen_bytes", "67108864"),
        ("mcast_solicit", "100"),
        ("retrans_time_ms", "10000"),
    ] {
        lab.cgw
            .sysctl(&format!("net.ipv4.neigh.isp1.{knob}"), v)
            .unwrap();
    }
    lab.isp1.ip(["link", "set", "cgw", "arp", "off"]).unwrap();
    lab.cgw.ip(["-4", "neigh", "flush", "dev", "isp1"]).unwrap();
    let stalled_at = Instant::now();

    // The loop keeps serving: cgw's status answers and it moves to tunnel2 within the drill
    // bound, as for any dead path.
    pair.wait_until(Duration::from_secs(5), "cgw on tunnel2", |a, _| {
        a.active().as_deref() == Some("tunnel2")
    })
    .unwrap();
    let moved = stalled_at.elapsed();
    let neigh = lab.cgw.ip(["-4", "neigh", "show", "dev", "isp1"]).unwrap();
    let _ = flood.finish();
    let report = probe.stop().unwrap();
    let after = drops(&metrics(&lab.cgw));
    let d = drop_delta(&before, &after);
    let status = pair.cgw.status().unwrap();
    eprintln!(
        "stalled isp1 neighbour ({}): moved to tunnel2 after {moved:?}; probes {report}; drops {:?}; tunnel2 {:?}",
        neigh.trim(),
        nonzero(&d),
        status.state("tunnel2")
    );
    assert!(
        drop_count(&d, "send_queue_full") > 0,
        "a full send queue must be counted: {d:?}"
    );
    assert_eq!(status.state("tunnel2").as_deref(), Some("up"));
    let bound = gap_bound(&pair);
    assert!(
        report.largest_gap_ms <= bound.as_secs_f64() * 1e3,
        "largest probe gap {:.1} ms > {bound:?}: {report}",
        report.largest_gap_ms
    );
    // The probes lost besides the gap are the flood's (it saturates tunnel2 after the move):
    // the gap bound is what says the probes flowed again on tunnel2.
}
