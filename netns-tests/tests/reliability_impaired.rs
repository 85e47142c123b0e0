//! Impaired networks under a 1 ms probe stream and an iperf3 TCP stream (capped at
//! 50 Mbit/s so that any probe loss is the impairment's, not a full queue's), each impairment on
//! tunnel1's provider (`isp1`), with the docs/protocol.md default timers (dpd_interval 250 ms, dpd_timeout
//! 1 s; `TANDEM_DRILL_TIMERS=1` uses the drill timers 100 ms / 300 ms instead, which a loaded
//! machine can starve into a false failover that has nothing to do with the impairment):
//!
//! - random loss (nftables `numgen random`, cgw -> vpcgw): no false failover up to 5 %, probe
//!   loss <= configured loss + 1 point;
//! - duplication (the lab's WAN emulator, both directions): zero duplicate probes delivered, the
//!   copies counted as `replay` drops;
//! - corruption (a checksum-neutral corrupter, cgw -> vpcgw: two ciphertext words swapped, so the
//!   UDP checksum still holds and only the AEAD can tell): every corrupted packet counted as an
//!   `auth` drop at vpcgw, exactly, none delivered; the WAN emulator's single bit flips, which the
//!   receiver's UDP checksum drops before the daemon sees them, are in the full matrix;
//! - reordering (WAN emulator, with delay): zero replay drops.
//!
//! CI runs a short subset (one level of each, 6 s each). The full matrix — loss 1/5/20 %,
//! duplicate 1/10/50 %, corrupt 0.1/1 % (+ bit flips 1 %), two reorder profiles, 30 s each — is:
//!
//! ```sh
//! TANDEM_FULL_MATRIX=1 [TANDEM_DRILL_TIMERS=1] cargo test -p tandem-netns-tests --test reliability_impaired -- --nocapture --test-threads=1
//! ```
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod reliability_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reliability_common::*;
use tandem_netns_tests::impair::{Direction, NftImpairment};
use tandem_netns_tests::netns::Netns;
use tandem_netns_tests::probe::{ProbeReport, ProbeStream, REFLECT_PORT, Reflector};
use tandem_netns_tests::tandem::{TandemOpts, TandemPair};
use tandem_netns_tests::topo::{Family, Lab, vpc_ip};
use tandem_netns_tests::traffic::{Iperf3Client, Iperf3Server, IperfOpts};
use tandem_netns_tests::wanem::{Impair, WanEmulator};

const IPERF_PORT: u16 = 5241;

fn full() -> bool {
    std::env::var_os("TANDEM_FULL_MATRIX").is_some_and(|v| v != "0")
}

fn secs() -> u32 {
    if full() { 30 } else { 6 }
}

struct Rig {
    lab: Lab,
    pair: TandemPair,
    _refl: Reflector,
    _iperf: Iperf3Server,
}

fn rig() -> Rig {
    let lab = Lab::new().unwrap();
    let drill = std::env::var_os("TANDEM_DRILL_TIMERS").is_some_and(|v| v != "0");
    let opts = if drill {
        TandemOpts::default()
    } else {
        TandemOpts {
            dpd_interval: Duration::from_millis(250),
            dpd_timeout: Duration::from_secs(1),
            ..TandemOpts::default()
        }
    };
    let pair = start_pair(&lab, opts, "");
    let refl = Reflector::start(&lab.vpc, REFLECT_PORT).unwrap();
    let iperf = Iperf3Server::start(&lab.vpc, IPERF_PORT).unwrap();
    Rig {
        lab,
        pair,
        _refl: refl,
        _iperf: iperf,
    }
}

/// What one impaired run saw.
struct Run {
    probe: ProbeReport,
    tcp: Result<f64, String>,
    cgw_drops: BTreeMap<String, u64>,
    vpcgw_drops: BTreeMap<String, u64>,
    failovers: f64,
    left_tunnel1: usize,
    polls: usize,
    csum_errors: u64,
}

impl Run {
    fn loss_pct(&self) -> f64 {
        self.probe.lost as f64 * 100.0 / self.probe.sent.max(1) as f64
    }
    fn drops(&self, reason: &str) -> u64 {
        drop_count(&self.cgw_drops, reason) + drop_count(&self.vpcgw_drops, reason)
    }
    fn show(&self, what: &str) {
        eprintln!(
            "{what}: probes {} (loss {:.2} %); TCP {}; drops cgw {:?} vpcgw {:?}; failovers {}, {}/{} status polls off tunnel1 or not Up; UDP checksum errors {}",
            self.probe,
            self.loss_pct(),
            match &self.tcp {
                Ok(g) => format!("{:.0} Mbit/s", g * 1e3),
                Err(e) => format!("failed: {e}"),
            },
            nonzero(&self.cgw_drops),
            nonzero(&self.vpcgw_drops),
            self.failovers,
            self.left_tunnel1,
            self.polls,
            self.csum_errors
        );
    }
}

