//! `lab`: the namespace lab for people.
//!
//! - `lab demo` — builds the netns-tests/README.md lab, starts tandem on both gateways, runs traffic, a
//!   failover drill (silent blackhole of isp1 under TCP and a 1 ms probe stream), failback and a
//!   planned failover, prints a report, and tears everything down. `--report FILE.html` also
//!   writes the drill's report page (`tandem drill --report`, docs/cli.md).
//! - `lab bench [--secs N] [--json FILE]` — plain routing (the ceiling) vs tandem (and boringtun /
//!   wireguard-go when installed) on the same lab: TCP 1/4 streams/reverse, UDP 1400 B and 64 B
//!   received pps, the same over IPv6 inside (TCP 1 stream/reverse, UDP in packets of the IPv4
//!   1400 B datagram's size) with each IPv6/IPv4 ratio (setups that carry IPv6: plain routing
//!   and tandem), ping RTT, daemon CPU seconds per GB, daemon RSS; a table with ratios, and JSON.
//!   `boringtun` runs with one thread (the reference figure); `boringtun-tN` with N;
//!   `tandem:K=V;K2=V2` runs tandem with that environment (same-run A/B of a tuning knob).
//!   `--pings N` sets the ping count (50); `--ping-only` skips iperf3 (latency A/B).
//! - `lab budget [--profiles default,drill,fast] [--duration SECS] [--cuts N] [--loss PCT]
//!   [--delay-ms D] [--jitter-ms J] [--idle-secs S] [--json FILE] [--out DIR]` — the false-failover budget,
//!   per timer profile, on a fresh lab whose two ISPs run the WAN emulator (delay, jitter and
//!   random loss, both ways): the daemons' idle CPU per tunnel; then `--duration` seconds of
//!   saturating TCP both ways, counting false Down events; then `--cuts` silent blackholes of
//!   isp1 under the same load, each giving the detection time (cut -> cgw's log says it
//!   switched) and the 1 ms probe stream's largest gap; min/median/p99/max of both.
//! - `lab scale [--n 10,100,500] [--out DIR] [--idle-secs S] [--compare A=BIN,B=BIN] [--sender-pays]
//!   [--dpd INTERVAL_MS/TIMEOUT_MS,...]` — the head-end at scale (`--compare`: each N against
//!   each hub binary, in turn, in one run; `--dpd`: each N at each pair of hub and branch
//!   timers, default 250/1000, labelled with them; `us/keepalive` in the table is the idle CPU
//!   per keepalive datagram the hub sends or receives, from the timers' rate): one
//!   `tandem run` hub, N emulated branches (two tunnels each, real engines) on one port, one run
//!   per N: time to all Up, handshake throughput, RSS, idle CPU, `status --json` latency and
//!   size, detection of a silenced tunnel, a reload of ±min(100, N/2) branches under probes.
//!   Writes `DIR/scale.txt` (table), `DIR/scale.json`, `DIR/scale.svg` (cost against N).
//!   The branch namespace receives the hub's datagrams in a NAPI kernel thread; with
//!   `--sender-pays` the veth delivers them inside the hub's send calls, charged to its CPU.
//! - `lab fastpath [--secs N] [--pings N] [--rounds R] [--json FILE] [--compare
//!   LABEL=[BIN][+K=V;K=V],...] [--lan-gro] [--udp-buffer BYTES]` — the data-path targets in
//!   one run: per round, plain routing then each tandem build (default: the one next to `lab`),
//!   UDP 1400 B full-rate received pps (iperf3 sockets with 4 MiB buffers unless
//!   `--udp-buffer`, `0` = the system default), one TCP stream, ping median/p99 (`--pings`, 2 ms
//!   apart); each as a ratio (delta for ping) to the same round's plain routing; every run and
//!   the median over rounds (see `fastpath.rs`). `--lan-gro`: cgw's LAN interface coalesces
//!   flows before forwarding (`rx-udp-gro-forwarding`, threaded NAPI), for both plain routing
//!   and tandem.
//!
//! Needs root. Finds `tandem` next to itself (build both with
//! `cargo build --release -p tandem -p tandem-netns-tests`) or in `$TANDEM_BIN`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "lab/fastpath.rs"]
mod fastpath;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tandem_netns_tests::drill::{DrillRig, TcpLoad, cut_isp1, gap_bound};
use tandem_netns_tests::impair::Direction;
use tandem_netns_tests::netns::namespaces_with_prefix;
use tandem_netns_tests::report::{Progress, Table};
use tandem_netns_tests::tandem::{Daemon, TandemOpts, TandemPair, tandem_bin};
use tandem_netns_tests::topo::{Family, Isp, Lab, vpc_ip};
use tandem_netns_tests::traffic::{Iperf3Server, IperfOpts, IperfResult, iperf3, ping};
use tandem_netns_tests::{Error, can_run_as_root};

/// TCP rate during the planned move. A saturating TCP stream finds its rate by filling the
/// bottleneck queue until packets drop, which would drop probes whether or not the tunnel moves;
/// a capped stream keeps the queue empty, so a lost probe is the move's fault.
const PLANNED_MOVE_TCP_MBPS: u32 = 50;

const USAGE: &str = "usage: lab demo [--report FILE.html] | lab bench [--secs N] [--json FILE] [--setups plain,tandem[:K=V;..],boringtun[-tN],wggo] [--pings N] [--ping-only] | lab budget [--profiles default,drill,fast] [--duration SECS] [--cuts N] [--loss PCT] [--delay-ms D] [--jitter-ms J] [--idle-secs S] [--json FILE] [--out DIR] | lab scale [--n 10,100,500] [--out DIR] [--idle-secs S] [--compare LABEL=TANDEM,LABEL=TANDEM] [--sender-pays] [--dpd INTERVAL_MS/TIMEOUT_MS,...] | lab fastpath [--secs N] [--pings N] [--rounds R] [--json FILE] [--compare LABEL=[BIN][+K=V;K=V],...] [--lan-gro] [--udp-buffer BYTES]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Ok(me) = std::env::current_exe() {
        tandem_netns_tests::helper::set_helper(me, &["helper"]);
    }
    let result = match args.first().map(String::as_str) {
        Some("helper") => {
            tandem_netns_tests::helper::helper_main(&args[1..]).map_err(|e| e.to_string())
        }
        Some("demo") => demo(&args[1..]).map_err(|e| e.to_string()),
        Some("bench") => bench(&args[1..]).map_err(|e| e.to_string()),
        Some("budget") => budget::run(&args[1..]).map_err(|e| e.to_string()),
        Some("scale") => scale(&args[1..]).map_err(|e| e.to_string()),
        Some("fastpath") => fastpath::run(&args[1..]).map_err(|e| e.to_string()),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab: {e}");
            ExitCode::FAILURE
        }
    }
}

fn preflight() -> Result<PathBuf, Error> {
    if !can_run_as_root("lab") {
        return Err(Error::Tandem(
            "the lab needs root (network namespaces, TUN devices, nftables): run it with sudo"
                .into(),
        ));
    }
    for tool in ["ip", "nft", "iperf3", "ping"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(Error::Tandem(format!(
                "`{tool}` is not installed: apt-get install -y iproute2 nftables iperf3 iputils-ping"
            )));
        }
    }
    tandem_bin()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

