//! `tandem run` with IKEv2 tunnels on bare addresses (docs/configuration.md): IKE starts on UDP
//! 500 and moves to 4500 after IKE_SA_INIT (RFC 7296 §2.23), against two strongSwan charons
//! configured as AWS configures its endpoints but on charon's default ports (no
//! `remote_port = 4500`): charon initiating to a waiting tandem, and tandem initiating to charon;
//! charon's log shows IKE_SA_INIT on 500 and IKE_AUTH on 4500. Then hostile input against the
//! running daemon: junk at 500 and 4500 and a half-open IKE_SA_INIT flood from many addresses and
//! from the peer's own address, while a new legitimate IKE SA is made: the COOKIE gate answers
//! (`ike_cookie` drops), the tunnels stay Up, tandem's memory stays bounded.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod reliability_common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use reliability_common::{
    Junk, METRICS_PORT, drop_count, drop_delta, drops, flood, many_sources, metrics, nonzero,
};
use tandem_netns_tests::aws_lab::{AWS_ESP, AWS_IKE, AwsLab, PSKS, tail, v4};
use tandem_netns_tests::charon::AwsLikeConn;
use tandem_netns_tests::probe::{ProbeStream, Reflector};
use tandem_netns_tests::process::{cpu_seconds, rss_kib};
use tandem_netns_tests::topo::{Family, Isp, vpc_ip};
use tandem_netns_tests::traffic::{ping, wait_reachable};

const UP_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_PORT: u16 = 7001;

/// charon's side of tunnel `isp` as AWS has it, on charon's default ports: it initiates to
/// port 500 and follows NAT-D to 4500.
fn charon_conf(isp: Isp) -> String {
    let (cgw, vpcgw) = v4(isp);
    AwsLikeConn {
        local: vpcgw,
        remote: cgw,
        psk: PSKS[isp as usize].into(),
        ike_proposal: AWS_IKE.into(),
        esp_proposal: AWS_ESP.into(),
        local_ts: "10.20.0.0/16".into(),
        remote_ts: "10.10.0.0/16".into(),
    }
    .swanctl_conf()
}

