//! tandem as an AWS customer gateway, with ESP data, against two strongSwan charons that stand in
//! for the two AWS endpoints of a Site-to-Site VPN connection: charon on `vpcgw` (isp1,
//! 192.0.2.2) ends tunnel1, charon on `vpcgw2` (isp2, 198.51.100.2) ends tunnel2, each
//! configured as AWS configures its endpoints (IKEv2, its own PSK, aes256gcm16-prfsha256-ecp384,
//! ESP aes256gcm16 with PFS, no ESN, replay window 1024, UDP encapsulation forced, kernel-libipsec
//! because this kernel's XFRM has no AES-GCM). `tandem run` on `cgw` with a `protocol = "ikev2"`
//! connection; the office (10.10.0.10) and the VPC (10.20.0.10) talk through it.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod reliability_common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use reliability_common::{METRICS_PORT, drop_count, drops, metrics};
use tandem_netns_tests::aws_lab::{AWS_ESP, AWS_IKE, AwsLab, PSKS, tail, v4};
use tandem_netns_tests::charon::AwsLikeConn;
use tandem_netns_tests::drill::DrillReport;
use tandem_netns_tests::probe::{ProbeStream, Reflector};
use tandem_netns_tests::tandem::{Status, tandem_cmd, write_private};
use tandem_netns_tests::topo::{Family, Isp, isp_if, office_ip, office_net, vpc_ip, vpc_net};
use tandem_netns_tests::traffic::{Iperf3Server, IperfOpts, iperf3, ping, wait_reachable};

/// How long both tunnels may take to come Up (measured: about 100 ms; charon is quick).
const UP_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_PORT: u16 = 7001;

/// charon's side of tunnel `isp`, as AWS would have it, with IKE on port 4500 from the first
/// message when charon initiates (tandem listens only there, with the non-ESP marker).
fn charon_conf(isp: Isp, cgw: IpAddr, psk: &str, dpd: &str, ike: &str, esp: &str) -> String {
    let vpcgw = v4(isp).1;
    AwsLikeConn {
        local: vpcgw,
        remote: cgw,
        psk: psk.into(),
        ike_proposal: ike.into(),
        esp_proposal: esp.into(),
        local_ts: "10.20.0.0/16".into(),
        remote_ts: "10.10.0.0/16".into(),
    }
    .swanctl_conf()
    .replace(
        "    encap = yes\n",
        "    encap = yes\n    local_port = 4500\n    remote_port = 4500\n",
    )
    .replace("dpd_delay = 10s", &format!("dpd_delay = {dpd}"))
}

/// The lab with a charon on both head-ends, each loaded with its tunnel's connection.
fn aws_lab(test: &str, psks: [&str; 2], dpd: &str, ike: &str, esp: &str) -> Option<AwsLab> {
    aws_lab_with_cgw(test, psks, dpd, ike, esp, [v4(Isp::One).0, v4(Isp::Two).0])
}

/// [`aws_lab`] with a charon on `vpcgw` (isp1) only, loaded with `conf`: tunnel2 has no peer
/// (a test that needs one endpoint starts one charon).
fn aws_lab_one_charon(test: &str, conf: &str) -> Option<AwsLab> {
    AwsLab::build(test, &[Isp::One], "", |_| conf.to_owned())
}

/// [`aws_lab`] with the customer gateway address each charon expects (AWS gives one customer
/// gateway address to both of its endpoints).
fn aws_lab_with_cgw(
    test: &str,
    psks: [&str; 2],
    dpd: &str,
    ike: &str,
    esp: &str,
    cgw: [IpAddr; 2],
) -> Option<AwsLab> {
    AwsLab::build(test, &[Isp::One, Isp::Two], "", |isp| {
        let i = isp as usize;
        charon_conf(isp, cgw[i], psks[i], dpd, ike, esp)
    })
}

/// tandem's config: the AWS connection, tunnel1 over isp1 and tunnel2 over isp2.
fn tandem_config(initiate: bool, extra_ike: &str) -> String {
    let (l1, r1) = v4(Isp::One);
    let (l2, r2) = v4(Isp::Two);
    format!(
        r#"[control]
socket = "SOCKET"

[[connection]]
name = "aws"
protocol = "ikev2"
local_subnets = ["10.10.0.0/24"]
remote_subnets = ["10.20.0.0/24"]
dpd_interval = "100ms"
dpd_timeout = "300ms"
failback = "1s"

[connection.ike]
proposals = ["aes256gcm16-prfsha256-ecp384"]
esp_proposals = ["aes256gcm16-ecp384"]
initiate = {initiate}
{extra_ike}
[[connection.tunnel]]
name = "tunnel1"
local = "{l1}"
remote = "{r1}"
psk_file = "tunnel1.psk"
priority = 1

[[connection.tunnel]]
name = "tunnel2"
local = "{l2}"
remote = "{r2}"
psk_file = "tunnel2.psk"
priority = 2
"#
    )
}

fn both_up(s: &Status) -> bool {
    s.both_up()
}

