//! `lab fastpath`: the data path against plain routing, in one run on one lab.
//!
//! Each round measures plain routing (the kernel forwarding on the same namespaces: the
//! ceiling), then every tandem build asked for, one after the other: UDP 1400 B at full rate
//! (received packets per second), one TCP stream, and many pings (median and p99 RTT). Every
//! tandem figure is reported against the plain-routing figure **of its own round**, so a noisy
//! machine moves both sides of a ratio together; rounds interleave the builds (plain, A, B,
//! plain, A, B, ...) so that a slow minute does not land on one build only. The summary is the
//! median over rounds of each ratio / delta; every run is printed too.
//!
//! The UDP runs give both iperf3 sockets 4 MiB buffers (`--udp-buffer`), for plain routing and
//! tandem alike. On this lab the sender, both gateways and the receiver share the host's cores:
//! through tandem four busy tasks take turns on two cores, and a receiver with the default
//! 208 KiB buffer (90 datagrams, a quarter of a millisecond at 350 kpps) loses whatever arrives
//! while it waits for a core — half of what tandem delivered, on the quiet 2-vCPU VM. Each run
//! also records where datagrams were lost: at the receiving socket (`UdpRcvbufErrors` in the
//! VPC namespace) and at cgw's TUN queue (its `tx_dropped`).

use std::path::PathBuf;

use tandem_netns_tests::Error;
use tandem_netns_tests::netns::namespaces_with_prefix;
use tandem_netns_tests::report::{Progress, Table};
use tandem_netns_tests::tandem::{TandemOpts, TandemPair};
use tandem_netns_tests::topo::{Family, Isp, Lab, vpc_ip};
use tandem_netns_tests::traffic::{Iperf3Server, IperfOpts, iperf3, ping_rtts};

use super::{ms, preflight};

pub const USAGE: &str = "lab fastpath [--secs N] [--pings N] [--rounds R] [--json FILE] [--compare LABEL=[BIN][+K=V;K=V],...] [--lan-gro] [--udp-buffer BYTES]";

/// The UDP runs' socket buffers (iperf3 `-w`, both ends), unless `--udp-buffer` says otherwise
/// (`0`: the system default). 4 MiB is `net.core.rmem_max` here: about 5 ms of the flow.
const UDP_BUFFER: u32 = 4 << 20;

/// Targets (docs/performance.md): UDP at full rate and TCP as ratios of plain
/// routing, ping as an added delay over it.
const UDP_TARGET: f64 = 0.8;
const TCP_TARGET: f64 = 0.25;
const PING_TARGET_MS: f64 = 0.1;

/// One tandem build to measure.
#[derive(Debug, Clone)]
struct Build {
    label: String,
    bin: Option<PathBuf>,
    env: Vec<(String, String)>,
}

/// `LABEL=[BIN][+K=V;K=V]`: a binary (default: the one next to `lab`) and its environment.
fn parse_build(s: &str) -> Result<Build, Error> {
    let (label, rest) = s
        .split_once('=')
        .ok_or_else(|| Error::Tandem(format!("--compare {s}: want LABEL=[BIN][+K=V;K=V]")))?;
    let (bin, env) = rest.split_once('+').unwrap_or((rest, ""));
    let bin = (!bin.is_empty()).then(|| PathBuf::from(bin));
    if let Some(b) = &bin {
        if !b.is_file() {
            return Err(Error::Tandem(format!(
                "--compare {label}: {} is not a file",
                b.display()
            )));
        }
    }
    let env = env
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(Build {
        label: label.to_string(),
        bin,
        env,
    })
}

/// One setup's figures in one round.
#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    round: u32,
    setup: String,
    udp1400_kpps: f64,
    /// UDP datagrams per second the receiving socket dropped (buffer full).
    udp_rcvbuf_drops_kpps: f64,
    /// ... packets per second cgw's TUN queue dropped (tandem only).
    udp_tun_drops_kpps: Option<f64>,
    tcp_gbps: f64,
    ping_median_ms: f64,
    ping_p99_ms: f64,
    pings: usize,
}

/// Nearest-rank percentile of sorted `v` (`p` in 0..=100).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 50.0)
}

/// A counter of the VPC host's UDP layer (`nstat`, absolute, history untouched).
fn vpc_udp_counter(lab: &Lab, name: &str) -> Result<u64, Error> {
    let out = lab.vpc.run("nstat", ["-asz", name])?;
    out.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
        })
        .ok_or_else(|| Error::Tandem(format!("nstat in the VPC namespace has no {name}: {out}")))
}

/// Packets cgw's TUN dropped on transmit (queue full), or `None` when there is no TUN.
fn cgw_tun_drops(lab: &Lab) -> Result<Option<u64>, Error> {
    if lab.cgw.run("ip", ["link", "show", "tandem0"]).is_err() {
        return Ok(None);
    }
    let out = lab
        .cgw
        .run("cat", ["/sys/class/net/tandem0/statistics/tx_dropped"])?;
    out.trim()
        .parse()
        .map(Some)
        .map_err(|_| Error::Tandem(format!("tandem0 tx_dropped: {out:?}")))
}

