//! BGP over route-based tunnels (docs/routing.md): FRR (zebra + bgpd from the distribution) in
//! `cgw` (AS 65000) and `vpcgw` (AS 64512), one eBGP session per tunnel over its inside /30 with
//! AWS's timers (keepalive 10 s, hold 30 s), each side announcing its LAN.
//!
//! - active-standby by AS-path prepend on tunnel2: traffic on tunnel1; a silent blackhole of
//!   isp1 drops tunnel1's carrier, FRR tears the session down at once (fast-external-failover)
//!   and the traffic is on tunnel2 within `dpd_timeout` + one `dpd_interval` + 200 ms, with the
//!   drill timers and with the defaults; heal: the session comes back and traffic fails back
//!   with no probe lost; `tandem drill` with BGP in the loop;
//! - the comparison: the same cut when the routing daemon ignores the link state (zebra
//!   `no link-detect`), so only the BGP hold timer ends the session (a 3 s hold here, so CI
//!   does not wait AWS's 30 s; `TANDEM_LAB_BGP_HOLD=30` measures that once);
//! - active-active ECMP (`fib_multipath_hash_policy = 1`): a cut moves only the dead tunnel's
//!   flows.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use tandem_netns_tests::impair::{Direction, NftImpairment};
use tandem_netns_tests::probe::{ProbeStream, Reflector};
use tandem_netns_tests::routed::{
    BgpPair, BgpShape, FlowCounters, Monitor, ifname, wait_carrier, wait_route_dev,
};
use tandem_netns_tests::tandem::{Side, TandemOpts};
use tandem_netns_tests::topo::{Family, Lab, office_ip, office_net, vpc_ip, vpc_net};

const REFLECT_PORT: u16 = 7100;
/// AWS's BGP timers for its VPN tunnels.
const AWS_KEEPALIVE: Duration = Duration::from_secs(10);
const AWS_HOLD: Duration = Duration::from_secs(30);
/// What the routing daemon and the kernel may add to tandem's detection: zebra and bgpd
/// processing the link event, the withdrawal crossing tunnel2, zebra replacing the route.
const ROUTING_SLACK: Duration = Duration::from_millis(200);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn skip() -> bool {
    if !tandem_netns_tests::can_run_as_root("BGP over route-based tunnels") {
        return true;
    }
    if !tandem_netns_tests::frr::installed() && std::env::var_os("CI").is_none() {
        eprintln!("SKIPPED BGP lab: FRR is not installed (apt-get install frr)");
        return true;
    }
    false
}

/// Both far LANs are routed through tunnel `n`'s interface on both sides.
fn wait_routes_on(lab: &Lab, n: u8, timeout: Duration) {
    wait_route_dev(&lab.cgw, vpc_ip(Family::V4), &ifname(n), timeout).unwrap();
    wait_route_dev(&lab.vpcgw, office_ip(Family::V4), &ifname(n), timeout).unwrap();
}

/// Packets sent on each tunnel by cgw over `window` (ESP datagrams, keepalives included).
fn tx_delta(bgp: &BgpPair, window: Duration) -> (f64, f64) {
    let tx = || {
        let st = bgp.tandem.cgw.status().unwrap();
        (
            st.num("tunnel1", "tx_packets").unwrap(),
            st.num("tunnel2", "tx_packets").unwrap(),
        )
    };
    let a = tx();
    sleep(window);
    let b = tx();
    (b.0 - a.0, b.1 - a.1)
}

/// What one cut of isp1 measured.
#[derive(Debug)]
struct Cut {
    /// Cut -> tunnel1's carrier off on cgw / vpcgw.
    carrier_off: [Duration; 2],
    /// Cut -> the far LAN routed through tunnel2 on cgw / vpcgw (the routing daemon moved it).
    rerouted: [Duration; 2],
    /// Largest probe gap office -> vpc -> office.
    gap_ms: f64,
    lost: u64,
}

