//! tshark reads tandem's IKEv2 tunnels, as an operator debugging one would (docs/operations.md,
//! "Decrypting a capture"): a capture on isp1 while `tandem run` (with `TANDEM_KEYLOG`) brings
//! tunnel1 up to an AWS-like charon (strongSwan, ike/README.md) and the office pings the VPC
//! through it; then `deploy/tshark/keylog-to-tshark.sh` turns the key log into tshark options and
//! tshark
//! - (a) decodes IKE_SA_INIT, IKE_AUTH and INFORMATIONAL (UDP 4500 with the RFC 3948 non-ESP
//!   marker) with the IKE SPIs that the key log and `tandem status` give;
//! - (b) decrypts the ESP of both directions to the inner ICMP echoes (addresses and ident);
//! - (c) decrypts IKE_AUTH with the key log's `ike` line (AES-GCM-256-16, RFC 5282, which the
//!   IKEv2 decryption table of tshark 4.0 supports) to its IDi, IDr and AUTH payloads;
//! - and the same from the configuration directory the script writes with `--dir` (what a
//!   Wireshark user points `WIRESHARK_CONFIG_DIR` at).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tandem_netns_tests::capture::{self, Capture};
use tandem_netns_tests::charon::{AwsLikeConn, Charon, route_into_libipsec};
use tandem_netns_tests::netns::checked;
use tandem_netns_tests::process::Bg;
use tandem_netns_tests::tandem::{Status, TempDir, tandem_bin, tandem_cmd, write_private};
use tandem_netns_tests::topo::{Family, HeadEnds, Isp, Lab, cgw_wan, office_ip, vpc_ip, vpcgw_wan};
use tandem_netns_tests::traffic::{ping, wait_reachable};

const PSK: &str = "tunnel1.psk_for_the_capture_test";
/// Echo requests the office sends through the tunnel (after the reachability check).
const PINGS: u32 = 10;
/// IKE exchange types (RFC 7296 §3.1).
const IKE_SA_INIT: u32 = 34;
const IKE_AUTH: u32 = 35;
const INFORMATIONAL: u32 = 37;

/// The operator's script, from the repository.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tshark/keylog-to-tshark.sh")
}

fn config(socket: &Path) -> String {
    format!(
        r#"[control]
socket = "{socket}"

[[connection]]
name = "aws"
protocol = "ikev2"
local_subnets = ["10.10.0.0/24"]
remote_subnets = ["10.20.0.0/24"]
dpd_interval = "100ms"
dpd_timeout = "1s"

[connection.ike]
proposals = ["aes256gcm16-prfsha256-ecp384"]
esp_proposals = ["aes256gcm16-ecp384"]

[[connection.tunnel]]
name = "tunnel1"
local = "{local}"
remote = "{remote}"
psk_file = "tunnel1.psk"
"#,
        socket = socket.display(),
        local = cgw_wan(Isp::One, Family::V4),
        remote = vpcgw_wan(Isp::One, Family::V4),
    )
}

/// `tshark -r pcap ARGS -T fields -e F…` (fields separated by tabs, the last occurrence of a
/// field in a packet, so the inner IP header's addresses for a decrypted ESP packet).
fn fields(pcap: &Path, args: &[String], filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    fields_occ(pcap, args, filter, fields, "l")
}