fn measure(
    lab: &Lab,
    round: u32,
    setup: &str,
    secs: u32,
    pings: u32,
    udp_buffer: Option<u32>,
) -> Result<Run, Error> {
    let dst = vpc_ip(Family::V4);
    // Pings first, on an idle path: 2 ms apart (root), far longer than the daemons' busy-poll
    // window, so each ping finds them asleep, as a ping on a quiet link does.
    let mut rtts = Progress::run(&format!("round {round} {setup}: ping x{pings}"), || {
        ping_rtts(&lab.office, dst, pings, ms(2))
    })?;
    rtts.sort_by(f64::total_cmp);
    let o = IperfOpts {
        secs,
        ..IperfOpts::default()
    };
    let (rcvbuf0, tun0) = (
        vpc_udp_counter(lab, "UdpRcvbufErrors")?,
        cgw_tun_drops(lab)?,
    );
    let udp = Progress::run(
        &format!("round {round} {setup}: UDP 1400 B full rate"),
        || {
            iperf3(
                &lab.office,
                dst,
                5201,
                IperfOpts {
                    udp_len: Some(1400),
                    socket_buffer: udp_buffer,
                    ..o
                },
            )
        },
    )?;
    let (rcvbuf1, tun1) = (
        vpc_udp_counter(lab, "UdpRcvbufErrors")?,
        cgw_tun_drops(lab)?,
    );
    let per_s = |n: u64| n as f64 / f64::from(secs) / 1e3;
    let udp_tun_drops_kpps = match (tun0, tun1) {
        (Some(a), Some(b)) => Some(per_s(b.saturating_sub(a))),
        (None, None) => None,
        _ => {
            return Err(Error::Tandem(
                "cgw's TUN came or went during a UDP run".into(),
            ));
        }
    };
    let tcp = Progress::run(&format!("round {round} {setup}: TCP 1 stream"), || {
        iperf3(&lab.office, dst, 5201, o)
    })?;
    Ok(Run {
        round,
        setup: setup.to_string(),
        udp1400_kpps: udp.udp_received_pps / 1e3,
        udp_rcvbuf_drops_kpps: per_s(rcvbuf1.saturating_sub(rcvbuf0)),
        udp_tun_drops_kpps,
        tcp_gbps: tcp.gbps(),
        ping_median_ms: percentile(&rtts, 50.0),
        ping_p99_ms: percentile(&rtts, 99.0),
        pings: rtts.len(),
    })
}