/// Ping both ways through the active tunnel, then iperf3 TCP both ways.
fn traffic_both_ways(aws: &AwsLab) {
    let office = &aws.lab.office;
    let vpc = &aws.lab.vpc;
    let (o, v) = (office_ip(Family::V4), vpc_ip(Family::V4));
    wait_reachable(office, v, Duration::from_secs(5)).unwrap();
    for (from, to) in [(office, v), (vpc, o)] {
        let p = ping(from, to, 20, Duration::from_millis(10)).unwrap();
        assert_eq!(p.received, 20, "ping {} -> {to}: {p:?}", from.name());
    }
    // One server per direction: an iperf3 server refuses a test while it winds the last one down.
    for (reverse, port) in [(false, 5201), (true, 5202)] {
        let server = Iperf3Server::start(vpc, port).unwrap();
        let r = iperf3(
            office,
            v,
            server.port(),
            IperfOpts {
                secs: 2,
                reverse,
                ..IperfOpts::default()
            },
        )
        .unwrap();
        eprintln!(
            "iperf3 TCP office {} vpc through charon: {:.3} Gbit/s",
            if reverse { "<-" } else { "->" },
            r.gbps()
        );
        assert!(r.gbps() > 0.005, "TCP barely moved: {r:?}");
    }
}