const TOPOLOGY: &str = concat!(
    "  office ---- cgw ====== isp1 (192.0.2.0/24, 2001:db8:1::/64) ====== vpcgw ---- vpc\n",
    " 10.10.0.10 (tandem) \\                                          / (tandem) 10.20.0.10\n",
    "                      == isp2 (198.51.100.0/24, 2001:db8:2::/64) ==",
);

fn demo(args: &[String]) -> Result<(), Error> {
    let page = match args {
        [] => None,
        [flag, file] if flag == "--report" => Some(
            std::path::absolute(file).map_err(|e| Error::Parse(format!("--report {file}: {e}")))?,
        ),
        _ => return Err(Error::Parse(USAGE.to_string())),
    };
    let bin = preflight()?;
    println!(
        "tandem namespace lab demo (tandem binary: {})\n",
        bin.display()
    );
    println!("{TOPOLOGY}\n");
    let t_all = Instant::now();
    let lab = Progress::run(
        "[1/7] build the lab (7 namespaces, veths, routes)",
        Lab::new,
    )?;
    let prefix = lab.prefix().to_string();
    let opts = TandemOpts::default();
    let p = Progress::step("[2/7] keys, PSKs, configs; start tandem on cgw and vpcgw");
    let started = Instant::now();
    let pair = TandemPair::start(&lab, opts.clone())?;
    p.done(&format!(
        "both tunnels Up after {}",
        fmt_ms(started.elapsed())
    ));
    println!("\n{}", indent(&pair.cgw.status_text()?));

    // Traffic.
    let _srv = Iperf3Server::start(&lab.vpc, 5201)?;
    let mut traffic = Table::new(
        "Traffic office -> vpc through the tunnels",
        &[
            "inner",
            "ping avg",
            "ping max",
            "TCP (3 s)",
            "TCP reverse (3 s)",
        ],
    );
    let mut figures = BTreeMap::new();
    for f in Family::BOTH {
        let label = format!(
            "[3/7] traffic over {}: ping x20, iperf3 TCP both ways",
            f.label()
        );
        let (pr, tcp, rev) = Progress::run(&label, || -> Result<_, Error> {
            let pr = ping(&lab.office, vpc_ip(f), 20, ms(20))?;
            let o = IperfOpts {
                secs: 3,
                ..IperfOpts::default()
            };
            let tcp = iperf3(&lab.office, vpc_ip(f), 5201, o)?;
            let rev = iperf3(
                &lab.office,
                vpc_ip(f),
                5201,
                IperfOpts { reverse: true, ..o },
            )?;
            Ok((pr, tcp, rev))
        })?;
        traffic.row(&[
            f.label().to_string(),
            format!("{:.3} ms", pr.rtt_avg_ms),
            format!("{:.3} ms", pr.rtt_max_ms),
            format!("{:.2} Gbit/s", tcp.gbps()),
            format!("{:.2} Gbit/s", rev.gbps()),
        ]);
        figures.insert(f, (pr, tcp));
    }
    println!("\n{}", traffic.render());

    // The drill.
    let rig = DrillRig::new(&lab, Family::V4)?;
    let bound = gap_bound(&pair);
    let mut held = None;
    let cut = Progress::run(
        "[4/7] drill: silent blackhole of isp1 under TCP + 1 ms probes",
        || {
            rig.run(&lab, TcpLoad::Saturating(3), ms(500), ms(300), || {
                let (bh, times) = cut_isp1(&lab, &pair, Direction::Both, ms(1500))?;
                held = Some(bh);
                Ok(times)
            })
        },
    )?;
    let failback = Progress::run("[5/7] isp1 heals: failback after the hold-down", || {
        rig.run(&lab, TcpLoad::None, ms(300), ms(300), || {
            let healed = Instant::now();
            if let Some(bh) = held.take() {
                bh.heal()?;
            }
            pair.wait_until(Duration::from_secs(10), "failback to tunnel1", |a, b| {
                a.active().as_deref() == Some("tunnel1") && b.active().as_deref() == Some("tunnel1")
            })?;
            Ok(healed.elapsed())
        })
    })?;
    let planned = Progress::run(
        "[6/7] planned move: tandem failover --to tunnel2, then --auto",
        || {
            rig.run(
                &lab,
                TcpLoad::Capped {
                    secs: 3,
                    mbps: PLANNED_MOVE_TCP_MBPS,
                },
                ms(500),
                ms(500),
                || {
                    pair.cgw.failover(Some("tunnel2"), false)?;
                    pair.wait_until(Duration::from_secs(3), "on tunnel2", |a, _| {
                        a.active().as_deref() == Some("tunnel2")
                    })?;
                    std::thread::sleep(ms(700));
                    pair.cgw.failover(None, true)?;
                    pair.wait_until(Duration::from_secs(5), "back on tunnel1", |a, _| {
                        a.active().as_deref() == Some("tunnel1")
                    })
                },
            )
        },
    )?;
    let drill_out = Progress::run("[7/7] tandem drill lab-vpc --duration 2s", || {
        pair.cgw
            .drill_with_report(Duration::from_secs(2), false, page.as_deref())
    });

    let mut rep = Table::new(
        "Failover drill (dpd_interval 100 ms, dpd_timeout 300 ms, failback 1 s)",
        &[
            "event",
            "detected",
            "largest gap",
            "probes lost",
            "probes sent",
            "TCP during",
            "verdict",
        ],
    );
    let tcp_txt = |r: &Result<IperfResult, String>| match r {
        Ok(r) => format!("{:.2} Gbit/s", r.gbps()),
        Err(_) => "broken".to_string(),
    };
    let gap_ok = cut.probe.largest_gap_ms <= bound.as_secs_f64() * 1e3;
    rep.row(&[
        "isp1 blackholed".to_string(),
        fmt_ms(cut.action.detect),
        format!("{:.0} ms", cut.probe.largest_gap_ms),
        cut.probe.lost.to_string(),
        cut.probe.sent.to_string(),
        tcp_txt(&cut.tcp),
        if gap_ok && cut.tcp.is_ok() {
            format!("ok (bound {})", fmt_ms(bound))
        } else {
            format!("FAIL (bound {})", fmt_ms(bound))
        },
    ]);
    rep.row(&[
        "isp1 heals, failback".to_string(),
        fmt_ms(failback.action),
        format!("{:.0} ms", failback.probe.largest_gap_ms),
        failback.probe.lost.to_string(),
        failback.probe.sent.to_string(),
        "-".to_string(),
        verdict(failback.probe.lost == 0),
    ]);
    rep.row(&[
        "tandem failover".to_string(),
        fmt_ms(planned.action),
        format!("{:.0} ms", planned.probe.largest_gap_ms),
        planned.probe.lost.to_string(),
        planned.probe.sent.to_string(),
        // Capped on purpose (see PLANNED_MOVE_TCP_MBPS): say so, or 0.05 Gbit/s reads as a
        // throughput regression next to the saturating rows.
        match &planned.tcp {
            Ok(r) => format!(
                "{:.2} Gbit/s (capped at {PLANNED_MOVE_TCP_MBPS} Mbit/s)",
                r.gbps()
            ),
            Err(_) => "broken".to_string(),
        },
        verdict(planned.probe.lost == 0 && planned.tcp.is_ok()),
    ]);
    println!("\n{}", rep.render());
    match drill_out {
        Ok(text) => println!("tandem drill report:\n{}", indent(&text)),
        Err(e) => println!("tandem drill: not available from this daemon ({e})\n"),
    }
    if let Some((pr, tcp)) = figures.get(&Family::V4) {
        let mut sum = Table::new("Summary", &["figure", "value"]);
        sum.row(&[
            "throughput (TCP, IPv4 inner)",
            &format!("{:.2} Gbit/s", tcp.gbps()),
        ]);
        sum.row(&[
            "RTT office -> vpc (avg)",
            &format!("{:.3} ms", pr.rtt_avg_ms),
        ]);
        sum.row(&[
            "failover time (largest probe gap)",
            &format!("{:.0} ms", cut.probe.largest_gap_ms),
        ]);
        sum.row(&["probes lost in the failover", &cut.probe.lost.to_string()]);
        sum.row(&[
            "probes lost in failback + planned move",
            &(failback.probe.lost + planned.probe.lost).to_string(),
        ]);
        println!("{}", sum.render());
    }

    let p = Progress::step("teardown: stop daemons, delete namespaces");
    drop(held);
    drop(rig);
    drop(pair);
    drop(lab);
    let left = namespaces_with_prefix(&prefix);
    p.done(&format!("{} namespaces left behind", left.len()));
    println!("\ndemo finished in {:.1} s", t_all.elapsed().as_secs_f64());
    if left.is_empty() {
        Ok(())
    } else {
        Err(Error::Tandem(format!("left behind: {left:?}")))
    }
}

