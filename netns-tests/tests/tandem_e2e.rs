//! tandem between two namespaces: traffic both ways over IPv4 and IPv6 (inner and underlay),
//! both tunnels Up, the MTU contract, and the wire is ESP that tshark decodes (and decrypts with
//! the key log).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::sync::Mutex;
use std::time::Duration;

use tandem_netns_tests::tandem::{Side, TandemOpts, TandemPair};
use tandem_netns_tests::topo::{Family, Lab, office_ip, vpc_ip};
use tandem_netns_tests::traffic::{Iperf3Server, IperfOpts, iperf3, ping, ping_df};

/// Timing-sensitive tests run one at a time (2 cores).
static SERIAL: Mutex<()> = Mutex::new(());

fn setup(opts: TandemOpts) -> (Lab, TandemPair) {
    tandem_netns_tests::helper::set_helper(env!("CARGO_BIN_EXE_probe"), &[]);
    let lab = Lab::new().unwrap();
    let pair = TandemPair::start(&lab, opts).unwrap();
    (lab, pair)
}

fn traffic_flows_both_ways(underlay: Family) {
    let (lab, pair) = setup(TandemOpts {
        underlay,
        ..TandemOpts::default()
    });
    for side in [Side::Cgw, Side::Vpcgw] {
        let st = pair.daemon(side).status().unwrap();
        assert!(st.both_up(), "{side:?}: {}", st.0);
        assert_eq!(st.active().as_deref(), Some("tunnel1"), "{}", st.0);
    }
    let _srv = Iperf3Server::start(&lab.vpc, 5201).unwrap();
    let _srv_office = Iperf3Server::start(&lab.office, 5202).unwrap();
    for inner in Family::BOTH {
        let r = ping(&lab.office, vpc_ip(inner), 10, Duration::from_millis(10)).unwrap();
        assert_eq!(r.received, 10, "{inner:?} office -> vpc: {r:?}");
        let r = ping(&lab.vpc, office_ip(inner), 10, Duration::from_millis(10)).unwrap();
        assert_eq!(r.received, 10, "{inner:?} vpc -> office: {r:?}");
        let tcp = iperf3(&lab.office, vpc_ip(inner), 5201, IperfOpts::default()).unwrap();
        let back = iperf3(&lab.vpc, office_ip(inner), 5202, IperfOpts::default()).unwrap();
        let udp = iperf3(
            &lab.office,
            vpc_ip(inner),
            5201,
            IperfOpts {
                secs: 1,
                udp_len: Some(1200),
                ..IperfOpts::default()
            },
        )
        .unwrap();
        eprintln!(
            "underlay {underlay:?} inner {inner:?}: TCP {:.2} Gbit/s, back {:.2} Gbit/s, UDP {:.0} pps received",
            tcp.gbps(),
            back.gbps(),
            udp.udp_received_pps
        );
        assert!(tcp.bytes > 1_000_000, "{tcp:?}");
        assert!(back.bytes > 1_000_000, "{back:?}");
        assert!(udp.udp_received_pps > 1000.0, "{udp:?}");
    }
    // The traffic went through the active tunnel, which counted it.
    let st = pair.cgw.status().unwrap();
    assert!(
        st.num("tunnel1", "tx_bytes").unwrap() > 2_000_000.0,
        "{}",
        st.0
    );
    assert!(
        st.num("tunnel1", "rx_bytes").unwrap() > 2_000_000.0,
        "{}",
        st.0
    );
}

#[test]
fn ping_and_iperf3_flow_both_ways_over_an_ipv4_underlay() {
    if !tandem_netns_tests::can_run_as_root("tandem v4 underlay") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    traffic_flows_both_ways(Family::V4);
}

#[test]
fn ping_and_iperf3_flow_both_ways_over_an_ipv6_underlay() {
    if !tandem_netns_tests::can_run_as_root("tandem v6 underlay") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    traffic_flows_both_ways(Family::V6);
}

#[test]
fn a_df_ping_of_the_inner_mtu_passes_one_byte_more_gets_fragmentation_needed() {
    if !tandem_netns_tests::can_run_as_root("tandem MTU") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, pair) = setup(TandemOpts::default());
    let mtu = u32::from(pair.setup.opts().mtu.unwrap());
    // IPv4: 20 B IP + 8 B ICMP header; IPv6: 40 + 8.
    for (f, hdr) in [(Family::V4, 28), (Family::V6, 48)] {
        let (ok, out) = ping_df(&lab.office, vpc_ip(f), mtu - hdr).unwrap();
        assert!(ok, "{f:?} {} B packet must pass: {out}", mtu);
        let (ok, out) = ping_df(&lab.office, vpc_ip(f), mtu - hdr + 1).unwrap();
        assert!(!ok, "{f:?} {} B packet must not pass: {out}", mtu + 1);
        let lower = out.to_lowercase();
        assert!(
            (lower.contains("frag needed")
                || lower.contains("too big")
                || lower.contains("too long"))
                && out.contains(&mtu.to_string()),
            "{f:?}: fragmentation needed with mtu {mtu} expected: {out}"
        );
    }
}

#[test]
fn a_tcp_syn_crossing_the_tunnel_has_its_mss_clamped() {
    if !tandem_netns_tests::can_run_as_root("tandem MSS") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, pair) = setup(TandemOpts::default());
    let mtu = u32::from(pair.setup.opts().mtu.unwrap());
    let _srv = Iperf3Server::start(&lab.vpc, 5201).unwrap();
    for (f, hdr) in [(Family::V4, 40), (Family::V6, 60)] {
        let mss = tandem_netns_tests::capture::syn_mss(&lab.vpc, "eth0", || {
            let _ = iperf3(
                &lab.office,
                vpc_ip(f),
                5201,
                IperfOpts {
                    secs: 1,
                    ..IperfOpts::default()
                },
            );
        })
        .unwrap();
        eprintln!(
            "{f:?}: SYN MSS at the vpc {mss:?} (office sends {})",
            1500 - hdr
        );
        assert!(!mss.is_empty(), "no SYN captured");
        for m in mss {
            assert!(m <= mtu - hdr, "{f:?}: MSS {m} > {}", mtu - hdr);
        }
    }
}

#[test]
fn the_wire_is_esp_with_the_spis_of_tandem_status_and_decrypts_with_the_key_log() {
    if !tandem_netns_tests::can_run_as_root("tandem ESP on the wire") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, pair) = setup(TandemOpts {
        keylog: true,
        ..TandemOpts::default()
    });
    // The SPIs compared below must be the ones on the wire: let start-up rekeys settle first.
    pair.wait_settled(Duration::from_millis(1500), Duration::from_secs(8))
        .unwrap();
    let esp = tandem_netns_tests::capture::capture_esp(&lab, &pair).unwrap();
    eprintln!("{esp:?}");
    let st = pair.cgw.status().unwrap();
    let (spi_in, spi_out) = st.spis("tunnel1").unwrap();
    assert!(
        esp.spis.contains(&spi_out),
        "cgw -> vpcgw SPI {spi_out:#x} in {:x?}",
        esp.spis
    );
    assert!(
        esp.spis.contains(&spi_in),
        "vpcgw -> cgw SPI {spi_in:#x} in {:x?}",
        esp.spis
    );
    assert!(esp.esp_packets >= 20, "{esp:?}");
    assert!(
        esp.decrypted_icmp >= 20,
        "tshark decrypted the pings with the key log: {esp:?}\nkey log: {}",
        std::fs::read_to_string(pair.setup.keylog_path(Side::Cgw)).unwrap_or_default()
    );
}