/// Cuts isp1 silently (both directions) under a 1 ms probe stream, waits until both sides
/// route through tunnel2, holds the cut `hold`, and returns the figures and the cut.
fn cut_isp1<'a>(
    lab: &'a Lab,
    hold: Duration,
    reroute_timeout: Duration,
) -> (Cut, NftImpairment<'a>) {
    let probe = ProbeStream::start(
        &lab.office,
        SocketAddr::new(vpc_ip(Family::V4), REFLECT_PORT),
    )
    .unwrap();
    sleep(ms(500));
    let off = [&lab.cgw, &lab.vpcgw].map(|ns| Monitor::carrier_off(ns, &ifname(1)).unwrap());
    let moved = [
        Monitor::route_via(&lab.cgw, vpc_net(Family::V4), &ifname(2)).unwrap(),
        Monitor::route_via(&lab.vpcgw, office_net(Family::V4), &ifname(2)).unwrap(),
    ];
    sleep(ms(200));
    let t0 = Instant::now();
    let cut = NftImpairment::blackhole(&lab.isp1, "cgw", Direction::Both).unwrap();
    let rerouted = moved.map(|m| {
        m.wait(t0, reroute_timeout)
            .map(|(d, _)| d)
            .expect("the far LAN never moved to tunnel2")
    });
    // A carrier watch that saw nothing (the link did go down, just not reported) is a failure
    // of the test's own plumbing: report it as such rather than as 0.
    let carrier_off = off.map(|m| {
        m.wait(t0, ms(100))
            .map(|(d, _)| d)
            .expect("tunnel1's carrier-off was never reported")
    });
    let elapsed = t0.elapsed();
    if elapsed < hold {
        sleep(hold - elapsed);
    }
    let report = probe.stop().unwrap();
    eprintln!("probes: {report}");
    (
        Cut {
            carrier_off,
            rerouted,
            gap_ms: report.largest_gap_ms,
            lost: report.lost,
        },
        cut,
    )
}