/// tandem's config: both tunnels on bare addresses (500, then 4500).
fn tandem_config(initiate: bool) -> String {
    let (l1, r1) = v4(Isp::One);
    let (l2, r2) = v4(Isp::Two);
    format!(
        r#"[control]
socket = "SOCKET"
metrics_listen = "127.0.0.1:{METRICS_PORT}"

[[connection]]
name = "aws"
protocol = "ikev2"
local_subnets = ["10.10.0.0/24"]
remote_subnets = ["10.20.0.0/24"]
dpd_interval = "250ms"
dpd_timeout = "1s"
failback = "1s"

[connection.ike]
proposals = ["{AWS_IKE}"]
esp_proposals = ["{AWS_ESP}"]
initiate = {initiate}

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

/// The lab with a charon on both head-ends, on its default ports; a reauthentication makes the
/// new IKE SA before it deletes the old one.
fn aws_lab(test: &str) -> Option<AwsLab> {
    AwsLab::build(
        test,
        &[Isp::One, Isp::Two],
        "  make_before_break = yes\n",
        charon_conf,
    )
}

fn wait_both_up(aws: &AwsLab) -> Duration {
    aws.wait("both tunnels up", UP_TIMEOUT, |s| s.both_up())
}

/// The UDP ports of the packet charon logged just before (`sending packet`) or just after
/// (`received packet`) the line that contains `what`: `(from port, to port)`.
fn ports_of(log: &str, what: &str) -> Vec<(u16, u16)> {
    let lines: Vec<&str> = log.lines().collect();
    let port_after = |s: &str, key: &str| -> Option<u16> {
        let rest = &s[s.find(key)? + key.len()..];
        let open = rest.find('[')?;
        let close = rest[open..].find(']')?;
        rest[open + 1..open + close].parse().ok()
    };
    let ports = |l: &str| Some((port_after(l, "from ")?, port_after(l, " to ")?));
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if !l.contains(what) {
            continue;
        }
        // charon logs "generating X" then "sending packet", and "received packet" then
        // "parsed X", on the same thread (the number before the log group) with other lines
        // (key dumps) in between.
        let thread = l.split('[').next().unwrap_or_default();
        let same = |x: &&&str| x.split('[').next() == Some(thread);
        let near = if what.starts_with("generating") {
            lines[i + 1..]
                .iter()
                .filter(same)
                .find(|l| l.contains("sending packet"))
        } else {
            lines[..i]
                .iter()
                .rev()
                .filter(same)
                .find(|l| l.contains("received packet"))
        };
        if let Some(p) = near.and_then(|l| ports(l)) {
            out.push(p);
        }
    }
    out
}

fn ping_both_ways(aws: &AwsLab) {
    let (o, v) = (
        tandem_netns_tests::topo::office_ip(Family::V4),
        vpc_ip(Family::V4),
    );
    wait_reachable(&aws.lab.office, v, Duration::from_secs(5)).unwrap();
    for (from, to) in [(&aws.lab.office, v), (&aws.lab.vpc, o)] {
        let p = ping(from, to, 20, Duration::from_millis(10)).unwrap();
        assert_eq!(p.received, 20, "ping {} -> {to}: {p:?}", from.name());
    }
}

#[test]
fn charon_on_its_default_port_500_initiates_to_a_waiting_tandem_which_follows_it_to_4500() {
    let Some(mut aws) = aws_lab("ike_port500") else {
        return;
    };
    aws.start_tandem(&tandem_config(false));
    // Its sockets are bound once it answers status.
    let deadline = Instant::now() + UP_TIMEOUT;
    while aws.status().is_none() {
        assert!(
            Instant::now() < deadline,
            "tandem never answered status: {}",
            aws.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    for isp in [Isp::One, Isp::Two] {
        aws.charon(isp)
            .swanctl(["--initiate", "--ike", "aws", "--child", "net"])
            .unwrap_or_else(|e| panic!("{e:?}\n{}", aws.log()));
    }
    wait_both_up(&aws);
    eprintln!(
        "charon --initiate (port 500) x2 -> both tunnels Up on tandem: {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    ping_both_ways(&aws);
    let log = aws.charon(Isp::One).log();
    let init = ports_of(&log, "generating IKE_SA_INIT request 0");
    let auth = ports_of(&log, "generating IKE_AUTH request 1");
    eprintln!("charon (initiator): IKE_SA_INIT (from, to) ports {init:?}, IKE_AUTH {auth:?}");
    assert_eq!(init.first(), Some(&(500, 500)), "{log}");
    assert_eq!(auth.first(), Some(&(4500, 4500)), "{log}");
    // tandem answered IKE_SA_INIT on 500 and IKE_AUTH on 4500.
    assert_eq!(
        ports_of(&log, "parsed IKE_SA_INIT response 0").first(),
        Some(&(500, 500)),
        "{log}"
    );
    assert_eq!(
        ports_of(&log, "parsed IKE_AUTH response 1").first(),
        Some(&(4500, 4500)),
        "{log}"
    );
}

#[test]
fn tandem_initiates_on_500_to_charon_on_its_default_ports_and_moves_to_4500() {
    let Some(mut aws) = aws_lab("ike_port500") else {
        return;
    };
    aws.start_tandem(&tandem_config(true));
    let took = wait_both_up(&aws);
    eprintln!(
        "tandem run -> both tunnels Up, IKE_SA_INIT on 500: {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    ping_both_ways(&aws);
    for isp in [Isp::One, Isp::Two] {
        let log = aws.charon(isp).log();
        let init = ports_of(&log, "parsed IKE_SA_INIT request 0");
        let auth = ports_of(&log, "parsed IKE_AUTH request 1");
        eprintln!("charon {isp:?} (responder): IKE_SA_INIT (from, to) {init:?}, IKE_AUTH {auth:?}");
        assert_eq!(init.first(), Some(&(500, 500)), "{log}");
        assert_eq!(auth.first(), Some(&(4500, 4500)), "{log}");
    }
}

/// Real IKE_SA_INIT requests as charon would send them to tandem (the AWS proposal, so an
/// admitted one costs tandem an ECP-384 DH), each with its own SPIi.
fn ike_sa_inits(n: usize) -> Vec<Vec<u8>> {
    use tandem_ike::ts::ipv4_prefix;
    use tandem_ike::{Config, Identity, IkeSa, NatT, Psk};
    let ip4 = |a: IpAddr| match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!(),
    };
    let (cgw, vpcgw) = v4(Isp::One);
    let cfg = Config {
        psk: Psk::new(b"flood-psk-unknown".as_slice()),
        local_id: Identity::Ipv4(ip4(vpcgw)),
        remote_id: Identity::Ipv4(ip4(cgw)),
        ike_proposals: vec![AWS_IKE.parse().unwrap()],
        esp_proposals: vec![AWS_ESP.parse().unwrap()],
        local_ts: vec![ipv4_prefix(std::net::Ipv4Addr::new(10, 20, 0, 0), 16)],
        remote_ts: vec![ipv4_prefix(std::net::Ipv4Addr::new(10, 10, 0, 0), 16)],
        nat_t: Some(NatT {
            local: SocketAddr::new(vpcgw, 500),
            remote: SocketAddr::new(cgw, 500),
            force: true,
        }),
    };
    let mut rng =
        <rand_chacha::ChaCha20Rng as tandem_crypto::rand_core::SeedableRng>::seed_from_u64(7);
    let template = IkeSa::initiate(cfg, Instant::now(), &mut rng)
        .poll_transmit()
        .unwrap();
    (0..n)
        .map(|i| {
            let mut d = template.clone();
            d[..8].copy_from_slice(&(0x7700_0000_0000_0000u64 + i as u64).to_be_bytes());
            d
        })
        .collect()
}

/// The non-ESP marker before each message: an IKE_SA_INIT on the NAT-T port.
fn with_marker(msgs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    msgs.iter().map(|m| [&[0u8; 4][..], m].concat()).collect()
}

#[test]
fn junk_and_a_half_open_flood_at_500_and_4500_meet_cookies_while_the_tunnels_stay_up_and_a_new_ike_sa_completes()
 {
    let Some(mut aws) = aws_lab("ike_port500 hostile") else {
        return;
    };
    let _g = tandem_netns_tests::serial();
    aws.start_tandem(&tandem_config(true));
    wait_both_up(&aws);
    let _reflector = Reflector::start(&aws.lab.vpc, PROBE_PORT).unwrap();
    let target = SocketAddr::new(vpc_ip(Family::V4), PROBE_PORT);
    wait_reachable(&aws.lab.office, vpc_ip(Family::V4), Duration::from_secs(5)).unwrap();
    let pid = aws.pid();
    let (cgw, vpcgw) = v4(Isp::One);
    let spi_before = aws.status().unwrap().tunnel("tunnel1").unwrap()["ike_spi_i"]
        .as_str()
        .unwrap()
        .to_owned();

    // A quiet baseline of the same length as the flood, for the CPU ratio.
    const FLOOD_SECS: u64 = 6;
    let stream = ProbeStream::start(&aws.lab.office, target).unwrap();
    let (cpu0, rss0) = (cpu_seconds(pid).unwrap(), rss_kib(pid, false).unwrap());
    std::thread::sleep(Duration::from_secs(FLOOD_SECS));
    let cpu_quiet = cpu_seconds(pid).unwrap() - cpu0;
    let m0 = drops(&metrics(&aws.lab.cgw));

    // The attacker sits in isp1: 200 addresses of its own and the peer's address.
    let sources = many_sources(&aws.lab.isp1, "203.0.113.0/24", 200);
    let inits = ike_sa_inits(4096);
    let per_sec = 2000;
    let n = per_sec * FLOOD_SECS;
    let kinds = |msgs: Vec<Vec<u8>>| vec![Junk::Random, Junk::Control, Junk::Messages(msgs)];
    let mut floods = Vec::new();
    for (port, msgs) in [(500, inits.clone()), (4500, with_marker(&inits))] {
        // From many addresses: junk and IKE_SA_INITs nobody configured.
        floods.push(flood(
            &aws.lab.isp1,
            sources.clone(),
            SocketAddr::new(cgw, port),
            kinds(msgs.clone()),
            per_sec as u32,
            n,
            port as u8,
        ));
        // From the peer's own address (its IKE ports): these reach tunnel1's gate.
        floods.push(flood(
            &aws.lab.isp1,
            vec![SocketAddr::new(vpcgw, 40000 + port)],
            SocketAddr::new(cgw, port),
            vec![Junk::Messages(msgs)],
            (per_sec / 2) as u32,
            n / 2,
            port as u8 + 1,
        ));
    }
    let cpu1 = cpu_seconds(pid).unwrap();
    let watch_start = Instant::now();
    let log_before = aws.log().len();
    // A new legitimate IKE SA from charon during the flood: a reauthentication, make before
    // break (IKE_SA_INIT on 500, so it meets the cookie gate the flood has closed).
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    let initiated = aws
        .charon(Isp::One)
        .swanctl(["--rekey", "--ike", "aws", "--reauth"]);
    let mut new_sa_ms = None;
    let mut not_up = Vec::new();
    let mut peak_rss = rss_kib(pid, false).unwrap();
    while watch_start.elapsed() < Duration::from_secs(FLOOD_SECS) {
        match aws.status() {
            Some(s) if s.both_up() => {
                let spi = s.tunnel("tunnel1").unwrap()["ike_spi_i"]
                    .as_str()
                    .map(str::to_owned);
                if new_sa_ms.is_none() && spi.is_some_and(|x| x != spi_before) {
                    new_sa_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            other => not_up.push(other.map(|s| s.0.to_string())),
        }
        peak_rss = peak_rss.max(rss_kib(pid, false).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let reports: Vec<_> = floods.into_iter().map(|f| f.join().unwrap()).collect();
    let cpu_flood = cpu_seconds(pid).unwrap() - cpu1;
    let probes = stream.stop().unwrap();
    let d = drop_delta(&m0, &drops(&metrics(&aws.lab.cgw)));
    let s = aws.status().unwrap();
    let spi_after = s.tunnel("tunnel1").unwrap()["ike_spi_i"]
        .as_str()
        .unwrap()
        .to_owned();
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    eprintln!(
        "flood: {sent} datagrams in {FLOOD_SECS} s ({reports:?}); tandem drops {:?}",
        nonzero(&d)
    );
    eprintln!(
        "tandem RSS {rss0} KiB before, peak {peak_rss} KiB during the flood; CPU {cpu_flood:.2} s \
         under the flood vs {cpu_quiet:.2} s quiet over {FLOOD_SECS} s ({:.1}x); charon's new IKE \
         SA on tandem after {new_sa_ms:?} ms; probes {probes}",
        cpu_flood / cpu_quiet.max(0.01)
    );
    let charon_log = aws.charon(Isp::One).log();
    initiated.unwrap_or_else(|e| panic!("charon's new IKE SA: {e:?}\n{}", tail(&charon_log, 80)));
    assert!(
        charon_log.contains("parsed IKE_SA_INIT response 0 [ N(COOKIE) ]"),
        "charon's new IKE SA met the cookie gate: {}",
        tail(&charon_log, 80)
    );
    assert_ne!(spi_before, spi_after, "tandem took charon's new IKE SA");
    assert!(
        drop_count(&d, "ike_cookie") > 0,
        "the flood from the peer's address got cookies: {d:?}"
    );
    assert!(
        drop_count(&d, "malformed") + drop_count(&d, "handshake") > 0,
        "junk counted: {d:?}"
    );
    assert!(
        not_up.is_empty(),
        "a tunnel left Up during the flood: {not_up:?}\n{}",
        aws.log()
    );
    let log = aws.log();
    let downs: Vec<&str> = log[log_before..]
        .lines()
        .filter(|l| {
            l.contains("tunnel state changed")
                && (l.contains("to=down") || l.contains("to=\"down\""))
        })
        .collect();
    assert!(downs.is_empty(), "a Down event: {downs:?}");
    // Bounded: the flood leaves no state behind per datagram (a DH-less cookie each).
    assert!(
        peak_rss < rss0 + 8 * 1024,
        "RSS grew from {rss0} to {peak_rss} KiB under the flood"
    );
    // Pings pass after the flood (a loaded 2-core lab host lost 1 of 20 once through charon's
    // libipsec, as ike_tunnels has seen: at least 18 of 20 each way).
    let (o, v) = (
        tandem_netns_tests::topo::office_ip(Family::V4),
        vpc_ip(Family::V4),
    );
    for (from, to) in [(&aws.lab.office, v), (&aws.lab.vpc, o)] {
        let p = ping(from, to, 20, Duration::from_millis(10)).unwrap();
        assert!(p.received >= 18, "ping {} -> {to}: {p:?}", from.name());
    }
}
