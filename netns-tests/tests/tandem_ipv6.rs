//! IPv6 inside the tunnels on the fast path: a TCP stream each way over IPv6 arrives byte for
//! byte (32 MiB of a known pattern through plain sockets in the end namespaces),
//! enters the sending gateway's TUN as TSO super-packets and leaves the receiving gateway's TUN
//! as GRO super-packets (`GSO_TCPV6`: more bytes per TUN write than the inner MTU), with no TCP
//! checksum error at the receiver; IPv6 UDP at full rate is coalesced the same way
//! (`GSO_UDP_L4`) when the TUN takes USO, with no `Udp6InCsumErrors` at the receiver; and IPv6
//! UDP datagrams whose checksum computes to zero arrive (the sending gateway writes all ones, as
//! RFC 768 says, where the TUN library's checksum completion wrote zero and the far host dropped
//! every one).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

mod reliability_common;

use reliability_common::in_netns;
use tandem_netns_tests::netns::Netns;
use tandem_netns_tests::tandem::{TandemOpts, TandemPair};
use tandem_netns_tests::topo::{Family, Lab, office_ip, vpc_ip};
use tandem_netns_tests::traffic::{IperfOpts, iperf3};

/// The TUN both daemons open (`tandem::TandemSetup`'s config).
const TUN: &str = "tandem0";
/// The byte-checked transfer: large enough for thousands of super-packets, small enough to
/// cross a slow, shared CI machine in seconds.
const FILE_BYTES: usize = 32 << 20;

fn setup() -> (Lab, TandemPair) {
    tandem_netns_tests::helper::set_helper(env!("CARGO_BIN_EXE_probe"), &[]);
    let lab = Lab::new().unwrap();
    let pair = TandemPair::start(&lab, TandemOpts::default()).unwrap();
    (lab, pair)
}

/// Bytes and packets through an interface, both ways, from `ip -s -j link show`. On a TUN,
/// `rx` is what the daemon wrote (one packet per write, however many segments it carries) and
/// `tx` what it read.
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    rx_bytes: u64,
    rx_packets: u64,
    tx_bytes: u64,
    tx_packets: u64,
}

impl Link {
    fn read(ns: &Netns, iface: &str) -> Link {
        let text = ns.ip(["-s", "-j", "link", "show", "dev", iface]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let s = &v[0]["stats64"];
        let get = |dir: &str, what: &str| {
            s[dir][what]
                .as_u64()
                .unwrap_or_else(|| panic!("no {dir} {what} for {iface}: {text}"))
        };
        Link {
            rx_bytes: get("rx", "bytes"),
            rx_packets: get("rx", "packets"),
            tx_bytes: get("tx", "bytes"),
            tx_packets: get("tx", "packets"),
        }
    }

    /// Mean bytes per TUN write and per TUN read since `before`.
    fn per_packet_since(self, before: Link) -> (f64, f64) {
        let mean = |bytes: u64, packets: u64| bytes as f64 / packets.max(1) as f64;
        (
            mean(
                self.rx_bytes - before.rx_bytes,
                self.rx_packets - before.rx_packets,
            ),
            mean(
                self.tx_bytes - before.tx_bytes,
                self.tx_packets - before.tx_packets,
            ),
        )
    }
}

/// Deterministic bytes that no segment boundary can line up with (xorshift64).
fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `/proc/net/snmp6`'s `Udp6InCsumErrors` in `ns`.
fn udp6_csum_errors(ns: &Netns) -> u64 {
    let text = ns.run("cat", ["/proc/net/snmp6"]).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Udp6InCsumErrors"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Udp6InCsumErrors in /proc/net/snmp6: {text}"))
}