/// Active-standby with `opts`: traffic on tunnel1, a cut moves it to tunnel2 within the bound
/// (BGP sessions over tunnel1 down long before the hold time), heal fails back losing nothing.
fn active_standby(opts: TandemOpts, with_drill: bool) {
    let _g = tandem_netns_tests::serial();
    tandem_netns_tests::helper::set_helper(env!("CARGO_BIN_EXE_probe"), &[]);
    let lab = Lab::new().unwrap();
    let bound = opts.dpd_timeout + opts.dpd_interval + ROUTING_SLACK;
    let bgp = BgpPair::start(
        &lab,
        opts.clone(),
        BgpShape::Prepend(2),
        AWS_KEEPALIVE,
        AWS_HOLD,
        "",
    )
    .unwrap();
    // Steady state: both far LANs via tunnel1 (tunnel2's announcements carry the prepend).
    wait_routes_on(&lab, 1, Duration::from_secs(10));
    let _reflector = Reflector::start(&lab.vpc, REFLECT_PORT).unwrap();
    let probe = ProbeStream::start(
        &lab.office,
        SocketAddr::new(vpc_ip(Family::V4), REFLECT_PORT),
    )
    .unwrap();
    sleep(ms(200));
    let (t1, t2) = tx_delta(&bgp, ms(500));
    drop(probe);
    // ~500 probes and echoes on tunnel1; tunnel2 carries keepalives (1-2 per dpd_interval) and
    // BGP keepalives only.
    assert!(t1 >= 400.0 && t2 < 100.0, "tx tunnel1 {t1}, tunnel2 {t2}");

    // The cut.
    let (cut, isp1) = cut_isp1(&lab, ms(1500), Duration::from_secs(5));
    let sessions: Vec<String> = [Side::Cgw, Side::Vpcgw]
        .iter()
        .map(|&s| bgp.session(s, 1).unwrap())
        .collect();
    eprintln!(
        "isp1 cut (dpd {:?}/{:?}): carrier off {:?}, far LAN via tunnel2 {:?}, routing convergence {:?}, probe gap {:.1} ms, lost {}, bound {bound:?}; tunnel1 sessions 1.5 s after the cut: {sessions:?} (hold {AWS_HOLD:?})",
        opts.dpd_interval,
        opts.dpd_timeout,
        cut.carrier_off,
        cut.rerouted,
        [0, 1].map(|i| cut.rerouted[i].saturating_sub(cut.carrier_off[i])),
        cut.gap_ms,
        cut.lost
    );
    for s in &sessions {
        assert_ne!(s, "Established", "tunnel1's session outlived its carrier");
    }
    assert!(
        cut.gap_ms <= bound.as_secs_f64() * 1e3,
        "traffic gap {:.1} ms > {bound:?}: {cut:?}",
        cut.gap_ms
    );
    assert_eq!(
        bgp.session(Side::Cgw, 2).unwrap(),
        "Established",
        "tunnel2's session"
    );

    // Heal: tunnel1 Up, its sessions back, traffic back on tunnel1, no probe lost.
    let probe = ProbeStream::start(
        &lab.office,
        SocketAddr::new(vpc_ip(Family::V4), REFLECT_PORT),
    )
    .unwrap();
    sleep(ms(300));
    let t0 = Instant::now();
    isp1.heal().unwrap();
    bgp.tandem.wait_both_up(Duration::from_secs(10)).unwrap();
    bgp.wait_established(Duration::from_secs(15)).unwrap();
    wait_routes_on(&lab, 1, Duration::from_secs(5));
    let back = t0.elapsed();
    sleep(ms(200));
    let (t1, t2) = tx_delta(&bgp, ms(300));
    let report = probe.stop().unwrap();
    eprintln!("heal: traffic back on tunnel1 after {back:?}; probes {report}");
    assert_eq!(report.lost, 0, "failback lost probes: {report}");
    assert!(
        t1 >= 200.0 && t2 < 100.0,
        "after failback: tx tunnel1 {t1}, tunnel2 {t2}"
    );

    if !with_drill {
        return;
    }
    // `tandem drill` with BGP in the loop: the drill silences tunnel1 on cgw, both carriers go
    // off, BGP moves the traffic, the drill restores the tunnel and BGP moves it back.
    let probe = ProbeStream::start(
        &lab.office,
        SocketAddr::new(vpc_ip(Family::V4), REFLECT_PORT),
    )
    .unwrap();
    sleep(ms(300));
    let out = bgp.tandem.cgw.drill(Duration::from_secs(2), false).unwrap();
    eprintln!("tandem drill:\n{out}");
    bgp.wait_established(Duration::from_secs(15)).unwrap();
    wait_routes_on(&lab, 1, Duration::from_secs(5));
    sleep(ms(300));
    let report = probe.stop().unwrap();
    eprintln!("drill: office probes {report}");
    assert!(out.contains("traffic gap"), "{out}");
    // The report times this host's routing daemon: carrier off -> its first route change.
    let routing_ms: f64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("routing "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no routing convergence in the drill report:\n{out}"));
    assert!(
        routing_ms <= ROUTING_SLACK.as_secs_f64() * 1e3,
        "routing convergence {routing_ms} ms > {ROUTING_SLACK:?}:\n{out}"
    );
    assert!(
        report.largest_gap_ms <= bound.as_secs_f64() * 1e3,
        "drill with BGP: gap {:.1} ms > {bound:?}: {report}",
        report.largest_gap_ms
    );
    wait_carrier(&lab.cgw, &ifname(1), "1", Duration::from_secs(1)).unwrap();
}

#[test]
fn bgp_active_standby_moves_on_carrier_loss_within_the_drill_bound_and_fails_back_losslessly() {
    if skip() {
        return;
    }
    active_standby(TandemOpts::default(), true);
}

#[test]
fn bgp_active_standby_with_default_timers_moves_within_dpd_timeout_plus_one_interval() {
    if skip() {
        return;
    }
    active_standby(
        TandemOpts {
            dpd_interval: ms(250),
            dpd_timeout: Duration::from_secs(1),
            ..TandemOpts::default()
        },
        false,
    );
}

#[test]
fn bgp_hold_timer_alone_is_what_a_routing_daemon_blind_to_the_carrier_waits_for() {
    if skip() {
        return;
    }
    let _g = tandem_netns_tests::serial();
    tandem_netns_tests::helper::set_helper(env!("CARGO_BIN_EXE_probe"), &[]);
    let hold = std::env::var("TANDEM_LAB_BGP_HOLD")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(3), Duration::from_secs);
    let keepalive = (hold / 3).max(Duration::from_secs(1));
    let lab = Lab::new().unwrap();
    let opts = TandemOpts::default();
    // zebra ignores the tunnels' link state: only BGP's own hold timer ends a session, as with
    // a tunnel whose interface stays up while the tunnel is dead.
    let blind = [1, 2]
        .map(|n| format!("interface {}\n no link-detect\n", ifname(n)))
        .concat();
    let _bgp = BgpPair::start(
        &lab,
        opts.clone(),
        BgpShape::Prepend(2),
        keepalive,
        hold,
        &blind,
    )
    .unwrap();
    wait_routes_on(&lab, 1, Duration::from_secs(10));
    let _reflector = Reflector::start(&lab.vpc, REFLECT_PORT).unwrap();
    let (cut, _isp1) = cut_isp1(&lab, ms(300), hold + Duration::from_secs(5));
    let with_carrier = opts.dpd_timeout + opts.dpd_interval + ROUTING_SLACK;
    eprintln!(
        "isp1 cut, BGP hold timer alone (keepalive {keepalive:?}, hold {hold:?}): far LAN via tunnel2 after {:?}, probe gap {:.1} ms, lost {}; with carrier following the bound is {with_carrier:?}",
        cut.rerouted, cut.gap_ms, cut.lost
    );
    // The session ended on its hold timer: after at least hold - keepalive (the last keepalive
    // may have come that much before the cut), not at the carrier loss.
    let floor = hold - keepalive;
    assert!(
        cut.gap_ms >= floor.as_secs_f64() * 1e3,
        "gap {:.1} ms < {floor:?}: something other than the hold timer moved the traffic",
        cut.gap_ms
    );
    assert!(
        cut.gap_ms <= (hold + Duration::from_secs(1)).as_secs_f64() * 1e3,
        "gap {:.1} ms > hold {hold:?} + 1 s",
        cut.gap_ms
    );
}