fn verdict(ok: bool) -> String {
    if ok { "ok".into() } else { "FAIL".into() }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// One setup's figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct BenchRow {
    setup: String,
    tcp1_gbps: f64,
    tcp4_gbps: f64,
    tcp_reverse_gbps: f64,
    udp1400_kpps: f64,
    udp64_kpps: f64,
    /// IPv6 inside: `None` for a setup that carries only IPv4 (the WireGuard peers).
    tcp1_v6_gbps: Option<f64>,
    tcp_reverse_v6_gbps: Option<f64>,
    udp1380_v6_kpps: Option<f64>,
    ping_avg_ms: f64,
    daemon_cpu_s_per_gb: Option<f64>,
    daemon_rss_mib: Option<f64>,
}

fn bench(args: &[String]) -> Result<(), Error> {
    let mut secs = 3u32;
    let mut json = PathBuf::from("lab-bench.json");
    let mut setups = vec![
        "plain".to_string(),
        "tandem".to_string(),
        "boringtun".into(),
        "wggo".into(),
    ];
    let mut pings = 50u32;
    let mut ping_only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--ping-only" {
            ping_only = true;
            continue;
        }
        let v = it.next().ok_or_else(|| Error::Tandem(USAGE.into()))?;
        match a.as_str() {
            "--secs" => secs = v.parse().map_err(|_| Error::Tandem(USAGE.into()))?,
            "--pings" => pings = v.parse().map_err(|_| Error::Tandem(USAGE.into()))?,
            "--json" => json = PathBuf::from(v),
            "--setups" => setups = v.split(',').map(str::to_string).collect(),
            _ => return Err(Error::Tandem(USAGE.into())),
        }
    }
    let bo = BenchOpts {
        secs,
        pings,
        ping_only,
    };
    let need_tandem = setups.iter().any(|s| s.starts_with("tandem"));
    if need_tandem {
        preflight()?;
    } else if !can_run_as_root("lab bench") {
        return Err(Error::Tandem("the lab needs root".into()));
    }
    println!("tandem lab bench: {secs} s per iperf3 run, same lab for every setup\n");
    let lab = Progress::run("build the lab", Lab::new)?;
    let prefix = lab.prefix().to_string();
    let _srv = Iperf3Server::start(&lab.vpc, 5201)?;
    let mut rows = Vec::new();
    for s in &setups {
        match s.as_str() {
            "plain" => {
                lab.plain_routes(Isp::One)?;
                rows.push(measure(&lab, "plain routing", bo, &[], true)?);
                lab.remove_plain_routes(Isp::One)?;
            }
            s if s == "tandem" || s.starts_with("tandem:") => {
                let env: Vec<(String, String)> = s
                    .strip_prefix("tandem:")
                    .unwrap_or_default()
                    .split(';')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let name = if env.is_empty() {
                    "tandem".to_string()
                } else {
                    format!("tandem ({})", &s["tandem:".len()..])
                };
                let pair = Progress::run("start tandem on both gateways", || {
                    TandemPair::start(
                        &lab,
                        TandemOpts {
                            dpd_interval: ms(250),
                            dpd_timeout: ms(1000),
                            // The largest inner MTU whose ESP-in-UDP packet fits a 1500 B IPv4
                            // underlay: 1432 + 2 trailer + 2 pad (4-byte alignment) + 8 ESP
                            // header + 8 IV + 16 ICV + 8 UDP + 20 IP = 1496; a 1400 B UDP
                            // payload (1428 B inner packet) fits, as in peers/peers.sh (TUN MTU
                            // 1440).
                            mtu: Some(1432),
                            log: "warn",
                            env: env.clone(),
                            ..TandemOpts::default()
                        },
                    )
                })?;
                rows.push(measure(&lab, &name, bo, &[&pair.cgw, &pair.vpcgw], true)?);
            }
            s if s == "wggo" || s.starts_with("boringtun") => match wg::start(&lab, s) {
                Ok(Some(peer)) => {
                    let pids = peer.pids();
                    let name = match wg::boringtun_threads(s) {
                        Some(1) => "boringtun (1 thread)".to_string(),
                        Some(n) => format!("boringtun ({n} threads)"),
                        None => "wireguard-go".to_string(),
                    };
                    // Their configuration (as peers.sh's) routes IPv4 only.
                    rows.push(measure_pids(&lab, &name, bo, &pids, false)?);
                }
                Ok(None) => println!(
                    "  {s}: not installed, skipped (install it with netns-tests/peers/peers.sh --install)"
                ),
                Err(e) => println!("  {s}: could not start: {e}"),
            },
            other => return Err(Error::Tandem(format!("unknown setup {other}; {USAGE}"))),
        }
    }
    let base = rows.first().cloned().unwrap_or_default();
    let mut header = vec!["figure".to_string()];
    for r in &rows {
        header.push(r.setup.clone());
        if r.setup != base.setup {
            header.push("ratio".into());
        }
    }
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(
        &format!("Bench ({secs} s runs; ratio = setup / {})", base.setup),
        &header_refs,
    );
    type Get = fn(&BenchRow) -> Option<f64>;
    /// An IPv6 figure over its IPv4 counterpart, same setup, same run.
    fn per(v6: Option<f64>, v4: f64) -> Option<f64> {
        v6.filter(|_| v4 > 0.0).map(|v| v / v4)
    }
    let figures: [(&str, Get, usize); 14] = [
        ("TCP 1 stream (Gbit/s)", |r| Some(r.tcp1_gbps), 2),
        ("TCP 4 streams (Gbit/s)", |r| Some(r.tcp4_gbps), 2),
        ("TCP reverse (Gbit/s)", |r| Some(r.tcp_reverse_gbps), 2),
        ("UDP 1400 B received (kpps)", |r| Some(r.udp1400_kpps), 1),
        ("UDP 64 B received (kpps)", |r| Some(r.udp64_kpps), 1),
        ("IPv6 TCP 1 stream (Gbit/s)", |r| r.tcp1_v6_gbps, 2),
        ("IPv6 TCP reverse (Gbit/s)", |r| r.tcp_reverse_v6_gbps, 2),
        ("IPv6 UDP 1380 B received (kpps)", |r| r.udp1380_v6_kpps, 1),
        (
            "IPv6/IPv4 TCP 1 stream",
            |r| per(r.tcp1_v6_gbps, r.tcp1_gbps),
            2,
        ),
        (
            "IPv6/IPv4 TCP reverse",
            |r| per(r.tcp_reverse_v6_gbps, r.tcp_reverse_gbps),
            2,
        ),
        (
            "IPv6/IPv4 UDP 1428 B packets",
            |r| per(r.udp1380_v6_kpps, r.udp1400_kpps),
            2,
        ),
        ("ping RTT avg (ms)", |r| Some(r.ping_avg_ms), 3),
        ("daemon CPU (s/GB)", |r| r.daemon_cpu_s_per_gb, 2),
        ("daemon RSS (MiB)", |r| r.daemon_rss_mib, 1),
    ];
    for (name, get, prec) in figures {
        let mut row = vec![name.to_string()];
        for r in &rows {
            row.push(get(r).map_or("-".into(), |v| format!("{v:.prec$}")));
            if r.setup != base.setup {
                row.push(match (get(r), get(&base)) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                    _ => "-".into(),
                });
            }
        }
        t.row(&row);
    }
    println!("\n{}", t.render());
    // Ratios to the first setup (plain routing), per figure, as in the table.
    let mut ratios = serde_json::Map::new();
    for r in rows.iter().skip(1) {
        let mut m = serde_json::Map::new();
        for (name, get, _) in figures {
            if let (Some(a), Some(b)) = (get(r), get(&base)) {
                if b > 0.0 {
                    m.insert(name.to_string(), serde_json::json!(a / b));
                }
            }
        }
        ratios.insert(r.setup.clone(), serde_json::Value::Object(m));
    }
    let doc = serde_json::json!({
        "secs": secs,
        "baseline": base.setup,
        "rows": rows,
        "ratios_to_baseline": ratios,
    });
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    )
    .map_err(|e| Error::Io(json.display().to_string(), e))?;
    println!("JSON written to {}", json.display());
    drop(lab);
    let left = namespaces_with_prefix(&prefix);
    if !left.is_empty() {
        return Err(Error::Tandem(format!("left behind: {left:?}")));
    }
    Ok(())
}

