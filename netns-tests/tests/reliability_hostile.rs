//! Hostile input at the tunnel ports while traffic flows: floods of random
//! datagrams, truncated headers, unknown SPIs, forged ESP under live SPIs and junk control packets;
//! initiations with a bad `mac1` (must cost no DH) and initiations with a valid `mac1` from many
//! sources (must put the responder under load: cookies, bounded DH work, legitimate traffic kept).
//!
//! The attacker sits in `isp1` (on the path, as a provider or anyone upstream could) and sends from
//! up to 200 addresses of 203.0.113.0/24. Every figure is printed (`--nocapture`).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod reliability_common;

use std::net::SocketAddr;
use std::time::Duration;

use reliability_common::*;
use tandem_netns_tests::probe::{ProbeStream, REFLECT_PORT, Reflector};
use tandem_netns_tests::tandem::{Side, TandemOpts};
use tandem_netns_tests::topo::{Family, Isp, Lab, cgw_wan, vpc_ip, vpcgw_wan};
use tandem_netns_tests::traffic::{Iperf3Server, IperfOpts, iperf3};

fn tunnel_port(ip: std::net::IpAddr) -> SocketAddr {
    SocketAddr::new(ip, 4500)
}

#[test]
fn a_flood_of_junk_at_both_tunnel_ports_leaves_the_daemons_running_the_tunnels_up_and_the_probes_flowing()
 {
    if !tandem_netns_tests::can_run_as_root("hostile flood") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let lab = Lab::new().unwrap();
    let mut pair = start_pair(&lab, TandemOpts::default(), "");
    let _refl = Reflector::start(&lab.vpc, REFLECT_PORT).unwrap();
    let sources = many_sources(&lab.isp1, "203.0.113.0/24", 200);
    let (vpc_spi, _) = pair.vpcgw.status().unwrap().spis("tunnel1").unwrap();
    let (cgw_spi, _) = pair.cgw.status().unwrap().spis("tunnel1").unwrap();
    let vpc_pub = public_key(&pair.setup, Side::Vpcgw);
    let cgw_pub = public_key(&pair.setup, Side::Cgw);
    // Bad-mac1 initiations: otherwise perfect messages with one mac1 byte flipped.
    let bad_mac1 = |to| {
        stranger_initiations(to, 8)
            .into_iter()
            .map(|mut m| {
                let o = mac1_offset(&m);
                m[o] ^= 0x01;
                m
            })
            .collect::<Vec<_>>()
    };
    let kinds = |spi, to| {
        vec![
            Junk::Random,
            Junk::Truncated(spi),
            Junk::UnknownSpi,
            Junk::ForgedEsp(spi),
            Junk::Control,
            Junk::Messages(bad_mac1(to)),
        ]
    };
    let m_vpc0 = metrics(&lab.vpcgw);
    let m_cgw0 = metrics(&lab.cgw);
    let rss = |d: &tandem_netns_tests::tandem::Daemon| {
        d.process()
            .rss_kib(false)
            .unwrap_or_else(|| panic!("no VmRSS for {:?}", d.side()))
    };
    let rss0 = (rss(&pair.vpcgw), rss(&pair.cgw));
    let target = SocketAddr::new(vpc_ip(Family::V4), REFLECT_PORT);
    let probe = ProbeStream::start(&lab.office, target).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // 4000 datagrams/s at each gateway for 5 s.
    let (rate, count) = (4000, 20_000);
    let f1 = flood(
        &lab.isp1,
        sources.clone(),
        tunnel_port(vpcgw_wan(Isp::One, Family::V4)),
        kinds(vpc_spi, vpc_pub),
        rate,
        count,
        1,
    );
    let f2 = flood(
        &lab.isp1,
        sources,
        tunnel_port(cgw_wan(Isp::One, Family::V4)),
        kinds(cgw_spi, cgw_pub),
        rate,
        count,
        2,
    );
    let mut polls = 0;
    let mut not_up = Vec::new();
    while !f1.is_finished() || !f2.is_finished() {
        polls += 1;
        if !both_up(&pair) {
            not_up.push(format!(
                "{:?} / {:?}",
                pair.cgw.status().map(|s| s.0),
                pair.vpcgw.status().map(|s| s.0)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (r1, r2) = (f1.join().unwrap(), f2.join().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let report = probe.stop().unwrap();
    let m_vpc1 = metrics(&lab.vpcgw);
    let m_cgw1 = metrics(&lab.cgw);
    let rss1 = (rss(&pair.vpcgw), rss(&pair.cgw));
    let d_vpc = drop_delta(&drops(&m_vpc0), &drops(&m_vpc1));
    let d_cgw = drop_delta(&drops(&m_cgw0), &drops(&m_cgw1));
    let hs = |m: &str| metric(m, "tandem_handshakes_total", &[]);
    let loss_pct = report.lost as f64 * 100.0 / report.sent as f64;
    eprintln!("flood -> vpcgw: {r1:?}; drops {:?}", nonzero(&d_vpc));
    eprintln!("flood -> cgw:   {r2:?}; drops {:?}", nonzero(&d_cgw));
    eprintln!("probe under the flood: {report}; loss {loss_pct:.3} %");
    eprintln!(
        "handshakes vpcgw {} -> {}, cgw {} -> {}; RSS KiB vpcgw {:?} -> {:?}, cgw {:?} -> {:?}; {polls} status polls, {} not both-up",
        hs(&m_vpc0),
        hs(&m_vpc1),
        hs(&m_cgw0),
        hs(&m_cgw1),
        rss0.0,
        rss1.0,
        rss0.1,
        rss1.1,
        not_up.len()
    );
    assert!(
        pair.vpcgw.is_running() && pair.cgw.is_running(),
        "a daemon died"
    );
    assert!(
        not_up.is_empty(),
        "a tunnel left Up during the flood: {not_up:?}"
    );
    assert!(
        loss_pct <= 1.0,
        "probe loss {loss_pct:.3} % > 1 %: {report}"
    );
    // Nothing the attacker sent was taken for traffic or completed a handshake.
    assert_eq!(hs(&m_vpc0), hs(&m_vpc1), "a handshake completed at vpcgw");
    assert_eq!(hs(&m_cgw0), hs(&m_cgw1), "a handshake completed at cgw");
    for (d, r, who) in [(&d_vpc, &r1, "vpcgw"), (&d_cgw, &r2, "cgw")] {
        let counted: u64 = d.values().sum();
        // Every junk datagram is counted as a drop (the few beyond are the probes' own, none).
        assert!(
            counted >= r.sent * 99 / 100,
            "{who}: {counted} drops counted for {} junk datagrams: {d:?}",
            r.sent
        );
        for reason in ["auth", "malformed", "unknown_spi"] {
            assert!(drop_count(d, reason) > 0, "{who}: no {reason} drops: {d:?}");
        }
    }
    for (who, before, after) in [("vpcgw", rss0.0, rss1.0), ("cgw", rss0.1, rss1.1)] {
        let grew = after.saturating_sub(before);
        assert!(grew <= 16 * 1024, "{who} RSS grew {grew} KiB");
    }
}

#[test]
fn bad_mac1_initiations_cost_no_dh_and_valid_mac1_ones_from_many_sources_meet_cookies_with_bounded_dh()
 {
    if !tandem_netns_tests::can_run_as_root("initiation floods") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let lab = Lab::new().unwrap();
    let pair = start_pair(&lab, TandemOpts::default(), "");
    let _srv = Iperf3Server::start(&lab.vpc, 5231).unwrap();
    let sources = many_sources(&lab.isp1, "203.0.113.0/24", 200);
    let vpc_pub = public_key(&pair.setup, Side::Vpcgw);
    let dh = dh_cost();
    let valid = stranger_initiations(vpc_pub, 400);
    let flip = |i: usize, byte: u8| {
        valid
            .iter()
            .map(|m| {
                let mut m = m.clone();
                let at = i.min(m.len() - 1);
                m[at] ^= byte;
                m
            })
            .collect::<Vec<_>>()
    };
    // Same size, same sources: a wrong type byte (dropped at the header), a bad mac1, a valid mac1.
    let wrong_type = flip(4, 0x40);
    let bad_mac1 = flip(mac1_offset(&valid[0]), 0x80);
    let dst = tunnel_port(vpcgw_wan(Isp::One, Family::V4));
    let hs = |m: &str| metric(m, "tandem_handshakes_total", &[]);

    // 15000 of each at 5000/s: 100x the load threshold (50 initiations/s/tunnel).
    let (rate, count) = (5000, 15_000);
    struct Phase {
        sent: u64,
        cpu: f64,
        rss: (u64, u64),
        vpcgw: (String, String),
        cgw: (String, String),
    }
    let phase = |msgs: Vec<Vec<u8>>, seed| {
        let v0 = metrics(&lab.vpcgw);
        let c0 = metrics(&lab.cgw);
        let cpu0 = pair.vpcgw.process().cpu_seconds().unwrap();
        let rss0 = pair.vpcgw.process().rss_kib(false).unwrap();
        let rep = flood(
            &lab.isp1,
            sources.clone(),
            dst,
            vec![Junk::Messages(msgs)],
            rate,
            count,
            seed,
        )
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        Phase {
            sent: rep.sent,
            cpu: pair.vpcgw.process().cpu_seconds().unwrap() - cpu0,
            rss: (rss0, pair.vpcgw.process().rss_kib(false).unwrap()),
            vpcgw: (v0, metrics(&lab.vpcgw)),
            cgw: (c0, metrics(&lab.cgw)),
        }
    };
    let delta = |m: &(String, String)| drop_delta(&drops(&m.0), &drops(&m.1));
    let junk = phase(wrong_type, 3);
    let bad = phase(bad_mac1, 4);
    let good = phase(valid.clone(), 5);
    // Cookie replies go only to the tunnel's endpoint (never reflected at a third party), so to
    // see them the attacker spoofs the peer's own address, cgw's 192.0.2.1:4500: under load the
    // replies reach the real cgw, which has no handshake pending and counts them as `handshake`.
    let peer = SocketAddr::new(cgw_wan(Isp::One, Family::V4), 4500);
    let c0 = metrics(&lab.cgw);
    let v0 = metrics(&lab.vpcgw);
    let spoof = flood(
        &lab.isp1,
        vec![peer],
        dst,
        vec![Junk::Messages(valid.clone())],
        1000,
        3000,
        7,
    )
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let cookies = drop_delta(&drops(&c0), &drops(&metrics(&lab.cgw)));
    let spoof_v = drop_delta(&drops(&v0), &drops(&metrics(&lab.vpcgw)));
    eprintln!(
        "valid mac1 from the peer's own address: {} sent at 1000/s: vpcgw drops {spoof_v:?}; cookie replies received by cgw (its `handshake` drops) {:?}",
        spoof.sent,
        drop_count(&cookies, "handshake")
    );
    let all_dh = dh.as_secs_f64() * good.sent as f64;
    eprintln!("one X25519 DH here: {dh:?}; one per initiation would cost {all_dh:.3} s of CPU");
    for (name, p) in [
        ("wrong type", &junk),
        ("bad mac1", &bad),
        ("valid mac1", &good),
    ] {
        eprintln!(
            "{name:>10}: {} sent at {rate}/s from 200 sources: vpcgw CPU {:.2} s ({:.1} us each), drops {:?}, handshakes {} -> {}, RSS {} -> {} KiB; cgw drops {:?}",
            p.sent,
            p.cpu,
            p.cpu * 1e6 / p.sent as f64,
            delta(&p.vpcgw),
            hs(&p.vpcgw.0),
            hs(&p.vpcgw.1),
            p.rss.0,
            p.rss.1,
            delta(&p.cgw),
        );
    }

    // Legitimate traffic: TCP alone, then under the valid-mac1 flood.
    let tcp_opts = IperfOpts {
        secs: 3,
        ..IperfOpts::default()
    };
    let baseline = iperf3(&lab.office, vpc_ip(Family::V4), 5231, tcp_opts).unwrap();
    let f = flood(
        &lab.isp1,
        sources.clone(),
        dst,
        vec![Junk::Messages(valid)],
        rate,
        count,
        6,
    );
    let loaded = iperf3(&lab.office, vpc_ip(Family::V4), 5231, tcp_opts).unwrap();
    f.join().unwrap();
    let ratio = loaded.bits_per_second / baseline.bits_per_second;
    eprintln!(
        "legitimate TCP: baseline {:.2} Gbit/s, under the valid-mac1 flood {:.2} Gbit/s ({ratio:.2}x)",
        baseline.gbps(),
        loaded.gbps()
    );

    assert!(both_up(&pair), "tunnels not Up after the floods");
    // Bad mac1: every one counted (auth), none completes, and it costs what junk costs: the
    // difference per packet is far below one DH.
    let d_bad = delta(&bad.vpcgw);
    assert!(
        drop_count(&d_bad, "auth") >= bad.sent * 99 / 100,
        "{d_bad:?}"
    );
    assert_eq!(
        hs(&bad.vpcgw.0),
        hs(&bad.vpcgw.1),
        "a bad-mac1 initiation completed"
    );
    let per_packet_extra = (bad.cpu - junk.cpu) / bad.sent as f64;
    assert!(
        per_packet_extra < 0.2 * dh.as_secs_f64(),
        "a bad-mac1 initiation costs {:.1} us more than junk: DH-sized (one DH = {dh:?})",
        per_packet_extra * 1e6
    );
    // Valid mac1: the load window admits ~50/s to the DH (they fail: unknown static key, counted
    // as auth); the rest get cookie replies instead of a DH.
    let d_good = delta(&good.vpcgw);
    let dh_done = drop_count(&d_good, "auth");
    assert!(dh_done > 0, "no initiation reached the DH: {d_good:?}");
    assert!(
        (dh_done as f64) <= 50.0 * (3.0 + 2.0),
        "{dh_done} initiations reached the DH in 3 s: not bounded by the load window"
    );
    assert!(
        good.cpu - bad.cpu < 0.25 * all_dh,
        "valid-mac1 flood cost {:.2} s more CPU than the bad-mac1 one ({all_dh:.2} s = one DH each)",
        good.cpu - bad.cpu
    );
    assert_eq!(
        hs(&good.vpcgw.0),
        hs(&good.vpcgw.1),
        "a stranger completed a handshake"
    );
    assert_eq!(
        spoof.sent, 3000,
        "the spoofed flood could not be sent: {spoof:?}"
    );
    let n_cookies = drop_count(&cookies, "handshake");
    assert!(
        n_cookies >= spoof.sent / 4,
        "only {n_cookies} cookie replies for {} initiations at 20x the load threshold",
        spoof.sent
    );
    assert!(
        ratio >= 0.7,
        "legitimate TCP under the flood {:.2} Gbit/s < 0.7 x {:.2}",
        loaded.gbps(),
        baseline.gbps()
    );
    let grew = good.rss.1.max(bad.rss.1).saturating_sub(junk.rss.0);
    assert!(grew <= 16 * 1024, "vpcgw RSS grew {grew} KiB");
}