#[test]
fn bgp_ecmp_cut_moves_only_the_dead_tunnels_flows() {
    if skip() {
        return;
    }
    let _g = tandem_netns_tests::serial();
    tandem_netns_tests::helper::set_helper(env!("CARGO_BIN_EXE_probe"), &[]);
    let lab = Lab::new().unwrap();
    // Hash on ports too (L4), so the flows below spread over both tunnels.
    for ns in [&lab.cgw, &lab.vpcgw] {
        ns.sysctl("net.ipv4.fib_multipath_hash_policy", "1")
            .unwrap();
    }
    let opts = TandemOpts::default();
    let bound = opts.dpd_timeout + opts.dpd_interval + ROUTING_SLACK;
    let min_outage = opts.dpd_timeout / 2;
    let _bgp = BgpPair::start(&lab, opts, BgpShape::Ecmp, AWS_KEEPALIVE, AWS_HOLD, "").unwrap();
    // Both paths installed on both sides.
    let start = Instant::now();
    loop {
        let a = lab
            .cgw
            .ipw(&format!("route show {}", vpc_net(Family::V4)))
            .unwrap();
        let b = lab
            .vpcgw
            .ipw(&format!("route show {}", office_net(Family::V4)))
            .unwrap();
        if [&a, &b]
            .iter()
            .all(|r| r.contains(&ifname(1)) && r.contains(&ifname(2)))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no ECMP:\n{a}\n{b}"
        );
        sleep(ms(100));
    }
    // Flows (source ports) from office, classified by where the kernels really forward them,
    // both directions (nftables counters): some entirely on tunnel2 (they must not notice the
    // cut), some that touch tunnel1 (they must move). The hash may use each sending socket's
    // random flow hash, so a batch with no flow of one kind is replaced by fresh sockets.
    let vpc = vpc_ip(Family::V4);
    let _reflector = Reflector::start(&lab.vpc, REFLECT_PORT).unwrap();
    let target = SocketAddr::new(vpc, REFLECT_PORT);
    let devs = [ifname(1), ifname(2)];
    let mut batch = 0u16;
    let (streams, steady, moving) = loop {
        let ports: Vec<u16> = (0..12).map(|i| 41000 + 100 * batch + i).collect();
        let there = FlowCounters::install(&lab.cgw, "flows", "sport", &ports, &devs).unwrap();
        let back = FlowCounters::install(&lab.vpcgw, "flows", "dport", &ports, &devs).unwrap();
        let streams: Vec<(u16, ProbeStream)> = ports
            .iter()
            .map(|&p| (p, ProbeStream::start_from(&lab.office, target, p).unwrap()))
            .collect();
        sleep(ms(500));
        let (a, b) = (there.read().unwrap(), back.read().unwrap());
        let on = |p: u16, n: u8| a[&(p, ifname(n))] + b[&(p, ifname(n))];
        let steady: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|&p| on(p, 1) == 0 && on(p, 2) > 0)
            .collect();
        let moving: Vec<u16> = ports.iter().copied().filter(|&p| on(p, 1) > 0).collect();
        if !steady.is_empty() && !moving.is_empty() {
            break (streams, steady, moving);
        }
        batch += 1;
        assert!(
            batch < 4,
            "flows not spread over the tunnels: {steady:?} on tunnel2 only, {moving:?} touching tunnel1"
        );
    };
    let t0 = Instant::now();
    let _isp1 = NftImpairment::blackhole(&lab.isp1, "cgw", Direction::Both).unwrap();
    // Until tunnel1's path is withdrawn on both sides.
    loop {
        let a = lab
            .cgw
            .ipw(&format!("route show {}", vpc_net(Family::V4)))
            .unwrap();
        let b = lab
            .vpcgw
            .ipw(&format!("route show {}", office_net(Family::V4)))
            .unwrap();
        if [&a, &b].iter().all(|r| !r.contains(&ifname(1))) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "tunnel1 still in:\n{a}\n{b}"
        );
        sleep(ms(10));
    }
    let rerouted = t0.elapsed();
    sleep(ms(1000));
    let mut lines = Vec::new();
    for (port, s) in streams {
        let r = s.stop().unwrap();
        lines.push(format!("  port {port}: {r}"));
        if steady.contains(&port) {
            // No outage: the longest gap stays far below the dead tunnel's (>= dpd_timeout / 2).
            // Not `lost == 0`: on a loaded 2-core lab a stray probe may drop anywhere (seen once
            // with the load average at 14); a flow that moved would lose ~dpd_timeout of them.
            assert!(
                r.largest_gap_ms < 100.0 && r.lost < 20,
                "flow {port} on tunnel2 saw an outage: {r}"
            );
        } else {
            // It waited for tunnel1 to be declared Down (dpd_timeout), then moved.
            assert!(
                r.largest_gap_ms >= min_outage.as_secs_f64() * 1e3,
                "flow {port} touched tunnel1 yet saw no outage: {r}"
            );
            assert!(
                r.largest_gap_ms <= bound.as_secs_f64() * 1e3,
                "flow {port}: gap {:.1} ms > {bound:?}: {r}",
                r.largest_gap_ms
            );
        }
    }
    eprintln!(
        "ECMP cut: both sides on tunnel2 only after {rerouted:?}; tunnel2-only flows {steady:?}, flows touching tunnel1 {moving:?}\n{}",
        lines.join("\n")
    );
}