/// Sends `file` over one IPv6 TCP connection from `from` to `to` (port `port`) and returns
/// what arrived. Plain sockets opened inside the namespaces, not iperf3: iperf3 3.12's `-F`
/// sender skips the unsent rest of a short write (seen here: the bytes at 77 024 were the
/// file's at 131 072, its block size), and its `-F` receiver stops writing when the sender's
/// time is up.
fn tcp6_transfer(from: &Netns, to: &Netns, file: &[u8], port: u16) -> Vec<u8> {
    let to_addr = if to.role() == "office" {
        office_ip(Family::V6)
    } else {
        vpc_ip(Family::V6)
    };
    let listener = in_netns(to, move || TcpListener::bind((to_addr, port)).unwrap());
    let len = file.len();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::with_capacity(len);
        s.read_to_end(&mut got).unwrap();
        got
    });
    let data = file.to_vec();
    let t0 = Instant::now();
    in_netns(from, move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::new(to_addr, port), Duration::from_secs(5))
                .unwrap();
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    });
    let got = receiver.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} -> {}: {} bytes in {secs:.2} s ({:.2} Gbit/s)",
        from.role(),
        to.role(),
        got.len(),
        got.len() as f64 * 8.0 / secs / 1e9
    );
    got
}

/// One direction: [`FILE_BYTES`] from `from` (behind the gateway `enc`) to `to` (behind `dec`),
/// byte-checked, with the mean bytes per TUN read on `enc` and per TUN write on `dec`.
fn byte_checked_stream(from: &Netns, to: &Netns, enc: &Netns, dec: &Netns, mtu: f64, port: u16) {
    let file = pattern(FILE_BYTES);
    let csum0 = to.snmp_counter("Tcp", "InCsumErrors").unwrap();
    let (enc0, dec0) = (Link::read(enc, TUN), Link::read(dec, TUN));
    let got = tcp6_transfer(from, to, &file, port);
    let (enc1, dec1) = (Link::read(enc, TUN), Link::read(dec, TUN));
    assert_eq!(got.len(), file.len(), "{} received every byte", to.role());
    let first_diff = got.iter().zip(&file).position(|(a, b)| a != b);
    assert_eq!(
        first_diff,
        None,
        "the bytes {} received differ from those sent",
        to.role()
    );
    let (_, read) = enc1.per_packet_since(enc0);
    let (written, _) = dec1.per_packet_since(dec0);
    eprintln!(
        "{} -> {}: {read:.0} B per TUN read on {} (TSO6), {written:.0} B per TUN write on {} (GRO, GSO_TCPV6)",
        from.role(),
        to.role(),
        enc.role(),
        dec.role()
    );
    assert!(
        read > 2.0 * mtu,
        "the stream reaches {}'s TUN as TSO super-packets: {read:.0} B per read",
        enc.role()
    );
    assert!(
        written > 2.0 * mtu,
        "{} writes the stream to its TUN as GSO_TCPV6 super-packets: {written:.0} B per write",
        dec.role()
    );
    let csum1 = to.snmp_counter("Tcp", "InCsumErrors").unwrap();
    assert_eq!(csum1, csum0, "no TCP checksum error at {}", to.role());
}

#[test]
fn an_ipv6_tcp_stream_each_way_arrives_byte_for_byte_in_super_packets() {
    if !tandem_netns_tests::can_run_as_root("tandem IPv6 byte-checked") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let (lab, pair) = setup();
    let mtu = f64::from(pair.setup.opts().mtu.unwrap());
    byte_checked_stream(&lab.office, &lab.vpc, &lab.cgw, &lab.vpcgw, mtu, 5231);
    byte_checked_stream(&lab.vpc, &lab.office, &lab.vpcgw, &lab.cgw, mtu, 5232);
    // Both directions went through the active tunnel.
    let st = pair.cgw.status().unwrap();
    for field in ["tx_bytes", "rx_bytes"] {
        let n = st.num("tunnel1", field).unwrap();
        assert!(n > FILE_BYTES as f64, "tunnel1 {field} {n}: {}", st.0);
    }
}