/// What each setup runs.
#[derive(Debug, Clone, Copy)]
struct BenchOpts {
    /// Seconds per iperf3 run.
    secs: u32,
    /// Pings (20 ms apart) for the RTT figure.
    pings: u32,
    /// Only the ping figure (a quick latency A/B).
    ping_only: bool,
}

fn measure(
    lab: &Lab,
    name: &str,
    bo: BenchOpts,
    daemons: &[&Daemon],
    v6: bool,
) -> Result<BenchRow, Error> {
    let pids: Vec<u32> = daemons.iter().map(|d| d.process().pid()).collect();
    measure_pids(lab, name, bo, &pids, v6)
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|&p| tandem_netns_tests::process::cpu_seconds(p))
        .sum()
}

/// The UDP payload that makes an IPv6 packet as long as the IPv4 one of a 1400 B payload
/// (1428 B: 20 B more of IP header), so both fit the bench's inner MTU unfragmented.
const UDP_V6_LEN: u32 = 1400 + 20 - 40;

/// One setup's figures; with `v6`, the IPv6-inner ones too, each run right after its IPv4
/// counterpart so that the pair sees the same machine.
fn measure_pids(
    lab: &Lab,
    name: &str,
    bo: BenchOpts,
    pids: &[u32],
    v6: bool,
) -> Result<BenchRow, Error> {
    let dst = vpc_ip(Family::V4);
    let o = IperfOpts {
        secs: bo.secs,
        ..IperfOpts::default()
    };
    let run_to = |f: Family, label: &str, o: IperfOpts| {
        Progress::run(&format!("{name}: {label}"), || {
            iperf3(&lab.office, vpc_ip(f), 5201, o)
        })
    };
    let run = |label: &str, o: IperfOpts| run_to(Family::V4, label, o);
    let run6 = |label: &str, o: IperfOpts| {
        v6.then(|| run_to(Family::V6, &format!("IPv6 {label}"), o))
            .transpose()
    };
    let pr = Progress::run(&format!("{name}: ping x{}", bo.pings), || {
        ping(&lab.office, dst, bo.pings, ms(20))
    })?;
    if bo.ping_only {
        return Ok(BenchRow {
            setup: name.to_string(),
            ping_avg_ms: pr.rtt_avg_ms,
            ..BenchRow::default()
        });
    }
    let cpu0 = cpu_of(pids);
    let tcp1 = run("TCP 1 stream", o)?;
    let cpu1 = cpu_of(pids);
    let tcp1_v6 = run6("TCP 1 stream", o)?;
    let tcp4 = run("TCP 4 streams", IperfOpts { parallel: 4, ..o })?;
    let rev = run("TCP reverse", IperfOpts { reverse: true, ..o })?;
    let rev_v6 = run6("TCP reverse", IperfOpts { reverse: true, ..o })?;
    let u1400 = run(
        "UDP 1400 B full rate",
        IperfOpts {
            udp_len: Some(1400),
            ..o
        },
    )?;
    let u1380_v6 = run6(
        &format!("UDP {UDP_V6_LEN} B full rate"),
        IperfOpts {
            udp_len: Some(UDP_V6_LEN),
            ..o
        },
    )?;
    let u64b = run(
        "UDP 64 B full rate",
        IperfOpts {
            udp_len: Some(64),
            ..o
        },
    )?;
    let (cpu, rss) = if pids.is_empty() {
        (None, None)
    } else {
        let gb = tcp1.bytes as f64 / 1e9;
        let rss = pids
            .iter()
            .filter_map(|&p| tandem_netns_tests::process::rss_kib(p, true))
            .max()
            .map(|k| k as f64 / 1024.0);
        (
            if gb > 0.0 {
                Some((cpu1 - cpu0) / gb)
            } else {
                None
            },
            rss,
        )
    };
    Ok(BenchRow {
        setup: name.to_string(),
        tcp1_gbps: tcp1.gbps(),
        tcp4_gbps: tcp4.gbps(),
        tcp_reverse_gbps: rev.gbps(),
        udp1400_kpps: u1400.udp_received_pps / 1e3,
        udp64_kpps: u64b.udp_received_pps / 1e3,
        tcp1_v6_gbps: tcp1_v6.map(|r| r.gbps()),
        tcp_reverse_v6_gbps: rev_v6.map(|r| r.gbps()),
        udp1380_v6_kpps: u1380_v6.map(|r| r.udp_received_pps / 1e3),
        ping_avg_ms: pr.rtt_avg_ms,
        daemon_cpu_s_per_gb: cpu,
        daemon_rss_mib: rss,
    })
}