pub fn run(args: &[String]) -> Result<(), Error> {
    let mut secs = 3u32;
    let mut pings = 500u32;
    let mut rounds = 2u32;
    let mut json = PathBuf::from("lab-fastpath.json");
    let mut builds = vec![Build {
        label: "tandem".into(),
        bin: None,
        env: Vec::new(),
    }];
    let usage = || Error::Tandem(format!("usage: {USAGE}"));
    let mut lan_gro = false;
    let mut udp_buffer = Some(UDP_BUFFER);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--lan-gro" {
            lan_gro = true;
            continue;
        }
        let v = it.next().ok_or_else(usage)?;
        match a.as_str() {
            "--secs" => secs = v.parse().map_err(|_| usage())?,
            "--pings" => pings = v.parse().map_err(|_| usage())?,
            "--rounds" => rounds = v.parse().map_err(|_| usage())?,
            "--json" => json = PathBuf::from(v),
            "--udp-buffer" => {
                udp_buffer = Some(v.parse().map_err(|_| usage())?).filter(|&b| b > 0);
            }
            "--compare" => {
                builds = v.split(',').map(parse_build).collect::<Result<_, _>>()?;
            }
            _ => return Err(usage()),
        }
    }
    preflight()?;
    println!(
        "tandem lab fastpath: {rounds} round(s) of plain routing, {}; {secs} s per iperf3 run, {pings} pings; UDP socket buffers: {}\n",
        builds
            .iter()
            .map(|b| b.label.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        udp_buffer.map_or("the system default".to_string(), |b| format!("{b} B"))
    );
    let lab = Progress::run("build the lab", Lab::new)?;
    if lan_gro {
        // The gateway host's LAN interface coalesces a flow's datagrams before forwarding them
        // (docs/performance.md, "TUN reads"): for plain routing and tandem alike, as an operator
        // would set it on the host.
        lab.cgw.run(
            "ethtool",
            ["-K", "lan", "gro", "on", "rx-udp-gro-forwarding", "on"],
        )?;
        // A veth runs GRO only in NAPI, which this kernel gives it only in threaded mode (or
        // with XDP): without this, `gro on` changes nothing and every datagram is forwarded,
        // and read from the TUN, alone.
        lab.cgw
            .run("sh", ["-c", "echo 1 > /sys/class/net/lan/threaded"])?;
        println!("cgw's LAN interface: gro on, rx-udp-gro-forwarding on, threaded NAPI\n");
    }
    let prefix = lab.prefix().to_string();
    let srv = Iperf3Server::start(&lab.vpc, 5201)?;
    let mut runs: Vec<Run> = Vec::new();
    for round in 1..=rounds {
        lab.plain_routes(Isp::One)?;
        let plain = measure(&lab, round, "plain routing", secs, pings, udp_buffer);
        lab.remove_plain_routes(Isp::One)?;
        runs.push(plain?);
        for b in &builds {
            let pair = Progress::run(&format!("round {round} {}: start tandem", b.label), || {
                TandemPair::start(
                    &lab,
                    TandemOpts {
                        dpd_interval: ms(250),
                        dpd_timeout: ms(1000),
                        // As `lab bench`: the largest inner MTU whose ESP-in-UDP packet fits a
                        // 1500 B underlay, so a 1400 B UDP payload is not fragmented.
                        mtu: Some(1432),
                        log: "warn",
                        env: b.env.clone(),
                        bin: b.bin.clone(),
                        ..TandemOpts::default()
                    },
                )
            })?;
            let r = measure(&lab, round, &b.label, secs, pings, udp_buffer);
            drop(pair);
            runs.push(r?);
        }
    }
    drop(srv);

    // Every run, with its ratios to the plain routing of the same round.
    let mut t = Table::new(
        "Every run (ratio / delta: against plain routing of the same round)",
        &[
            "round",
            "setup",
            "UDP 1400 B kpps",
            "UDP ratio",
            "lost: rcvbuf / TUN kpps",
            "TCP Gbit/s",
            "TCP ratio",
            "ping median ms",
            "delta",
            "ping p99 ms",
            "delta",
        ],
    );
    let plain_of = |round: u32| {
        runs.iter()
            .find(|r| r.round == round && r.setup == "plain routing")
            .cloned()
    };
    #[derive(Default)]
    struct Acc {
        udp: Vec<f64>,
        tcp: Vec<f64>,
        ping: Vec<f64>,
        p99: Vec<f64>,
    }
    let mut acc: Vec<(String, Acc)> = builds
        .iter()
        .map(|b| (b.label.clone(), Acc::default()))
        .collect();
    for r in &runs {
        let p = plain_of(r.round)
            .ok_or_else(|| Error::Tandem("a round without plain routing".into()))?;
        let is_plain = r.setup == "plain routing";
        let (ur, tr, pd, p99d) = (
            r.udp1400_kpps / p.udp1400_kpps,
            r.tcp_gbps / p.tcp_gbps,
            r.ping_median_ms - p.ping_median_ms,
            r.ping_p99_ms - p.ping_p99_ms,
        );
        if let Some((_, a)) = acc.iter_mut().find(|(l, _)| *l == r.setup) {
            a.udp.push(ur);
            a.tcp.push(tr);
            a.ping.push(pd);
            a.p99.push(p99d);
        }
        let rel = |s: String| if is_plain { "-".to_string() } else { s };
        t.row(&[
            r.round.to_string(),
            r.setup.clone(),
            format!("{:.1}", r.udp1400_kpps),
            rel(format!("{ur:.2}x")),
            format!(
                "{:.1} / {}",
                r.udp_rcvbuf_drops_kpps,
                r.udp_tun_drops_kpps
                    .map_or("-".to_string(), |k| format!("{k:.1}"))
            ),
            format!("{:.2}", r.tcp_gbps),
            rel(format!("{tr:.2}x")),
            format!("{:.3}", r.ping_median_ms),
            rel(format!("{pd:+.3}")),
            format!("{:.3}", r.ping_p99_ms),
            rel(format!("{p99d:+.3}")),
        ]);
    }
    println!("\n{}", t.render());
    let mut s = Table::new(
        &format!(
            "Summary: median over {rounds} round(s) (targets: UDP >= {UDP_TARGET}x, TCP >= {TCP_TARGET}x, ping median <= plain + {PING_TARGET_MS} ms)"
        ),
        &[
            "setup",
            "UDP ratio",
            "TCP ratio",
            "ping median delta ms",
            "ping p99 delta ms",
            "targets",
        ],
    );
    let mut summary = serde_json::Map::new();
    for (label, a) in &acc {
        let (u, tc, pd, p99) = (
            median(a.udp.clone()),
            median(a.tcp.clone()),
            median(a.ping.clone()),
            median(a.p99.clone()),
        );
        let met = u >= UDP_TARGET && tc >= TCP_TARGET && pd <= PING_TARGET_MS;
        s.row(&[
            label.clone(),
            format!("{u:.2}x"),
            format!("{tc:.2}x"),
            format!("{pd:+.3}"),
            format!("{p99:+.3}"),
            if met {
                "met".into()
            } else {
                "missed".to_string()
            },
        ]);
        summary.insert(
            label.clone(),
            serde_json::json!({
                "udp_ratio": u, "tcp_ratio": tc,
                "ping_median_delta_ms": pd, "ping_p99_delta_ms": p99, "targets_met": met,
            }),
        );
    }
    println!("{}", s.render());
    let doc = serde_json::json!({
        "secs": secs, "pings": pings, "rounds": rounds, "udp_socket_buffer": udp_buffer,
        "runs": runs, "summary": summary,
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