#[test]
fn ipv6_udp_at_full_rate_is_coalesced_and_checksums_hold() {
    if !tandem_netns_tests::can_run_as_root("tandem IPv6 UDP") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let (lab, pair) = setup();
    let mtu = pair.setup.opts().mtu.unwrap();
    let _srv = tandem_netns_tests::traffic::Iperf3Server::start(&lab.vpc, 5233).unwrap();
    let csum0 = udp6_csum_errors(&lab.vpc);
    let dec0 = Link::read(&lab.vpcgw, TUN);
    // The largest datagram whose IPv6 packet fits the inner MTU unfragmented.
    let len = u32::from(mtu) - 48;
    let udp = iperf3(
        &lab.office,
        vpc_ip(Family::V6),
        5233,
        IperfOpts {
            secs: 2,
            udp_len: Some(len),
            ..IperfOpts::default()
        },
    )
    .unwrap();
    let (written, _) = Link::read(&lab.vpcgw, TUN).per_packet_since(dec0);
    eprintln!(
        "IPv6 UDP {len} B: {:.0} pps received, {} of {} lost; {written:.0} B per TUN write on vpcgw",
        udp.udp_received_pps, udp.udp_lost, udp.udp_packets
    );
    assert!(udp.udp_received_pps > 1000.0, "{udp:?}");
    assert_eq!(
        udp6_csum_errors(&lab.vpc),
        csum0,
        "no UDP checksum error at the vpc"
    );
    // USO arrived in Linux 6.2; the daemon says whether the TUN took it.
    let log = pair.vpcgw.log_text();
    if log.contains("uso=true") {
        assert!(
            written > 2.0 * f64::from(mtu),
            "vpcgw writes the datagrams as GSO_UDP_L4 super-packets: {written:.0} B per write"
        );
    } else {
        eprintln!("the TUN does not take USO here: no UDP coalescing to check");
    }
}

/// The 16-bit ones'-complement sum of `words`, folded (RFC 1071).
fn ones_sum(words: impl Iterator<Item = u16>) -> u16 {
    let mut s: u32 = words.map(u32::from).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[test]
fn ipv6_udp_datagrams_whose_checksum_computes_to_zero_arrive() {
    // RFC 768 sends a computed zero as all ones; over IPv6 a zero field is invalid (RFC 8200
    // §8.1). The office's kernel leaves the checksum to the TUN's reader (checksum offload), so
    // every one of these datagrams tests how the sending gateway completes it.
    if !tandem_netns_tests::can_run_as_root("tandem IPv6 UDP zero checksum") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let (lab, _pair) = setup();
    const SPORT: u16 = 40_001;
    const DPORT: u16 = 5234;
    const COUNT: usize = 50;
    let (src, dst) = (office_ip(Family::V6), vpc_ip(Family::V6));
    let (std::net::IpAddr::V6(s6), std::net::IpAddr::V6(d6)) = (src, dst) else {
        unreachable!()
    };
    let mut payload = pattern(64);
    let udp_len = (8 + payload.len()) as u16;
    let be = |b: &[u8]| {
        b.chunks(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
            .collect::<Vec<_>>()
    };
    payload[62..].fill(0);
    let partial = ones_sum(
        be(&s6.octets())
            .into_iter()
            .chain(be(&d6.octets()))
            .chain([0, udp_len, 0, 17, SPORT, DPORT, udp_len, 0])
            .chain(be(&payload)),
    );
    // The last word makes the sum all ones: the checksum computes to zero.
    payload[62..].copy_from_slice(&(0xffff - partial).to_be_bytes());
    let csum0 = udp6_csum_errors(&lab.vpc);
    let rx = in_netns(&lab.vpc, move || {
        std::net::UdpSocket::bind((dst, DPORT)).unwrap()
    });
    rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let sent = payload.clone();
    in_netns(&lab.office, move || {
        let tx = std::net::UdpSocket::bind((src, SPORT)).unwrap();
        for _ in 0..COUNT {
            tx.send_to(&sent, (dst, DPORT)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let mut buf = [0u8; 256];
    let mut got = 0;
    while let Ok(n) = rx.recv(&mut buf) {
        assert_eq!(&buf[..n], &payload[..], "datagram {got} arrives intact");
        got += 1;
    }
    let errors = udp6_csum_errors(&lab.vpc) - csum0;
    eprintln!("{got} of {COUNT} arrived, {errors} UDP checksum errors at the vpc");
    assert_eq!(errors, 0, "none dropped as a bad checksum");
    assert_eq!(got, COUNT, "every datagram arrives");
}