#[test]
fn tandem_initiates_both_aws_like_tunnels_and_carries_ping_and_tcp_both_ways() {
    let Some(mut aws) = aws_lab("ike_tunnels", PSKS, "10s", AWS_IKE, AWS_ESP) else {
        return;
    };
    let start = Instant::now();
    aws.start_tandem(&tandem_config(true, ""));
    aws.wait("both tunnels up", UP_TIMEOUT, both_up);
    eprintln!(
        "tandem run -> both IKEv2 tunnels Up against charon: {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let s = aws.status().unwrap();
    assert_eq!(s.0["connections"][0]["protocol"], "ikev2");
    for t in ["tunnel1", "tunnel2"] {
        let tv = s.tunnel(t).unwrap();
        assert_eq!(tv["ike_state"], "established", "{t}: {tv}");
        assert_eq!(tv["ike_spi_i"].as_str().map(str::len), Some(16), "{tv}");
    }
    // charon agrees: its IKE SA has our SPIs and its Child SA is installed.
    let raw = aws.charon(Isp::One).list_sas().unwrap();
    let spi_i = s.tunnel("tunnel1").unwrap()["ike_spi_i"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(raw.contains(&format!("initiator-spi={spi_i}")), "{raw}");
    assert!(raw.contains("state=INSTALLED"), "{raw}");
    traffic_both_ways(&aws);
    // The key log has the IKE line and the ESP lines.
    let keys = std::fs::read_to_string(aws.keylog_path()).unwrap();
    assert!(
        keys.lines()
            .any(|l| l.contains(&format!(" aws tunnel1 ike {spi_i} "))),
        "{keys}"
    );
    assert!(
        keys.lines().filter(|l| l.contains(" aes256gcm16 ")).count() >= 6,
        "{keys}"
    );
}

#[test]
fn charon_initiates_to_a_waiting_tandem_and_traffic_flows() {
    let Some(mut aws) = aws_lab("ike_tunnels", PSKS, "10s", AWS_IKE, AWS_ESP) else {
        return;
    };
    aws.start_tandem(&tandem_config(false, ""));
    // tandem waits: nothing comes Up by itself.
    std::thread::sleep(Duration::from_millis(500));
    let s = aws.status().unwrap();
    assert_eq!(s.state("tunnel1").as_deref(), Some("connecting"));
    let start = Instant::now();
    for isp in [Isp::One, Isp::Two] {
        aws.charon(isp)
            .swanctl(["--initiate", "--ike", "aws", "--child", "net"])
            .unwrap();
    }
    aws.wait("both tunnels up", UP_TIMEOUT, both_up);
    eprintln!(
        "charon --initiate x2 -> both tunnels Up on tandem: {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    traffic_both_ways(&aws);
}

/// `swanctl --rekey` of the Child SA and the IKE SA from charon's side, and tandem's own rekeys
/// (short lifetimes), under a 1 ms probe stream office -> VPC: nothing lost.
#[test]
fn child_and_ike_rekeys_from_either_side_lose_no_probe() {
    let Some(mut aws) = aws_lab("ike_tunnels", PSKS, "10s", AWS_IKE, AWS_ESP) else {
        return;
    };
    // tandem rekeys the Child SA at 9 s and the IKE SA at 10.8 s of their lives.
    aws.start_tandem(&tandem_config(
        true,
        "ike_lifetime = \"12s\"\nchild_lifetime = \"10s\"\n",
    ));
    aws.wait("both tunnels up", UP_TIMEOUT, both_up);
    let _reflector = Reflector::start(&aws.lab.vpc, PROBE_PORT).unwrap();
    let target = SocketAddr::new(vpc_ip(Family::V4), PROBE_PORT);
    wait_reachable(&aws.lab.office, vpc_ip(Family::V4), Duration::from_secs(5)).unwrap();
    let spis_before = aws.status().unwrap().spis("tunnel1").unwrap();
    let stream = ProbeStream::start(&aws.lab.office, target).unwrap();
    let charon = aws.charon(Isp::One);
    std::thread::sleep(Duration::from_millis(500));
    for args in [
        ["--rekey", "--child", "net"],
        ["--rekey", "--ike", "aws"],
        ["--rekey", "--child", "net"],
    ] {
        charon.swanctl(args).unwrap();
        std::thread::sleep(Duration::from_millis(700));
    }
    // tandem's own Child SA rekey (at 9 s) and IKE SA rekey (at 10.8 s) happen in this window.
    let settle = Instant::now() + Duration::from_secs(12);
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = stream.stop().unwrap();
    eprintln!("probes through tunnel1 across 5 rekeys: {report}");
    let s = aws.status().unwrap();
    assert_ne!(s.spis("tunnel1").unwrap(), spis_before, "rekeyed");
    let handshakes = s.num("tunnel1", "handshakes").unwrap_or(0.0);
    let log = aws.log();
    let rekeys = log
        .lines()
        .filter(|l| {
            l.contains("handshake completed") && l.contains("tunnel1") && l.contains("rekey=true")
        })
        .count();
    eprintln!("tunnel1: {rekeys} Child SA rekeys logged ({handshakes} handshakes in status)");
    assert!(rekeys >= 3, "{log}");
    assert_eq!(s.state("tunnel1").as_deref(), Some("up"));
    assert_eq!(report.lost, 0, "{report}\n{log}");
    // About 15 s at 1 ms; a sender starved on a loaded host sends fewer, which proves less.
    assert!(report.sent > 10_000, "{report}");
}

/// A silent blackhole of isp1 (nftables drop on cgw's isp1 link, both ways): tandem's liveness
/// probes go unanswered and it moves to tunnel2 within dpd_timeout + one dpd_interval; charon's
/// own DPD (1 s) and tandem's probes answer each other meanwhile on tunnel2.
#[test]
fn a_silent_blackhole_of_isp1_moves_traffic_to_tunnel2_within_dpd_timeout_plus_one_interval() {
    let Some(mut aws) = aws_lab("ike_tunnels", PSKS, "1s", AWS_IKE, AWS_ESP) else {
        return;
    };
    aws.start_tandem(&tandem_config(true, ""));
    aws.wait("both tunnels up", UP_TIMEOUT, both_up);
    // charon's DPD (every second when idle) is answered: after 3 s both are still Up and
    // charon still has its SAs.
    std::thread::sleep(Duration::from_secs(3));
    let s = aws.status().unwrap();
    assert!(s.both_up(), "{:?}", s.0);
    let log = aws.charon(Isp::Two).log();
    assert!(
        log.contains("sending DPD request") || log.contains("INFORMATIONAL request"),
        "charon sent no DPD:\n{}",
        tail(&log, 30)
    );
    assert!(
        aws.charon(Isp::Two)
            .list_sas()
            .unwrap()
            .contains("state=ESTABLISHED"),
        "charon dropped its IKE SA"
    );
    let bound = Duration::from_millis(300 + 100);
    let cut = Instant::now();
    aws.lab
        .cgw
        .nft(&format!(
            "table inet ikecut {{\n chain i {{ type filter hook input priority 0; iifname \"{0}\" drop; }}\n chain o {{ type filter hook output priority 0; oifname \"{0}\" drop; }}\n}}",
            isp_if(Isp::One)
        ))
        .unwrap();
    let took = aws.wait("tunnel2 active", Duration::from_secs(5), |s| {
        s.active().as_deref() == Some("tunnel2")
    });
    // From before the drop rules went in, to the status poll that saw the switch (10 ms apart).
    let _ = took;
    let took = cut.elapsed();
    eprintln!(
        "blackhole of isp1 -> tandem switched to tunnel2 after {:.0} ms (bound {} ms)",
        took.as_secs_f64() * 1e3,
        bound.as_millis()
    );
    assert!(took <= bound + Duration::from_millis(50), "{took:?}");
    // Traffic takes tunnel2 (the VPC answers via vpcgw2).
    aws.lab.vpc_via(Isp::Two).unwrap();
    let p = ping(
        &aws.lab.office,
        vpc_ip(Family::V4),
        20,
        Duration::from_millis(10),
    )
    .unwrap();
    assert_eq!(p.received, 20, "{p:?}");
}

/// A wrong PSK on tunnel1: AUTHENTICATION_FAILED is logged, tunnel1 never comes Up, tunnel2
/// carries the traffic.
#[test]
fn a_wrong_psk_on_tunnel1_is_logged_keeps_it_down_and_tunnel2_carries_traffic() {
    let wrong = ["not.the.psk.tandem.has.for.it", PSKS[1]];
    let Some(mut aws) = aws_lab("ike_tunnels", wrong, "10s", AWS_IKE, AWS_ESP) else {
        return;
    };
    aws.start_tandem(&tandem_config(true, ""));
    aws.wait("tunnel2 active", UP_TIMEOUT, |s| {
        s.active().as_deref() == Some("tunnel2")
    });
    std::thread::sleep(Duration::from_secs(2));
    let s = aws.status().unwrap();
    assert_eq!(
        s.state("tunnel1").as_deref(),
        Some("connecting"),
        "{:?}",
        s.0
    );
    let log = aws.log();
    assert!(
        log.lines()
            .any(|l| l.contains("tunnel1") && l.contains("AUTHENTICATION_FAILED")),
        "{log}"
    );
    aws.lab.vpc_via(Isp::Two).unwrap();
    let p = ping(
        &aws.lab.office,
        vpc_ip(Family::V4),
        10,
        Duration::from_millis(10),
    )
    .unwrap();
    assert_eq!(p.received, 10, "{p:?}");
}

/// A peer that offers only AES-CBC / SHA-1 / MODP-1024: tandem (responder here) answers
/// NO_PROPOSAL_CHOSEN and logs what it offered.
#[test]
fn a_cbc_sha1_modp1024_peer_gets_no_proposal_chosen_and_a_log_line_naming_its_offer() {
    let Some(mut aws) = aws_lab(
        "ike_tunnels",
        PSKS,
        "10s",
        "aes128-sha1-modp1024",
        "aes128-sha1-modp1024",
    ) else {
        return;
    };
    aws.start_tandem(&tandem_config(false, ""));
    std::thread::sleep(Duration::from_millis(300));
    let r = aws.charon(Isp::One).swanctl([
        "--initiate",
        "--ike",
        "aws",
        "--child",
        "net",
        "--timeout",
        "5",
    ]);
    assert!(r.is_err(), "charon's weak offer was accepted: {r:?}");
    let clog = aws.charon(Isp::One).log();
    assert!(clog.contains("NO_PROPOSAL_CHOSEN"), "{}", tail(&clog, 30));
    let log = aws.log();
    assert!(
        log.lines().any(|l| l.contains("NO_PROPOSAL_CHOSEN")
            && l.contains("tunnel1")
            && l.contains("AES_CBC")),
        "{log}"
    );
    assert_eq!(
        aws.status().unwrap().state("tunnel1").as_deref(),
        Some("connecting")
    );
}

/// The config `tandem import aws` writes from the AWS-style XML fixture, with its placeholder
/// subnets filled in (and a control socket of the test's own), brings both tunnels Up against
/// two charons configured with the XML's PSKs: AWS gives one customer gateway address
/// (192.0.2.1) to both endpoints, so the lab routes it over isp2 too.
#[test]
fn the_config_tandem_import_aws_writes_brings_both_tunnels_up() {
    let xml =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/tests/fixtures/aws/static-ikev1.xml");
    let text = std::fs::read_to_string(&xml).unwrap();
    let psk_of = |n: usize| -> String {
        let s = text.split("<pre_shared_key>").nth(n).unwrap();
        s.split("</pre_shared_key>").next().unwrap().to_owned()
    };
    let psks = [psk_of(1), psk_of(2)];
    let cgw = v4(Isp::One).0;
    let Some(mut aws) = aws_lab_with_cgw(
        "ike_tunnels",
        [&psks[0], &psks[1]],
        "10s",
        "aes256gcm16-prfsha384-ecp384",
        "aes256gcm16-ecp384",
        [cgw, cgw],
    ) else {
        return;
    };
    // 192.0.2.1 <-> 198.51.100.2 over isp2.
    let isp2 = aws.lab.isp(Isp::Two);
    isp2.ip(["route", "add", "192.0.2.1/32", "dev", "cgw"])
        .unwrap();
    aws.lab
        .head_end(Isp::Two)
        .ip([
            "route",
            "add",
            "192.0.2.1/32",
            "via",
            "198.51.100.254",
            "dev",
            "isp2",
        ])
        .unwrap();
    let dir = aws.dir().to_owned();
    let out = tandem_cmd(
        &[
            "import",
            "aws",
            &xml.display().to_string(),
            "--dir",
            &dir.display().to_string(),
            "--name",
            "aws",
        ],
        None,
    )
    .unwrap();
    assert!(out.contains("wrote"), "{out}");
    let config = dir.join("aws.toml");
    let written = std::fs::read_to_string(&config).unwrap();
    let filled = written
        .replace("# local_subnets = ", "local_subnets = ")
        .replace("# remote_subnets = ", "remote_subnets = ")
        + &format!("\n[control]\nsocket = \"{}\"\n", aws.socket().display());
    write_private(&config, &filled).unwrap();
    let start = Instant::now();
    aws.start_tandem_with(&config);
    aws.wait("both tunnels up", UP_TIMEOUT, both_up);
    eprintln!(
        "imported AWS config: both tunnels Up after {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    wait_reachable(&aws.lab.office, vpc_ip(Family::V4), Duration::from_secs(5)).unwrap();
    let p = ping(
        &aws.lab.vpc,
        office_ip(Family::V4),
        10,
        Duration::from_millis(10),
    )
    .unwrap();
    assert_eq!(p.received, 10, "{p:?}");
}

/// Every IKE proposal tandem accepts: AES-256-GCM-16 with each PRF and each DH group.
const IKE_PROPOSALS: [&str; 9] = [
    "aes256gcm16-prfsha256-ecp256",
    "aes256gcm16-prfsha256-ecp384",
    "aes256gcm16-prfsha256-x25519",
    "aes256gcm16-prfsha384-ecp256",
    "aes256gcm16-prfsha384-ecp384",
    "aes256gcm16-prfsha384-x25519",
    "aes256gcm16-prfsha512-ecp256",
    "aes256gcm16-prfsha512-ecp384",
    "aes256gcm16-prfsha512-x25519",
];
/// Every ESP proposal tandem accepts: AES-256-GCM-16 with each PFS group, and without PFS.
const ESP_PROPOSALS: [&str; 4] = [
    "aes256gcm16-ecp256",
    "aes256gcm16-ecp384",
    "aes256gcm16-x25519",
    "aes256gcm16",
];

/// How `swanctl --list-sas --raw` names a proposal's PRF and DH group.
fn swanctl_names(proposal: &str) -> Vec<&'static str> {
    proposal
        .split('-')
        .filter_map(|part| match part {
            "prfsha256" => Some("prf-alg=PRF_HMAC_SHA2_256"),
            "prfsha384" => Some("prf-alg=PRF_HMAC_SHA2_384"),
            "prfsha512" => Some("prf-alg=PRF_HMAC_SHA2_512"),
            "ecp256" => Some("dh-group=ECP_256"),
            "ecp384" => Some("dh-group=ECP_384"),
            "x25519" => Some("dh-group=CURVE_25519"),
            _ => None,
        })
        .collect()
}

/// The `children { net { ... } }` part of charon's `--list-sas --raw` line.
fn child_part(raw: &str) -> &str {
    raw.split_once("child-sas").map_or("", |(_, c)| c)
}

/// One charon (isp1) offers exactly one IKE proposal and one ESP proposal at a time, for every
/// proposal tandem accepts; tandem (offering all of them, waiting as responder) must come Up,
/// name the same proposal in its status as charon's `--list-sas`, carry pings both ways, and
/// take a Child SA rekey with the ESP proposal's PFS group. Each case is named in a failure.
#[test]
fn every_proposal_tandem_accepts_negotiates_and_carries_pings_both_ways_against_charon() {
    let mut cases: Vec<(&str, &str)> = IKE_PROPOSALS
        .iter()
        .enumerate()
        .map(|(i, ike)| (*ike, ESP_PROPOSALS[i % 3]))
        .collect();
    cases.push((AWS_IKE, ESP_PROPOSALS[3]));
    let conf =
        |ike: &str, esp: &str| charon_conf(Isp::One, v4(Isp::One).0, PSKS[0], "10s", ike, esp);
    let Some(mut aws) = aws_lab_one_charon("ike_tunnels", &conf(cases[0].0, cases[0].1)) else {
        return;
    };
    let list = |v: &[&str]| {
        v.iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = tandem_config(false, "")
        .replace(
            &format!("proposals = [\"{AWS_IKE}\"]"),
            &format!("proposals = [{}]", list(&IKE_PROPOSALS)),
        )
        .replace(
            &format!("esp_proposals = [\"{AWS_ESP}\"]"),
            &format!("esp_proposals = [{}]", list(&ESP_PROPOSALS)),
        );
    assert!(config.contains("prfsha512-x25519"), "{config}");
    aws.start_tandem(&config);
    let charon = aws.charon(Isp::One);
    let (o, v) = (office_ip(Family::V4), vpc_ip(Family::V4));
    for (ike, esp) in &cases {
        let case = format!("case IKE {ike} / ESP {esp}");
        charon.load_conf(&conf(ike, esp)).unwrap();
        let start = Instant::now();
        charon
            .swanctl([
                "--initiate",
                "--ike",
                "aws",
                "--child",
                "net",
                "--timeout",
                "10",
            ])
            .unwrap_or_else(|e| panic!("{case}: charon --initiate: {e}\n{}", aws.log()));
        aws.wait(&format!("{case}: tunnel1 up"), UP_TIMEOUT, |s| {
            s.state("tunnel1").as_deref() == Some("up")
        });
        let up = start.elapsed();
        // The Child SA rekey from charon carries a KE of the PFS group (none without PFS).
        charon
            .swanctl(["--rekey", "--child", "net"])
            .unwrap_or_else(|e| panic!("{case}: charon --rekey: {e}"));
        aws.wait(
            &format!("{case}: tandem sends on the rekeyed Child SA"),
            UP_TIMEOUT,
            |s| {
                s.tunnel("tunnel1")
                    .is_some_and(|t| t["esp_proposal"] == *esp && t["ike_proposal"] == *ike)
            },
        );
        let raw = charon.list_sas().unwrap();
        let ike_part = raw.split("child-sas").next().unwrap_or("");
        for name in swanctl_names(ike) {
            assert!(
                ike_part.contains(name),
                "{case}: charon's IKE SA lacks {name}: {raw}"
            );
        }
        assert!(
            ike_part.contains("encr-alg=AES_GCM_16 encr-keysize=256"),
            "{case}: {raw}"
        );
        // The newest Child SA (charon lists the rekeyed one; the old is deleted).
        let child = child_part(&raw);
        assert!(
            child.contains("encr-alg=AES_GCM_16 encr-keysize=256"),
            "{case}: {raw}"
        );
        match swanctl_names(esp).as_slice() {
            [] => assert!(
                !child.contains("dh-group="),
                "{case}: PFS without a group: {raw}"
            ),
            names => {
                for name in names {
                    assert!(
                        child.contains(name),
                        "{case}: charon's Child SA lacks {name}: {raw}"
                    );
                }
            }
        }
        wait_reachable(&aws.lab.office, v, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        for (from, to) in [(&aws.lab.office, v), (&aws.lab.vpc, o)] {
            let p = ping(from, to, 10, Duration::from_millis(10)).unwrap();
            assert_eq!(
                p.received,
                10,
                "{case}: ping {} -> {to}: {p:?}",
                from.name()
            );
        }
        eprintln!(
            "{case}: Up in {:.0} ms, rekeyed, pings both ways",
            up.as_secs_f64() * 1e3
        );
        charon.swanctl(["--terminate", "--ike", "aws"]).unwrap();
        aws.wait(&format!("{case}: tunnel1 closed"), UP_TIMEOUT, |s| {
            s.state("tunnel1").as_deref() != Some("up")
        });
    }
}

/// IPv6 inside the IKEv2 tunnel: the Child SA's selectors hold an IPv4 and an IPv6 prefix on
/// each side, and ping6 crosses tandem and charon's libipsec both ways (office fd00:10::10 <->
/// vpc fd00:20::10), with IPv4 beside it in the same Child SA.
#[test]
fn ipv6_inner_traffic_crosses_charons_libipsec_both_ways() {
    let conf = charon_conf(Isp::One, v4(Isp::One).0, PSKS[0], "10s", AWS_IKE, AWS_ESP)
        .replace(
            "local_ts = 10.20.0.0/16",
            &format!("local_ts = 10.20.0.0/16,{}", vpc_net(Family::V6)),
        )
        .replace(
            "remote_ts = 10.10.0.0/16",
            &format!("remote_ts = 10.10.0.0/16,{}", office_net(Family::V6)),
        );
    assert!(conf.contains("fd00:20::/64"), "{conf}");
    let Some(mut aws) = aws_lab_one_charon("ike_tunnels", &conf) else {
        return;
    };
    aws.lab
        .head_end(Isp::One)
        .ip([
            "-6",
            "route",
            "replace",
            office_net(Family::V6),
            "dev",
            "ipsec0",
        ])
        .unwrap();
    let config = tandem_config(true, "")
        .replace(
            "local_subnets = [\"10.10.0.0/24\"]",
            &format!(
                "local_subnets = [\"10.10.0.0/24\", \"{}\"]",
                office_net(Family::V6)
            ),
        )
        .replace(
            "remote_subnets = [\"10.20.0.0/24\"]",
            &format!(
                "remote_subnets = [\"10.20.0.0/24\", \"{}\"]",
                vpc_net(Family::V6)
            ),
        );
    aws.start_tandem(&config);
    aws.wait("tunnel1 up", UP_TIMEOUT, |s| {
        s.state("tunnel1").as_deref() == Some("up")
    });
    // charon narrowed nothing away: both families in both selectors.
    let raw = aws.charon(Isp::One).list_sas().unwrap();
    for ts in [vpc_net(Family::V6), office_net(Family::V6)] {
        assert!(raw.contains(ts), "charon's Child SA lacks {ts}: {raw}");
    }
    let before = aws.status().unwrap();
    let rx0 = before.num("tunnel1", "rx_packets").unwrap();
    let (o6, v6) = (office_ip(Family::V6), vpc_ip(Family::V6));
    wait_reachable(&aws.lab.office, v6, Duration::from_secs(5)).unwrap_or_else(|e| {
        panic!(
            "{e}\n--- tandem log\n{}\n--- charon\n{}",
            aws.log(),
            tail(&aws.charon(Isp::One).log(), 40)
        )
    });
    for (from, to) in [(&aws.lab.office, v6), (&aws.lab.vpc, o6)] {
        let p = ping(from, to, 20, Duration::from_millis(10)).unwrap();
        assert_eq!(p.received, 20, "ping6 {} -> {to}: {p:?}", from.name());
    }
    // IPv4 shares the Child SA.
    let p = ping(
        &aws.lab.office,
        vpc_ip(Family::V4),
        10,
        Duration::from_millis(10),
    )
    .unwrap();
    assert_eq!(p.received, 10, "IPv4 beside IPv6: {p:?}");
    // The pings went through the tunnel (ESP received by tandem), not around it.
    let rx = aws.status().unwrap().num("tunnel1", "rx_packets").unwrap();
    assert!(rx - rx0 >= 50.0, "ESP packets received: {rx0} -> {rx}");
    // And charon's libipsec carried them: its Child SA counted packets both ways.
    let raw = aws.charon(Isp::One).list_sas().unwrap();
    let count = |key: &str| -> u64 {
        child_part(&raw)
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in charon's Child SA: {raw}"))
    };
    assert!(count("packets-in=") >= 50, "{raw}");
    assert!(count("packets-out=") >= 50, "{raw}");
}

/// `tandem drill` on an IKEv2 connection: the drill's probes are ICMP echo requests sealed into
/// the active Child SA to the tunnel's `probe_target` (here the head-end itself: 10.20.0.1 on
/// vpcgw for tunnel1, 10.20.0.2 on vpcgw2 for tunnel2), answered by charon's host through its
/// libipsec and consumed by tandem. The drill silences tunnel1 (a silent blackhole, as a dead
/// path would be): the report must show the switch to tunnel2, a traffic gap within
/// `dpd_timeout` + one `dpd_interval` (+ 50 ms of scheduling slack, as the blackhole test),
/// probes lost, and the failback; and no probe reply may reach the TUN (they would count as no
/// reply at all).
#[test]
fn tandem_drill_on_an_ikev2_connection_reports_gap_and_lost_probes_from_icmp_probes() {
    let Some(mut aws) = aws_lab("ike_tunnels", PSKS, "10s", AWS_IKE, AWS_ESP) else {
        return;
    };
    let config = tandem_config(true, "")
        .replace(
            "psk_file = \"tunnel1.psk\"",
            "psk_file = \"tunnel1.psk\"\nprobe_target = \"10.20.0.1\"",
        )
        .replace(
            "psk_file = \"tunnel2.psk\"",
            "psk_file = \"tunnel2.psk\"\nprobe_target = \"10.20.0.2\"",
        );
    aws.start_tandem(&config);
    // Both Up, and tunnel1 active (it may come Up second: then after the failback hold-down).
    aws.wait("both tunnels up, tunnel1 active", UP_TIMEOUT, |s| {
        s.both_up() && s.active().as_deref() == Some("tunnel1")
    });
    let sock = aws.socket().display().to_string();
    let out = tandem_cmd(
        &["drill", "aws", "--duration", "1000ms", "--socket", &sock],
        None,
    )
    .unwrap_or_else(|e| panic!("tandem drill: {e}\n{}", aws.log()));
    eprintln!("tandem drill against charon:\n{out}");
    let d = DrillReport::parse(&out);
    let bound_ms = (300.0 + 100.0) + 50.0;
    assert_eq!(d.switched_to, "tunnel2", "{out}");
    assert!(d.detection_ms <= bound_ms, "detection {out}");
    assert!(d.gap_ms > 0.0 && d.gap_ms <= bound_ms, "traffic gap {out}");
    // 1 ms probes from 200 ms before the silence to after the failback.
    assert!(d.sent >= 1000, "{out}");
    assert!(d.lost > 0, "the silence lost no probe: {out}");
    // Lost probes are those of the outage (up to the gap, at one per ms), not the whole drill.
    assert!(
        (d.lost as f64) <= d.gap_ms + 50.0,
        "{} probes lost but the gap was {} ms: replies missing outside the outage\n{out}",
        d.lost,
        d.gap_ms
    );
    assert!(
        d.failback_ms >= 1000.0,
        "failback after the 1 s hold-down: {out}"
    );
}

/// A NAT in front of charon on isp1 that maps its UDP port 4500 to `port`, both ways, in isp1's
/// namespace: charon's datagrams leave with source port `port`, datagrams to `port` reach
/// charon's 4500, and datagrams to charon's 4500 itself are dropped (no mapping), as a real
/// NAT's would be. Without state, so loading it again with another port is a NAT that rebinds.
fn nat_in_front_of_charon(aws: &AwsLab, port: u16) {
    let charon = v4(Isp::One).1;
    aws.lab
        .isp(Isp::One)
        .nft(&format!(
            "table ip tdm_nat
delete table ip tdm_nat
table ip tdm_nat {{
    chain pre {{
        type filter hook prerouting priority raw; policy accept;
        ip saddr {charon} udp sport 4500 udp length 9 counter
        ip daddr {charon} udp dport 4500 counter drop
        ip daddr {charon} udp dport {port} udp dport set 4500
        ip saddr {charon} udp sport 4500 udp sport set {port}
    }}
}}
"
        ))
        .unwrap();
}

fn tunnel1_remote(s: &Status) -> Option<String> {
    s.tunnel("tunnel1")
        .and_then(|t| t["remote"].as_str())
        .map(str::to_owned)
}

/// 20 pings office -> VPC, every one answered, the replies received on tunnel1.
fn pings_through_tunnel1(aws: &AwsLab) {
    let before = aws.status().unwrap().num("tunnel1", "rx_packets").unwrap();
    let p = ping(
        &aws.lab.office,
        vpc_ip(Family::V4),
        20,
        Duration::from_millis(10),
    )
    .unwrap();
    assert_eq!(p.received, 20, "{p:?}");
    let after = aws.status().unwrap().num("tunnel1", "rx_packets").unwrap();
    assert!(
        after - before >= 20.0,
        "the replies came over tunnel1: {before} -> {after}"
    );
}

#[test]
fn charon_behind_a_nat_that_maps_and_then_rebinds_its_port_keeps_tunnel1() {
    // charon's DPD every second: what reaches tandem from the new port when nothing else does.
    let Some(mut aws) = aws_lab("ike_tunnels", PSKS, "1s", AWS_IKE, AWS_ESP) else {
        return;
    };
    nat_in_front_of_charon(&aws, 41_000);
    aws.start_tandem(&tandem_config(false, ""));
    for isp in [Isp::One, Isp::Two] {
        aws.charon(isp)
            .swanctl(["--initiate", "--ike", "aws", "--child", "net"])
            .unwrap();
    }
    // tandem is configured with charon's port 4500 but hears it from 41000: it answers there
    // (a response goes where its request came from) and follows it after IKE_AUTH.
    aws.wait("both tunnels up", UP_TIMEOUT, both_up);
    let charon = v4(Isp::One).1;
    assert_eq!(
        tunnel1_remote(&aws.status().unwrap()),
        Some(format!("{charon}:41000"))
    );
    aws.wait("tunnel1 active", UP_TIMEOUT, |s| {
        s.active().as_deref() == Some("tunnel1")
    });
    pings_through_tunnel1(&aws);

    // The NAT rebinds while the tunnel is idle: tandem's probes to 41000 now die there, until
    // charon's next DPD request arrives from 42000 and tandem follows it.
    nat_in_front_of_charon(&aws, 42_000);
    let moved = Some(format!("{charon}:42000"));
    let took = aws.wait(
        "tandem follows charon to 42000",
        Duration::from_secs(10),
        |s| tunnel1_remote(s) == moved && s.state("tunnel1").as_deref() == Some("up"),
    );
    eprintln!(
        "NAT rebinding on an idle tunnel: tandem follows in {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    aws.wait("tunnel1 active again", UP_TIMEOUT, |s| {
        s.active().as_deref() == Some("tunnel1")
    });
    pings_through_tunnel1(&aws);
    let log = aws.log();
    assert!(
        log.lines()
            .any(|l| l.contains("peer endpoint learned") && l.contains(":42000")),
        "{log}"
    );
}

#[test]
fn charon_behind_a_nat_sends_nat_keepalives_and_tandem_takes_them_without_a_drop() {
    // Behind its NAT, charon sends a NAT-keepalive (one 0xFF byte, RFC 3948) after a second
    // in which it sent nothing else: tandem probes only every 5 s here, and charon's DPD is
    // AWS's 10 s, so most seconds are quiet.
    let Some(mut aws) = AwsLab::build(
        "ike_tunnels",
        &[Isp::One, Isp::Two],
        "  keep_alive = 1s\n",
        |isp| {
            let cgw = v4(isp).0;
            charon_conf(isp, cgw, PSKS[isp as usize], "10s", AWS_IKE, AWS_ESP)
        },
    ) else {
        return;
    };
    nat_in_front_of_charon(&aws, 41_000);
    let config = tandem_config(false, "")
        .replace(
            "socket = \"SOCKET\"\n",
            &format!("socket = \"SOCKET\"\nmetrics_listen = \"127.0.0.1:{METRICS_PORT}\"\n"),
        )
        .replace("dpd_interval = \"100ms\"", "dpd_interval = \"5s\"")
        .replace("dpd_timeout = \"300ms\"", "dpd_timeout = \"15s\"");
    aws.start_tandem(&config);
    for isp in [Isp::One, Isp::Two] {
        aws.charon(isp)
            .swanctl(["--initiate", "--ike", "aws", "--child", "net"])
            .unwrap();
    }
    aws.wait("both tunnels up", UP_TIMEOUT, both_up);
    let malformed = || drop_count(&drops(&metrics(&aws.lab.cgw)), "malformed");
    let keepalives = || nat_keepalives_from_charon(&aws);
    let (m0, k0) = (malformed(), keepalives());
    let start = Instant::now();
    while keepalives() < k0 + 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "charon sent no NAT-keepalives: {k0} -> {}\n{}",
            keepalives(),
            tail(&aws.charon(Isp::One).log(), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "NAT-keepalives from charon through its NAT: {} in {:.1} s",
        keepalives() - k0,
        start.elapsed().as_secs_f64()
    );
    assert_eq!(malformed(), m0, "NAT-keepalives counted as malformed drops");
    assert_eq!(
        aws.status().unwrap().state("tunnel1").as_deref(),
        Some("up")
    );
}

/// How many 1-byte datagrams (NAT-keepalives) from charon the NAT in front of it has passed.
fn nat_keepalives_from_charon(aws: &AwsLab) -> u64 {
    let out = aws
        .lab
        .isp(Isp::One)
        .run("nft", ["list", "chain", "ip", "tdm_nat", "pre"])
        .unwrap();
    out.lines()
        .find(|l| l.contains("udp length 9"))
        .and_then(|l| l.split("packets ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no keepalive counter in:\n{out}"))
}