/// boringtun / wireguard-go between cgw and vpcgw over isp1, set up as `netns-tests/peers/peers.sh`
/// does: a userspace WireGuard daemon per gateway, configured with `wg`, routes into it.
mod wg {
    use super::*;
    use tandem_netns_tests::netns::Netns;
    use tandem_netns_tests::process::Bg;
    use tandem_netns_tests::topo::{cgw_wan, office_net, vpc_net, vpcgw_wan};

    fn which(tool: &str) -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        if let Some(h) = std::env::var_os("HOME") {
            dirs.push(PathBuf::from(h).join(".cargo/bin"));
        }
        dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
    }

    /// Both daemons; killed (and their sockets removed) on drop.
    #[derive(Debug)]
    pub struct Peers {
        daemons: Vec<Bg>,
        ifaces: Vec<String>,
    }

    impl Peers {
        pub fn pids(&self) -> Vec<u32> {
            self.daemons.iter().map(Bg::pid).collect()
        }
    }

    impl Drop for Peers {
        fn drop(&mut self) {
            self.daemons.clear();
            for i in &self.ifaces {
                let _ = std::fs::remove_file(format!("/var/run/wireguard/{i}.sock"));
            }
        }
    }

    /// `boringtun` -> 1 thread, `boringtun-tN` -> N threads; `None` for anything else.
    pub fn boringtun_threads(setup: &str) -> Option<u32> {
        match setup.strip_prefix("boringtun")? {
            "" => Some(1),
            rest => rest.strip_prefix("-t")?.parse().ok().filter(|&n| n > 0),
        }
    }

    pub fn start(lab: &Lab, which_peer: &str) -> Result<Option<Peers>, Error> {
        let threads = boringtun_threads(which_peer);
        if which_peer != "wggo" && threads.is_none() {
            return Err(Error::Tandem(format!("unknown setup {which_peer}")));
        }
        let (Some(wgtool), Some(daemon)) = (
            which("wg"),
            which(if threads.is_some() {
                "boringtun-cli"
            } else {
                "wireguard-go"
            }),
        ) else {
            return Ok(None);
        };
        let wg = |ns: &Netns, args: &[&str]| ns.run(&wgtool.display().to_string(), args);
        let tag = std::process::id() % 10000;
        let names = [format!("tdmwg{tag}a"), format!("tdmwg{tag}b")];
        let mut peers = Peers {
            daemons: Vec::new(),
            ifaces: names.to_vec(),
        };
        let sides = [(&lab.cgw, &names[0]), (&lab.vpcgw, &names[1])];
        for (ns, ifc) in sides {
            let mut cmd = ns.command(&daemon);
            if let Some(n) = threads {
                cmd.args([
                    "-f",
                    "--disable-drop-privileges",
                    "-v",
                    "error",
                    "--threads",
                ])
                .arg(n.to_string())
                .env("WG_SUDO", "1");
            } else {
                cmd.arg("-f")
                    .env("LOG_LEVEL", "error")
                    .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
            }
            cmd.arg(ifc.as_str())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            peers.daemons.push(Bg::spawn(cmd)?);
        }
        for ifc in &names {
            let sock = PathBuf::from(format!("/var/run/wireguard/{ifc}.sock"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !sock.exists() {
                if Instant::now() > deadline {
                    return Err(Error::Timeout(format!("no UAPI socket {}", sock.display())));
                }
                std::thread::sleep(ms(50));
            }
        }
        let mut keys = Vec::new();
        for _ in 0..2 {
            let k = lab.cgw.run(&wgtool.display().to_string(), ["genkey"])?;
            let p = tandem_netns_tests::netns::checked({
                let mut c = std::process::Command::new("sh");
                c.arg("-c")
                    .arg(format!("echo '{}' | {} pubkey", k.trim(), wgtool.display()));
                c
            })?;
            keys.push((k.trim().to_string(), p.trim().to_string()));
        }
        let dir = tandem_netns_tests::tandem::TempDir::new("wg")?;
        let f = Family::V4;
        let ends = [
            (
                &lab.cgw,
                &names[0],
                0,
                1,
                vpcgw_wan(Isp::One, f),
                vpc_net(f),
                "10.99.0.1/30",
            ),
            (
                &lab.vpcgw,
                &names[1],
                1,
                0,
                cgw_wan(Isp::One, f),
                office_net(f),
                "10.99.0.2/30",
            ),
        ];
        for (ns, ifc, me, peer, remote, remote_net, inner) in ends {
            let kf = dir.path().join(format!("{ifc}.key"));
            tandem_netns_tests::tandem::write_private(&kf, &keys[me].0)?;
            let kfs = kf.display().to_string();
            let ep = format!("{remote}:51820");
            let allowed = format!("10.99.0.0/30,{remote_net}");
            wg(
                ns,
                &[
                    "set",
                    ifc,
                    "private-key",
                    &kfs,
                    "listen-port",
                    "51820",
                    "peer",
                    &keys[peer].1,
                    "allowed-ips",
                    &allowed,
                    "endpoint",
                    &ep,
                ],
            )?;
            ns.ip(["addr", "add", inner, "dev", ifc])?;
            ns.ip(["link", "set", ifc, "mtu", "1440", "up"])?;
            ns.ip(["route", "replace", remote_net, "dev", ifc])?;
        }
        Ok(Some(peers))
    }
}

/// `lab budget`: false Downs and detection times per timer profile, under load and impairment.
mod budget {
    use super::*;
    use std::net::SocketAddr;
    use std::time::SystemTime;
    use tandem_netns_tests::budget::{Panel, histogram_svg};
    use tandem_netns_tests::impair::NftImpairment;
    use tandem_netns_tests::probe::{ProbeStream, REFLECT_PORT, Reflector};
    use tandem_netns_tests::tandem::Side;
    use tandem_netns_tests::traffic::Iperf3Client;
    use tandem_netns_tests::wanem::{Impair, WanEmulator};

    /// iperf3 ports: one server per direction (an iperf3 server runs one test at a time).
    const PORT_UP: u16 = 5221;
    const PORT_DOWN: u16 = 5222;
    /// Long enough for any phase; the clients are killed when the phase ends.
    const FOREVER_SECS: u32 = 1_000_000;

    #[derive(Debug, Clone)]
    struct Opts {
        duration: u32,
        cuts: u32,
        loss: u8,
        delay: Duration,
        jitter: Duration,
        idle: u32,
        /// Where the table, JSON, SVG and the daemons' logs go.
        out: Option<PathBuf>,
    }

    /// A profile's name and DPD timers (interval, timeout); `drill` is the lab's drill timers.
    fn profile(name: &str) -> Result<(Duration, Duration), Error> {
        match name {
            "default" => Ok((ms(250), ms(1000))),
            "drill" => Ok((ms(100), ms(300))),
            "fast" => Ok((ms(10), ms(30))),
            _ => Err(Error::Tandem(format!(
                "unknown profile {name}: default, drill or fast"
            ))),
        }
    }

    #[derive(Debug, Clone, Default, serde::Serialize)]
    struct Row {
        profile: String,
        dpd_interval_ms: u64,
        dpd_timeout_ms: u64,
        idle_cpu_pct_per_tunnel: f64,
        load_secs: u32,
        false_downs_under_load: u64,
        false_downs_during_cuts: u64,
        tcp_up: Option<IperfResult>,
        tcp_down: Option<IperfResult>,
        detection_ms: Vec<f64>,
        gap_ms: Vec<f64>,
        failed_cuts: u32,
        /// False Downs under load by `side tunnel cause`.
        false_down_causes: BTreeMap<String, u64>,
    }

    fn arg<T: std::str::FromStr>(v: &str) -> Result<T, Error> {
        v.parse().map_err(|_| Error::Tandem(USAGE.into()))
    }

    pub fn run(args: &[String]) -> Result<(), Error> {
        let mut profiles = vec!["default".to_string(), "drill".into(), "fast".into()];
        let mut o = Opts {
            duration: 60,
            cuts: 50,
            loss: 1,
            delay: ms(5),
            jitter: ms(4),
            idle: 10,
            out: None,
        };
        let mut json = PathBuf::from("lab-budget.json");
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let v = it.next().ok_or_else(|| Error::Tandem(USAGE.into()))?;
            match a.as_str() {
                "--profiles" => profiles = v.split(',').map(str::to_string).collect(),
                "--duration" => o.duration = arg(v)?,
                "--cuts" => o.cuts = arg(v)?,
                "--loss" => o.loss = arg(v)?,
                "--delay-ms" => o.delay = ms(arg(v)?),
                "--jitter-ms" => o.jitter = ms(arg(v)?),
                "--idle-secs" => o.idle = arg(v)?,
                "--json" => json = PathBuf::from(v),
                "--out" => o.out = Some(PathBuf::from(v)),
                _ => return Err(Error::Tandem(USAGE.into())),
            }
        }
        for p in &profiles {
            profile(p)?;
        }
        preflight()?;
        println!(
            "tandem false-failover budget: {} s of TCP both ways, {} cuts, {} % loss and {:?} ± {:?} on both ISPs, both ways\n",
            o.duration, o.cuts, o.loss, o.delay, o.jitter
        );
        let mut rows = Vec::new();
        if let Some(dir) = &o.out {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io(dir.display().to_string(), e))?;
        }
        for p in &profiles {
            rows.push(one_profile(p, &o)?);
            // After each profile, so a long run that is stopped keeps what it measured.
            write_outputs(&rows, &o, &json)?;
        }
        Ok(())
    }

    /// The table (printed, and `DIR/budget.txt`), the JSON (`--json`, and `DIR/budget.json`) and
    /// the histogram (`DIR/budget.svg`).
    fn write_outputs(rows: &[Row], o: &Opts, json: &std::path::Path) -> Result<(), Error> {
        let mut t = Table::new(
            &format!(
                "False-failover budget ({} s under load, {} cuts per profile)",
                o.duration, o.cuts
            ),
            &[
                "profile",
                "timers",
                "idle CPU/tunnel",
                "false Downs (load / cuts)",
                "detection min/med/p99/max (ms)",
                "gap min/med/p99/max (ms)",
                "TCP up/down (Mbit/s)",
            ],
        );
        for r in rows {
            let mbps = |x: &Option<IperfResult>| {
                x.map_or("-".into(), |x| format!("{:.0}", x.bits_per_second / 1e6))
            };
            t.row(&[
                r.profile.clone(),
                format!("{} / {} ms", r.dpd_interval_ms, r.dpd_timeout_ms),
                format!("{:.2} %", r.idle_cpu_pct_per_tunnel),
                format!(
                    "{} / {}",
                    r.false_downs_under_load, r.false_downs_during_cuts
                ),
                spread(&r.detection_ms),
                spread(&r.gap_ms),
                format!("{} / {}", mbps(&r.tcp_up), mbps(&r.tcp_down)),
            ]);
        }
        let table = t.render();
        println!("\n{table}");
        let doc = serde_json::json!({ "opts": {
            "duration_secs": o.duration, "cuts": o.cuts, "loss_pct": o.loss,
            "delay_ms": o.delay.as_millis() as u64, "jitter_ms": o.jitter.as_millis() as u64,
            "idle_secs": o.idle }, "rows": rows });
        let doc = serde_json::to_string_pretty(&doc).unwrap_or_default();
        let write = |path: &std::path::Path, text: &str| {
            std::fs::write(path, text).map_err(|e| Error::Io(path.display().to_string(), e))
        };
        write(json, &doc)?;
        println!("JSON written to {}", json.display());
        if let Some(dir) = &o.out {
            let titles: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{} ({} / {} ms)",
                        r.profile, r.dpd_interval_ms, r.dpd_timeout_ms
                    )
                })
                .collect();
            let panels: Vec<Panel<'_>> = rows
                .iter()
                .zip(&titles)
                .map(|(r, title)| Panel {
                    title,
                    detection_ms: &r.detection_ms,
                    gap_ms: &r.gap_ms,
                })
                .collect();
            write(&dir.join("budget.txt"), &table)?;
            write(&dir.join("budget.json"), &doc)?;
            write(&dir.join("budget.svg"), &histogram_svg(&panels))?;
            println!(
                "table, JSON and histogram written to {}/budget.{{txt,json,svg}}",
                dir.display()
            );
        }
        Ok(())
    }

    /// `min / median / p99 / max` of `v`.
    fn spread(v: &[f64]) -> String {
        tandem_netns_tests::budget::spread(v).map_or("-".into(), |(a, b, c, d)| {
            format!("{a:.0} / {b:.0} / {c:.0} / {d:.0}")
        })
    }

    /// Seconds since midnight UTC (the daemons' log timestamps are UTC RFC 3339).
    fn day_secs(t: SystemTime) -> f64 {
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_nanos()) * 1e-9
    }

    /// `2026-01-01T12:34:56.123456Z ...` -> seconds since midnight.
    fn log_day_secs(line: &str) -> Option<f64> {
        let t = line.split_whitespace().next()?.split_once('T')?.1;
        let t = t.strip_suffix('Z')?;
        let mut it = t.split(':');
        let h: f64 = it.next()?.parse().ok()?;
        let m: f64 = it.next()?.parse().ok()?;
        let s: f64 = it.next()?.parse().ok()?;
        Some(h * 3600.0 + m * 60.0 + s)
    }

    /// Down transitions in a daemon's log after its first `skip` lines, by `side tunnel cause`
    /// (the cause says which end lost the other: `DpdTimeout` = this side heard nothing for
    /// `dpd_timeout`, `PeerDoesNotHearUs` = the peer's keepalive said so).
    fn down_causes(d: &Daemon, side: &str, skip: usize, into: &mut BTreeMap<String, u64>) {
        for l in d.log_text().lines().skip(skip) {
            if !(l.contains("tunnel state changed") && l.contains("to=\"down\"")) {
                continue;
            }
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .unwrap_or("?")
                    .trim_matches('"')
                    .to_string()
            };
            let key = format!("{side} {} {}", field("tunnel="), field("cause="));
            *into.entry(key).or_default() += 1;
        }
    }

    /// Down transitions in a daemon's log, optionally of one tunnel only.
    fn downs(d: &Daemon, tunnel: Option<&str>) -> u64 {
        d.log_text()
            .lines()
            .filter(|l| l.contains("tunnel state changed") && l.contains("to=\"down\""))
            .filter(|l| tunnel.is_none_or(|t| l.contains(&format!("tunnel={t} "))))
            .count() as u64
    }

    fn tcp_both_ways(lab: &Lab, secs: u32) -> Result<(Iperf3Client, Iperf3Client), Error> {
        let dst = vpc_ip(Family::V4);
        let o = IperfOpts {
            secs,
            ..IperfOpts::default()
        };
        Ok((
            Iperf3Client::spawn(&lab.office, dst, PORT_UP, o)?,
            Iperf3Client::spawn(
                &lab.office,
                dst,
                PORT_DOWN,
                IperfOpts { reverse: true, ..o },
            )?,
        ))
    }

    fn one_profile(name: &str, o: &Opts) -> Result<Row, Error> {
        let (interval, timeout) = profile(name)?;
        println!("== profile {name}: dpd_interval {interval:?}, dpd_timeout {timeout:?}");
        let lab = Progress::run("build the lab", Lab::new)?;
        let imp = Impair {
            delay: o.delay,
            jitter: o.jitter,
            loss_pct: o.loss,
            ..Impair::default()
        };
        let _emu1 = WanEmulator::start(&lab.isp1, &["cgw", "vpcgw"], imp)?;
        let _emu2 = WanEmulator::start(&lab.isp2, &["cgw", "vpcgw"], imp)?;
        let _up = Iperf3Server::start(&lab.vpc, PORT_UP)?;
        let _down = Iperf3Server::start(&lab.vpc, PORT_DOWN)?;
        let _reflector = Reflector::start(&lab.vpc, REFLECT_PORT)?;
        let pair = Progress::run("start tandem on both gateways", || {
            TandemPair::start(
                &lab,
                TandemOpts {
                    dpd_interval: interval,
                    dpd_timeout: timeout,
                    failback: Some(Duration::from_secs(1)),
                    log: "info",
                    ..TandemOpts::default()
                },
            )
        })?;
        let mut row = Row {
            profile: name.to_string(),
            dpd_interval_ms: interval.as_millis() as u64,
            dpd_timeout_ms: timeout.as_millis() as u64,
            load_secs: o.duration,
            ..Row::default()
        };
        let daemons = [&pair.cgw, &pair.vpcgw];
        let pids: Vec<u32> = daemons.iter().map(|d| d.process().pid()).collect();

        // 1) Idle: keepalives only. CPU of both daemons, per tunnel (2 tunnels each).
        let (c0, t0) = (cpu_of(&pids), Instant::now());
        Progress::run(&format!("idle CPU, {} s", o.idle), || {
            std::thread::sleep(Duration::from_secs(u64::from(o.idle)));
        });
        let cpu = (cpu_of(&pids) - c0) / t0.elapsed().as_secs_f64();
        row.idle_cpu_pct_per_tunnel = cpu * 100.0 / 4.0;

        // 2) Saturating TCP both ways for `duration`: every Down is a false one.
        let d0: u64 = daemons.iter().map(|d| downs(d, None)).sum();
        let lines0: Vec<usize> = daemons
            .iter()
            .map(|d| d.log_text().lines().count())
            .collect();
        let (up, down) = tcp_both_ways(&lab, o.duration)?;
        Progress::run(&format!("TCP both ways, {} s", o.duration), || {
            std::thread::sleep(Duration::from_secs(u64::from(o.duration)));
        });
        row.tcp_up = up.finish().ok();
        row.tcp_down = down.finish().ok();
        row.false_downs_under_load = daemons.iter().map(|d| downs(d, None)).sum::<u64>() - d0;
        for (d, (side, skip)) in daemons.iter().zip(["cgw", "vpcgw"].into_iter().zip(lines0)) {
            down_causes(d, side, skip, &mut row.false_down_causes);
        }
        if let Some(dir) = &o.out {
            for (d, side) in daemons.iter().zip(["cgw", "vpcgw"]) {
                let path = dir.join(format!("{name}-{side}.log"));
                std::fs::write(&path, d.log_text())
                    .map_err(|e| Error::Io(path.display().to_string(), e))?;
            }
        }
        if !row.false_down_causes.is_empty() {
            println!(
                "  false Downs by side, tunnel, cause: {:?}",
                row.false_down_causes
            );
        }
        println!(
            "  false Downs under load: {} (TCP up {:?} Mbit/s, down {:?} Mbit/s)",
            row.false_downs_under_load,
            row.tcp_up.map(|r| (r.bits_per_second / 1e6).round()),
            row.tcp_down.map(|r| (r.bits_per_second / 1e6).round())
        );

        // 3) Silent cuts of isp1 under the same load. The standby (tunnel2) must never go Down.
        let hold = (2 * (timeout + interval)).max(ms(300));
        let s0: u64 = daemons.iter().map(|d| downs(d, Some("tunnel2"))).sum();
        let (up, down) = tcp_both_ways(&lab, FOREVER_SECS)?;
        let target = SocketAddr::new(vpc_ip(Family::V4), REFLECT_PORT);
        for i in 0..o.cuts {
            let on_tunnel1 = pair.wait_until(Duration::from_secs(10), "back on tunnel1", |a, b| {
                a.active().as_deref() == Some("tunnel1")
                    && b.active().as_deref() == Some("tunnel1")
                    && a.all_up()
                    && b.all_up()
            });
            if on_tunnel1.is_err() {
                row.failed_cuts += 1;
                continue;
            }
            let probe = ProbeStream::start(&lab.office, target)?;
            std::thread::sleep(ms(200));
            // From before `nft` starts: the rule commits somewhere within the call, so the
            // detection time is an upper bound by at most the call's length.
            let cut_at = SystemTime::now();
            let cut_t = Instant::now();
            let bh = NftImpairment::blackhole(&lab.isp1, "cgw", Direction::Both)?;
            let moved = pair.wait_until(Duration::from_secs(5), "cgw on tunnel2", |a, _| {
                a.active().as_deref() == Some("tunnel2")
            });
            if let Some(rest) = hold.checked_sub(cut_t.elapsed()) {
                std::thread::sleep(rest);
            }
            bh.heal()?;
            let _ = pair.wait_until(Duration::from_secs(10), "failback", |a, b| {
                a.active().as_deref() == Some("tunnel1") && b.active().as_deref() == Some("tunnel1")
            });
            let report = probe.stop()?;
            let cut = day_secs(cut_at);
            let detected = pair
                .daemon(Side::Cgw)
                .log_text()
                .lines()
                .filter(|l| l.contains("active tunnel switched") && l.contains("to=tunnel2"))
                .filter_map(log_day_secs)
                .find(|t| *t >= cut);
            match (moved, detected) {
                (Ok(_), Some(t)) => {
                    let det = (t - cut) * 1e3;
                    row.detection_ms.push(det);
                    row.gap_ms.push(report.largest_gap_ms);
                    println!(
                        "  cut {i:>3}: detected after {det:.1} ms, largest probe gap {:.1} ms, {} probes lost",
                        report.largest_gap_ms, report.lost
                    );
                }
                _ => {
                    row.failed_cuts += 1;
                    println!("  cut {i:>3}: no switch to tunnel2 seen");
                }
            }
        }
        drop((up, down));
        row.false_downs_during_cuts = daemons
            .iter()
            .map(|d| downs(d, Some("tunnel2")))
            .sum::<u64>()
            - s0;
        println!(
            "  detection (ms) min/median/p99/max {}; gap {}; standby Downs during cuts {}",
            spread(&row.detection_ms),
            spread(&row.gap_ms),
            row.false_downs_during_cuts
        );
        drop(pair);
        Ok(row)
    }
}

