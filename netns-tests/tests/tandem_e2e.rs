//! tandem between two namespaces: traffic both ways over IPv4 and IPv6 (inner and underlay),
//! both tunnels Up, the MTU contract (DF pings, and the MSS of TCP SYNs clamped with a valid
//! checksum), and the wire is ESP that tshark decodes (and decrypts with the key log).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

mod reliability_common;

use reliability_common::in_netns;
use tandem_netns_tests::tandem::{Side, TandemOpts, TandemPair};
use tandem_netns_tests::topo::{Family, Lab, office_ip, vpc_ip};
use tandem_netns_tests::traffic::{Iperf3Server, IperfOpts, iperf3, ping, ping_df};

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
    // Both TUNs let the kernel queue 5000 packets for the data plane (Linux gives a TUN 500).
    for ns in [&lab.cgw, &lab.vpcgw] {
        let qlen = ns
            .run("cat", ["/sys/class/net/tandem0/tx_queue_len"])
            .unwrap();
        assert_eq!(qlen.trim(), "5000", "{ns:?}: the TUN's txqueuelen");
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
    let _g = tandem_netns_tests::serial();
    traffic_flows_both_ways(Family::V4);
}

#[test]
fn ping_and_iperf3_flow_both_ways_over_an_ipv6_underlay() {
    if !tandem_netns_tests::can_run_as_root("tandem v6 underlay") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    traffic_flows_both_ways(Family::V6);
}

#[test]
fn a_df_ping_of_the_inner_mtu_passes_one_byte_more_gets_fragmentation_needed() {
    if !tandem_netns_tests::can_run_as_root("tandem MTU") {
        return;
    }
    let _g = tandem_netns_tests::serial();
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

/// Sends, from a raw socket in the office, a TCP SYN to `vpc:port` whose MSS option (1460) sits
/// at an odd offset (NOP, MSS, NOP, NOP, NOP: the option starts at byte 21 of the header), as
/// some stacks and middleboxes send it. Returns whether the vpc answered with a SYN-ACK: its
/// kernel drops a segment whose checksum is wrong without a word, so an answer proves that the
/// clamp kept the checksum valid.
fn odd_offset_syn_is_answered(lab: &Lab, port: u16) -> bool {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (office_ip(Family::V4), vpc_ip(Family::V4)) else {
        unreachable!("IPv4 addresses")
    };
    in_netns(&lab.office, move || {
        use std::io::Read as _;
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let sport: u16 = 40_321;
        // Three tries, in case a SYN is lost for a reason of its own.
        for seq in [0x0102_0304u32, 0x1102_0304, 0x2102_0304] {
            let mut seg = [0u8; 28];
            seg[0..2].copy_from_slice(&sport.to_be_bytes());
            seg[2..4].copy_from_slice(&port.to_be_bytes());
            seg[4..8].copy_from_slice(&seq.to_be_bytes());
            seg[12] = 7 << 4; // 28-byte header
            seg[13] = 0x02; // SYN
            seg[14..16].copy_from_slice(&64_240u16.to_be_bytes());
            seg[20..28].copy_from_slice(&[1, 2, 4, 0x05, 0xb4, 1, 1, 1]);
            // RFC 9293 §3.1: the checksum covers the pseudo-header and the segment.
            let mut pseudo = Vec::with_capacity(12 + seg.len());
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, 6, 0, seg.len() as u8]);
            pseudo.extend_from_slice(&seg);
            let sum = pseudo
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
                .sum::<u32>();
            let sum = (sum & 0xffff) + (sum >> 16);
            let sum = (sum & 0xffff) + (sum >> 16);
            seg[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            sock.send_to(&seg, &SocketAddr::new(dst.into(), 0).into())
                .unwrap();
            let deadline = Instant::now() + Duration::from_millis(700);
            let mut buf = [0u8; 1500];
            while Instant::now() < deadline {
                let Ok(n) = (&sock).read(&mut buf) else {
                    continue;
                };
                let pkt = &buf[..n];
                let ihl = usize::from(pkt[0] & 0x0f) * 4;
                let Some(tcp) = pkt.get(ihl..ihl + 20) else {
                    continue;
                };
                let answered = pkt[12..16] == dst.octets()
                    && tcp[0..2] == port.to_be_bytes()
                    && tcp[2..4] == sport.to_be_bytes()
                    && tcp[13] & 0x12 == 0x12
                    && tcp[8..12] == seq.wrapping_add(1).to_be_bytes();
                if answered {
                    return true;
                }
            }
        }
        false
    })
}

#[test]
fn a_tcp_syn_crossing_the_tunnel_has_its_mss_clamped_to_the_inner_mtu_with_a_valid_checksum() {
    if !tandem_netns_tests::can_run_as_root("tandem MSS") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let (lab, pair) = setup(TandemOpts::default());
    let mtu = u32::from(pair.setup.opts().mtu.unwrap());
    let _srv = Iperf3Server::start(&lab.vpc, 5201).unwrap();
    let csum_errors =
        || [&lab.office, &lab.vpc].map(|ns| ns.snmp_counter("Tcp", "InCsumErrors").unwrap());
    let csum0 = csum_errors();
    for (f, hdr) in [(Family::V4, 40), (Family::V6, 60)] {
        let mut tcp = None;
        let mss = tandem_netns_tests::capture::syn_mss(&lab.vpc, "eth0", || {
            tcp = Some(iperf3(
                &lab.office,
                vpc_ip(f),
                5201,
                IperfOpts {
                    secs: 1,
                    ..IperfOpts::default()
                },
            ));
        })
        .unwrap();
        let tcp = tcp.unwrap();
        eprintln!(
            "{f:?}: SYN MSS at the vpc {mss:?} (office sends {}); transfer {tcp:?}",
            1500 - hdr
        );
        // The office offers 1500 - headers, more than fits: every SYN arrives clamped to exactly
        // the inner MTU's MSS (not merely below it).
        assert!(!mss.is_empty(), "no SYN captured");
        for m in mss {
            assert_eq!(m, mtu - hdr, "{f:?}: MSS {m}, inner MTU {mtu}");
        }
        // The rewritten SYN was accepted: the connection came up and the transfer completed.
        let tcp = tcp.unwrap_or_else(|e| panic!("{f:?}: the transfer failed: {e}"));
        assert!(tcp.bytes > 1_000_000, "{f:?}: {tcp:?}");
    }
    // An MSS option at an odd offset straddles two 16-bit words of the checksum: the clamp must
    // still leave a checksum the vpc's kernel accepts.
    let mss = tandem_netns_tests::capture::syn_mss(&lab.vpc, "eth0", || {
        assert!(
            odd_offset_syn_is_answered(&lab, 5201),
            "no SYN-ACK for a SYN with its MSS at an odd offset: the clamp broke its checksum"
        );
    })
    .unwrap();
    eprintln!("odd-offset SYN: MSS at the vpc {mss:?}");
    assert!(!mss.is_empty(), "no SYN captured");
    for m in mss {
        assert_eq!(m, mtu - 40, "odd-offset SYN: MSS {m}, inner MTU {mtu}");
    }
    let csum1 = csum_errors();
    assert_eq!(csum0, csum1, "TCP checksum errors at office / vpc");
}

#[test]
fn the_wire_is_esp_with_the_spis_of_tandem_status_and_decrypts_with_the_key_log() {
    if !tandem_netns_tests::can_run_as_root("tandem ESP on the wire") {
        return;
    }
    let _g = tandem_netns_tests::serial();
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