/// [`fields`] with tshark's `-E occurrence=` (`f`, `l` or `a`: all, comma-separated).
fn fields_occ(
    pcap: &Path,
    args: &[String],
    filter: &str,
    fields: &[&str],
    occurrence: &str,
) -> Vec<Vec<String>> {
    let mut a: Vec<String> = args.to_vec();
    let occ = format!("occurrence={occurrence}");
    a.extend(["-Y", filter, "-T", "fields", "-E", &occ].map(String::from));
    for f in fields {
        a.push("-e".into());
        a.push((*f).into());
    }
    capture::read(pcap, &a)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// The tshark options the script makes of the key log, one per line.
fn options_from_script(keylog: &Path) -> Vec<String> {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg(script()).arg(keylog);
    checked(cmd).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn tshark_decodes_tandems_ikev2_exchanges_and_decrypts_esp_and_ike_auth_from_the_key_log() {
    if !tandem_netns_tests::can_run_as_root("ike_tshark") {
        return;
    }
    let lab = Lab::build(HeadEnds::One).unwrap();
    let (cgw, vpcgw) = (
        cgw_wan(Isp::One, Family::V4),
        vpcgw_wan(Isp::One, Family::V4),
    );
    let charon = Charon::start(&lab.vpcgw).unwrap();
    charon
        .load(&AwsLikeConn {
            local: vpcgw,
            remote: cgw,
            psk: PSK.into(),
            ike_proposal: "aes256gcm16-prfsha256-ecp384".into(),
            esp_proposal: "aes256gcm16-ecp384".into(),
            local_ts: "10.20.0.0/16".into(),
            remote_ts: "10.10.0.0/16".into(),
        })
        .unwrap();
    route_into_libipsec(&lab.vpcgw, "10.10.0.0/16").unwrap();
    lab.vpc_via(Isp::One).unwrap();

    let dir = TempDir::new("ike-tshark").unwrap();
    let socket = dir.path().join("control.sock");
    let keylog = dir.path().join("keys.log");
    write_private(&dir.path().join("tunnel1.psk"), &format!("{PSK}\n")).unwrap();
    let conf = dir.path().join("aws.toml");
    write_private(&conf, &config(&socket)).unwrap();

    let cap = Capture::start(&lab.isp1, "cgw", "udp", &dir.path().join("isp1.pcap")).unwrap();
    let log_path = dir.path().join("tandem.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let mut cmd = lab.cgw.command(tandem_bin().unwrap());
    cmd.arg("run")
        .arg("-c")
        .arg(&conf)
        .env("RUST_LOG", "info")
        .env("TANDEM_KEYLOG", &keylog)
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let start = Instant::now();
    let mut tandem = Bg::spawn(cmd).unwrap();
    let sock = socket.display().to_string();
    let status = || -> Option<Status> {
        let text = tandem_cmd(&["status", "--json", "--socket", &sock], None).ok()?;
        serde_json::from_str(&text).ok().map(Status)
    };
    while status().and_then(|s| s.state("tunnel1")).as_deref() != Some("up") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tunnel1 not Up: {:?}\n{}",
            status().map(|s| s.0),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "tandem run -> tunnel1 Up against charon: {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    wait_reachable(&lab.office, vpc_ip(Family::V4), Duration::from_secs(5)).unwrap();
    let p = ping(
        &lab.office,
        vpc_ip(Family::V4),
        PINGS,
        Duration::from_millis(10),
    )
    .unwrap();
    assert_eq!(p.received, u64::from(PINGS), "{p:?}");
    // Idle: tandem's liveness (an empty INFORMATIONAL every dpd_interval without traffic).
    std::thread::sleep(Duration::from_millis(500));
    let s = status().unwrap();
    let pcap = cap.stop();
    tandem.stop(Duration::from_secs(3));
    drop(charon);

    let t = s.tunnel("tunnel1").unwrap();
    let (spi_i, spi_r) = (
        t["ike_spi_i"].as_str().unwrap().to_owned(),
        t["ike_spi_r"].as_str().unwrap().to_owned(),
    );
    let (spi_in, spi_out) = s.spis("tunnel1").unwrap();
    let keys = std::fs::read_to_string(&keylog).unwrap();
    let ike_line: Vec<&str> = keys
        .lines()
        .find(|l| l.split_whitespace().nth(3) == Some("ike"))
        .unwrap_or_else(|| panic!("no ike line in the key log:\n{keys}"))
        .split_whitespace()
        .collect();
    assert_eq!((ike_line[4], ike_line[5]), (&*spi_i, &*spi_r), "{keys}");
    let esp_spis: BTreeSet<u32> = capture::parse_keylog(
        &keys
            .lines()
            .filter(|l| l.split_whitespace().nth(3) != Some("ike"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap()
    .iter()
    .map(|e| e.spi)
    .collect();
    assert!(
        esp_spis.contains(&spi_in) && esp_spis.contains(&spi_out),
        "{spi_in:#x}/{spi_out:#x} not in the key log:\n{keys}"
    );

    // (a) The IKE exchanges, decoded without any key.
    let hex = |s: &str| s.trim_start_matches("0x").to_owned();
    let ike = fields(
        &pcap,
        &[],
        "isakmp",
        &["isakmp.exchangetype", "isakmp.ispi", "isakmp.rspi"],
    );
    let of_type = |x: u32| {
        ike.iter()
            .filter(|r| r[0].parse::<u32>().ok() == Some(x))
            .collect::<Vec<_>>()
    };
    let init = of_type(IKE_SA_INIT);
    assert_eq!(init.len(), 2, "IKE_SA_INIT request and response: {ike:?}");
    assert_eq!(hex(&init[0][1]), spi_i, "{ike:?}");
    assert_eq!(hex(&init[1][2]), spi_r, "{ike:?}");
    let auth = of_type(IKE_AUTH);
    assert_eq!(auth.len(), 2, "IKE_AUTH request and response: {ike:?}");
    let info = of_type(INFORMATIONAL);
    assert!(info.len() >= 2, "no INFORMATIONAL exchange: {ike:?}");
    for r in auth.iter().chain(&info) {
        assert_eq!(
            (hex(&r[1]), hex(&r[2])),
            (spi_i.clone(), spi_r.clone()),
            "{r:?}"
        );
    }
    // tshark sees the ESP packets under the SPIs of the key log and of `tandem status`.
    let esp_spis: Vec<u32> = fields(&pcap, &[], "esp", &["esp.spi"])
        .iter()
        .filter_map(|r| u32::from_str_radix(&hex(&r[0]), 16).ok())
        .collect();
    let esp_packets = |spi: u32| esp_spis.iter().filter(|s| **s == spi).count();
    assert_eq!(
        esp_spis.iter().copied().collect::<BTreeSet<u32>>(),
        BTreeSet::from([spi_in, spi_out]),
        "ESP SPIs on the wire"
    );

    let check = |opts: &[String], how: &str| {
        // (b) ESP decrypted both ways: the office's echo requests to the VPC under spi_out,
        // the VPC's replies under spi_in, with the same idents.
        let icmp = fields(
            &pcap,
            opts,
            "esp && icmp",
            &["esp.spi", "ip.src", "ip.dst", "icmp.type", "icmp.ident"],
        );
        let (o, v) = (office_ip(Family::V4), vpc_ip(Family::V4));
        let echoes = |spi: u32, src: IpAddr, dst: IpAddr, ty: &str| -> BTreeSet<String> {
            let rows: Vec<_> = icmp
                .iter()
                .filter(|r| u32::from_str_radix(&hex(&r[0]), 16).ok() == Some(spi))
                .filter(|r| r[1] == src.to_string() && r[2] == dst.to_string() && r[3] == ty)
                .collect();
            // Only the pings travel in ESP here (liveness is IKE INFORMATIONAL), so every ESP
            // packet captured under the SA decrypts to one of their echoes. (A loaded host's
            // capture may miss a packet, so the count is that of the capture, not of ping.)
            assert!(
                rows.len() == esp_packets(spi) && rows.len() >= PINGS as usize / 2,
                "{how}: {} echoes of type {ty} {src} -> {dst} decrypted from {} ESP packets \
                 under {spi:#x}, want all and >= {}: {icmp:?}",
                rows.len(),
                esp_packets(spi),
                PINGS / 2
            );
            eprintln!(
                "{how}: {} echoes of type {ty} {src} -> {dst} decrypted",
                rows.len()
            );
            rows.iter().map(|r| r[4].clone()).collect()
        };
        let requests = echoes(spi_out, o, v, "8");
        let replies = echoes(spi_in, v, o, "0");
        // Each ping run has its ident; every reply answers a request seen going out.
        assert!(
            replies.is_subset(&requests),
            "{how}: idents {requests:?} / {replies:?}"
        );

        // (c) IKE_AUTH decrypted: the request carries IDi (tandem's address) and the IDr it
        // expects (charon's), the response charon's IDr; both a PSK AUTH (method 2, RFC 7296
        // §3.8).
        let auth = fields_occ(
            &pcap,
            opts,
            &format!("isakmp.exchangetype == {IKE_AUTH}"),
            &["isakmp.id.data.ipv4_addr", "isakmp.auth.method"],
            "a",
        );
        let got: Vec<(String, String)> =
            auth.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
        assert_eq!(
            got,
            vec![
                (format!("{cgw},{vpcgw}"), "2".into()),
                (vpcgw.to_string(), "2".into())
            ],
            "{how}: IKE_AUTH decrypted"
        );
        eprintln!(
            "{how}: {} + {} ICMP echo idents decrypted from ESP, IKE_AUTH IDs {} / {}",
            requests.len(),
            replies.len(),
            got[0].0,
            got[1].0
        );
    };
    let opts = options_from_script(&keylog);
    check(&opts, "tshark -o options from keylog-to-tshark.sh");

    // The same from the Wireshark configuration directory the script writes.
    let conf_dir = dir.path().join("wireshark");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg(script()).arg("--dir").arg(&conf_dir).arg(&keylog);
    checked(cmd).unwrap();
    check_with_config_dir(&pcap, &conf_dir, spi_in, esp_packets(spi_in));
}

/// With `WIRESHARK_CONFIG_DIR` at the script's `--dir` output and no `-o` options, tshark still
/// decrypts every reply (`esp_packets` under `spi_in`) and IKE_AUTH.
fn check_with_config_dir(pcap: &Path, conf_dir: &Path, spi_in: u32, esp_packets: usize) {
    let mut cmd = std::process::Command::new("tshark");
    cmd.env("WIRESHARK_CONFIG_DIR", conf_dir)
        .args(["-n", "-r"])
        .arg(pcap)
        .args([
            "-Y",
            "(esp && icmp.type == 0) || isakmp.id.data.ipv4_addr",
            "-T",
            "fields",
            "-e",
            "esp.spi",
            "-e",
            "isakmp.id.data.ipv4_addr",
        ]);
    let out = checked(cmd).unwrap();
    let replies = out
        .lines()
        .filter_map(|l| l.split('\t').next())
        .filter(|spi| u32::from_str_radix(spi.trim_start_matches("0x"), 16).ok() == Some(spi_in))
        .count();
    // IDi + IDr in the request, IDr in the response.
    let ids: usize = out
        .lines()
        .filter_map(|l| l.split('\t').nth(1))
        .map(|ids| ids.split(',').filter(|a| a.starts_with("192.0.2.")).count())
        .sum();
    assert!(
        replies == esp_packets && ids == 3,
        "WIRESHARK_CONFIG_DIR: {replies} replies, {ids} IDs:\n{out}"
    );
}