/// `lab scale`: one scale run per N, then the table, the JSON and the SVG.
fn scale(args: &[String]) -> Result<(), Error> {
    use tandem_netns_tests::scale::{ScaleOpts, run, svg};
    let mut ns = vec![10u32, 100, 500];
    let mut out = PathBuf::from("lab-scale");
    let mut idle: Option<u64> = None;
    // (label, hub binary): `None` is the one `tandem_bin` finds.
    let mut builds: Vec<(String, Option<PathBuf>)> = vec![(String::new(), None)];
    let mut sender_pays = false;
    // (dpd_interval, dpd_timeout) of hub and branches: one run per pair.
    let mut timers: Vec<(u64, u64)> = vec![(250, 1000)];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--sender-pays" {
            sender_pays = true;
            continue;
        }
        let v = it.next().ok_or_else(|| Error::Tandem(USAGE.into()))?;
        match a.as_str() {
            "--compare" => {
                builds = v
                    .split(',')
                    .map(|kv| {
                        kv.split_once('=')
                            .map(|(l, p)| (l.to_owned(), Some(PathBuf::from(p))))
                            .ok_or_else(|| Error::Tandem(USAGE.into()))
                    })
                    .collect::<Result<_, _>>()?;
                for (label, bin) in &builds {
                    if !bin.as_ref().is_some_and(|b| b.is_file()) {
                        return Err(Error::Tandem(format!("--compare {label}: no such file")));
                    }
                }
            }
            "--n" => {
                ns = v
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|_| Error::Tandem(USAGE.into()))?;
            }
            "--out" => out = PathBuf::from(v),
            "--idle-secs" => idle = Some(v.parse().map_err(|_| Error::Tandem(USAGE.into()))?),
            "--dpd" => {
                timers = v
                    .split(',')
                    .map(|p| {
                        let (i, t) = p.split_once('/')?;
                        let (i, t) = (i.parse().ok()?, t.parse().ok()?);
                        (i > 0 && t > i).then_some((i, t))
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        Error::Tandem(format!(
                            "--dpd {v}: want INTERVAL_MS/TIMEOUT_MS[,...] with the timeout longer"
                        ))
                    })?;
            }
            _ => return Err(Error::Tandem(USAGE.into())),
        }
    }
    if !can_run_as_root("lab scale") {
        return Err(Error::Tandem("lab scale needs root".into()));
    }
    tandem_bin()?;
    std::fs::create_dir_all(&out).map_err(|e| Error::Io(out.display().to_string(), e))?;
    let mut results = Vec::new();
    for n in ns {
        for &(interval, timeout) in &timers {
            for (label, bin) in &builds {
                let mut opts = ScaleOpts::bench(n);
                if let Some(s) = idle {
                    opts.idle = Duration::from_secs(s);
                }
                opts.dpd_interval = Duration::from_millis(interval);
                opts.dpd_timeout = Duration::from_millis(timeout);
                opts.bin = bin.clone();
                // Runs at other timers than the defaults say so in their label.
                opts.label = match (timers.len(), label.is_empty()) {
                    (1, _) if (interval, timeout) == (250, 1000) => label.clone(),
                    (_, true) => format!("{interval}/{timeout}"),
                    (_, false) => format!("{label} {interval}/{timeout}"),
                };
                opts.branch_napi_thread = !sender_pays;
                eprintln!(
                    "== {n} branches ({} tunnels) {} (dpd {interval}/{timeout} ms)",
                    2 * n,
                    opts.label
                );
                let r = run(&opts, &mut |line| eprintln!("  {line}"))?;
                results.push(r);
            }
        }
        // Written after every N, so a later failure keeps the earlier figures.
        let json =
            serde_json::to_string_pretty(&results).map_err(|e| Error::Parse(e.to_string()))?;
        std::fs::write(out.join("scale.json"), json)
            .map_err(|e| Error::Io("scale.json".into(), e))?;
    }
    let mut t = Table::new(
        "head-end at scale (lab scale)",
        &[
            "build",
            "tunnels",
            "all Up",
            "hs/s",
            "CPU/hs",
            "RSS",
            "budget",
            "idle CPU",
            "us/keepalive",
            "status",
            "bytes",
            "RTT max st/quiet",
            "detect",
            "bound",
            "reload",
            "lost",
        ],
    );
    for r in &results {
        t.row(&[
            if r.label.is_empty() {
                "-".into()
            } else {
                r.label.clone()
            },
            r.tunnels.to_string(),
            format!("{:.0} ms", r.up_ms),
            format!("{:.0}", r.handshakes_per_s),
            format!("{:.2} ms", r.cpu_ms_per_handshake),
            format!("{:.1} MiB", r.rss_kib as f64 / 1024.0),
            format!("{:.1} MiB", r.rss_budget_kib as f64 / 1024.0),
            format!("{:.1} %", r.idle_cpu_pct),
            format!("{:.1}", r.idle_cpu_pct * 1e4 / r.keepalives_per_s),
            format!("{:.0} ms", r.status_ms_median),
            r.status_bytes.to_string(),
            format!(
                "{:.1}/{:.1} ms",
                r.probe_rtt_max_status_ms, r.probe_rtt_max_quiet_ms
            ),
            r.detect_ms.map_or("never".into(), |d| format!("{d:.0} ms")),
            format!("{:.0} ms", r.detect_bound_ms),
            format!("-{0}/+{0} {1:.0} ms", r.reload_changed, r.reload_ms),
            format!("{}/{}", r.reload_probes_lost, r.reload_probes_sent),
        ]);
    }
    let table = t.render();
    println!("{table}");
    std::fs::write(out.join("scale.txt"), &table).map_err(|e| Error::Io("scale.txt".into(), e))?;
    std::fs::write(out.join("scale.svg"), svg(&results))
        .map_err(|e| Error::Io("scale.svg".into(), e))?;
    println!(
        "wrote {0}/scale.txt, {0}/scale.json, {0}/scale.svg",
        out.display()
    );
    Ok(())
}