fn csum_errors(ns: &Netns) -> u64 {
    ns.snmp_counter("Udp", "InCsumErrors").unwrap()
}

/// Runs the probe and TCP streams for `secs()` while whatever impairment the caller holds is in
/// place, polling both daemons' status.
fn run(r: &Rig) -> Run {
    let (lab, pair) = (&r.lab, &r.pair);
    let fo = |ns| metric(&metrics(ns), "tandem_failovers_total", &[]);
    let (c0, v0) = (metrics(&lab.cgw), metrics(&lab.vpcgw));
    let fo0 = fo(&lab.cgw) + fo(&lab.vpcgw);
    let cs0 = csum_errors(&lab.cgw) + csum_errors(&lab.vpcgw);
    let target = SocketAddr::new(vpc_ip(Family::V4), REFLECT_PORT);
    let probe = ProbeStream::start(&lab.office, target).unwrap();
    let tcp = Iperf3Client::spawn(
        &lab.office,
        vpc_ip(Family::V4),
        IPERF_PORT,
        IperfOpts {
            secs: secs(),
            bitrate_mbps: Some(50),
            ..IperfOpts::default()
        },
    )
    .unwrap();
    let t0 = Instant::now();
    let (mut polls, mut off) = (0, 0);
    while t0.elapsed() < Duration::from_secs(u64::from(secs())) {
        polls += 1;
        let ok = matches!(
            (pair.cgw.status(), pair.vpcgw.status()),
            (Ok(a), Ok(b)) if a.both_up() && b.both_up()
                && a.active().as_deref() == Some("tunnel1")
                && b.active().as_deref() == Some("tunnel1")
        );
        if !ok {
            off += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let tcp = tcp.finish().map(|t| t.gbps()).map_err(|e| e.to_string());
    let probe = probe.stop().unwrap();
    let (c1, v1) = (metrics(&lab.cgw), metrics(&lab.vpcgw));
    Run {
        probe,
        tcp,
        cgw_drops: drop_delta(&drops(&c0), &drops(&c1)),
        vpcgw_drops: drop_delta(&drops(&v0), &drops(&v1)),
        failovers: fo(&lab.cgw) + fo(&lab.vpcgw) - fo0,
        left_tunnel1: off,
        polls,
        csum_errors: csum_errors(&lab.cgw) + csum_errors(&lab.vpcgw) - cs0,
    }
}

#[test]
fn random_loss_up_to_5_percent_causes_no_false_failover_and_probe_loss_stays_within_one_point() {
    if !tandem_netns_tests::can_run_as_root("impaired: loss") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let r = rig();
    let levels: &[u8] = if full() { &[1, 5, 20] } else { &[5] };
    for &pct in levels {
        let imp = NftImpairment::random_loss(&r.lab.isp1, "cgw", Direction::Ingress, pct).unwrap();
        let out = run(&r);
        drop(imp);
        out.show(&format!(
            "nft random loss {pct} % cgw -> vpcgw, {} s",
            secs()
        ));
        assert!(
            out.loss_pct() <= f64::from(pct) + 1.0,
            "probe loss {:.2} % > {pct} % + 1 point: {}",
            out.loss_pct(),
            out.probe
        );
        assert!(
            out.probe.lost > 0,
            "the loss was not applied: {}",
            out.probe
        );
        if pct <= 5 {
            assert_eq!(out.failovers, 0.0, "false failover at {pct} % loss");
            assert_eq!(
                out.left_tunnel1, 0,
                "a tunnel left Up / active at {pct} % loss"
            );
        }
        r.pair.wait_both_up(Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn duplicated_packets_are_never_delivered_twice() {
    if !tandem_netns_tests::can_run_as_root("impaired: duplication") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let r = rig();
    let levels: &[u8] = if full() { &[1, 10, 50] } else { &[10] };
    for &pct in levels {
        let emu = WanEmulator::start(
            &r.lab.isp1,
            &["cgw", "vpcgw"],
            Impair {
                dup_pct: pct,
                ..Impair::default()
            },
        )
        .unwrap();
        let out = run(&r);
        drop(emu);
        out.show(&format!("WAN emulator duplicate {pct} %, {} s", secs()));
        assert_eq!(
            out.probe.duplicates, 0,
            "duplicates delivered: {}",
            out.probe
        );
        // Probes and echoes both cross isp1: ~2 x pct % of the probes were duplicated.
        let expect = out.probe.sent as f64 * 2.0 * f64::from(pct) / 100.0;
        assert!(
            out.drops("replay") as f64 >= 0.5 * expect,
            "{} replay drops, ~{expect:.0} duplicated probe packets expected",
            out.drops("replay")
        );
        assert!(out.loss_pct() <= 1.0, "probe loss {:.2} %", out.loss_pct());
        assert_eq!(out.failovers, 0.0);
    }
}

#[test]
fn corrupted_packets_are_each_counted_as_an_auth_drop_and_never_delivered() {
    if !tandem_netns_tests::can_run_as_root("impaired: corruption") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let r = rig();
    // One in `every` ESP data packets: 1 % (and 0.1 % in the full matrix).
    let levels: &[u64] = if full() { &[1000, 100] } else { &[100] };
    for &every in levels {
        let c = Corruptor::start(&r.lab.isp1, "cgw", every);
        let out = run(&r);
        // Let the last corrupted packets land before counting.
        std::thread::sleep(Duration::from_millis(100));
        let (corrupted, forwarded) = (c.corrupted(), c.forwarded());
        drop(c);
        out.show(&format!(
            "corrupt {:.1} % (checksum-neutral, cgw -> vpcgw; {corrupted} of {forwarded} packets), {} s",
            100.0 / every as f64,
            secs()
        ));
        assert!(corrupted > 0);
        assert_eq!(
            out.csum_errors, 0,
            "the corruption was meant to pass the UDP checksum"
        );
        let auth = drop_count(&out.vpcgw_drops, "auth");
        assert_eq!(
            auth, corrupted,
            "every corrupted packet must be one auth drop: {:?}",
            out.vpcgw_drops
        );
        assert_eq!(out.probe.duplicates, 0);
        // A corrupted probe is lost, not delivered: loss ~ the corrupted share of probes.
        assert!(
            out.loss_pct() <= 100.0 / every as f64 + 1.0,
            "probe loss {:.2} %",
            out.loss_pct()
        );
        assert_eq!(out.failovers, 0.0, "false failover under corruption");
    }
    if full() {
        let emu = WanEmulator::start(
            &r.lab.isp1,
            &["cgw", "vpcgw"],
            Impair {
                corrupt_pct: 1,
                ..Impair::default()
            },
        )
        .unwrap();
        let out = run(&r);
        drop(emu);
        out.show(&format!(
            "WAN emulator bit flips 1 % both ways, {} s",
            secs()
        ));
        assert!(
            out.csum_errors + out.drops("auth") + out.drops("malformed") > 0,
            "no corruption seen"
        );
        assert_eq!(out.probe.duplicates, 0);
        assert!(
            out.loss_pct() <= 2.0 + 1.0,
            "probe loss {:.2} %",
            out.loss_pct()
        );
    }
}

#[test]
fn reordered_packets_cause_no_replay_drops() {
    if !tandem_netns_tests::can_run_as_root("impaired: reorder") {
        return;
    }
    let _g = tandem_netns_tests::serial();
    let r = rig();
    let mut profiles = vec![(
        "delay 2 ms, 10 % held back 5 ms",
        Impair {
            delay: Duration::from_millis(2),
            reorder_pct: 10,
            reorder_extra: Duration::from_millis(5),
            ..Impair::default()
        },
    )];
    if full() {
        profiles.push((
            "delay 10 ms, jitter 10 ms, 25 % held back 30 ms",
            Impair {
                delay: Duration::from_millis(10),
                jitter: Duration::from_millis(10),
                reorder_pct: 25,
                reorder_extra: Duration::from_millis(30),
                ..Impair::default()
            },
        ));
    }
    for (what, imp) in profiles {
        let emu = WanEmulator::start(&r.lab.isp1, &["cgw", "vpcgw"], imp).unwrap();
        let out = run(&r);
        drop(emu);
        out.show(&format!("WAN emulator reorder ({what}), {} s", secs()));
        assert!(
            out.probe.reordered > 0,
            "nothing was reordered: {}",
            out.probe
        );
        assert_eq!(out.drops("replay"), 0, "reordering caused replay drops");
        assert!(out.loss_pct() <= 1.0, "probe loss {:.2} %", out.loss_pct());
        assert_eq!(out.failovers, 0.0);
    }
}
