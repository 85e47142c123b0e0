//! End-to-end smoke test of `tandem run` (root): two namespaces, two veth pairs (one IPv4, one
//! IPv6 underlay), two daemons with two tunnels; ping, TCP and UDP through (one UDP datagram with
//! a bad checksum must not come out of TUN-side GRO valid), then `status --json`, `failover`,
//! `reload` (a refused one and a good one), `/metrics`, and a clean SIGTERM stop.
//!
//! Self-contained on purpose (the full lab lives in `netns-tests/`). Namespaces get unique names
//! and are deleted in `Drop`, even when an assertion fails.
#![allow(clippy::unwrap_used, clippy::print_stderr, clippy::print_stdout)]

mod support;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::is_root;
use support::lab::Lab;
use support::sh;

/// Namespaces a and b joined by two veth pairs: `u1` with IPv4 (172.30.1.1 and .2) and `u2` with
/// IPv6 (fd00:30:2::1 and ::2).
fn new_lab() -> Lab {
    let lab = Lab::new("smk", &["a", "b"]);
    lab.veth("u1", ["a", "b"], ["172.30.1.1/24", "172.30.1.2/24"]);
    lab.veth("u2", ["a", "b"], ["fd00:30:2::1/64", "fd00:30:2::2/64"]);
    lab
}

fn config(
    lab: &Lab,
    side: &str,
    peer: &str,
    local: &str,
    remote: &str,
    ends: [(&str, &str); 2],
    extra_remote: &str,
) -> String {
    let addr = if side == "a" {
        "10.201.1.1/24"
    } else {
        "10.201.2.1/24"
    };
    let metrics = if side == "a" {
        "metrics_listen = \"127.0.0.1:9810\"\n"
    } else {
        ""
    };
    format!(
        r#"[gateway]
private_key_file = "{dir}/{side}.key"
tun_name = "tdm{side}"
mtu = 1400
address = "{addr}"

[control]
socket = "{dir}/{side}.sock"
{metrics}
[[connection]]
name = "conn"
peer_public_key_file = "{dir}/{peer}.pub"
local_subnets = ["{local}"]
remote_subnets = ["{remote}"{extra_remote}]
failback = "1s"
dpd_interval = "100ms"
dpd_timeout = "300ms"

[[connection.tunnel]]
name = "t1"
local = "{l1}"
remote = "{r1}"
psk_file = "{dir}/t1.psk"
priority = 1

[[connection.tunnel]]
name = "t2"
local = "{l2}"
remote = "{r2}"
psk_file = "{dir}/t2.psk"
priority = 2
"#,
        dir = lab.dir.display(),
        l1 = ends[0].0,
        r1 = ends[0].1,
        l2 = ends[1].0,
        r2 = ends[1].1,
    )
}

/// Three pings from namespace `ns` to `dst`, 200 ms apart: whether any was answered.
fn ping(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "-q", dst,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn tunnel<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["connections"][0]["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap()
}

fn both_up(status: Option<serde_json::Value>) -> bool {
    status.is_some_and(|s| tunnel(&s, "t1")["state"] == "up" && tunnel(&s, "t2")["state"] == "up")
}

/// Send `total` bytes over TCP from namespace `from` to `to_addr` (a listener in namespace `to`):
/// large writes, so the sender's kernel hands the TUN TSO super-packets when offloads are on.
/// Returns the bytes received and whether their content matched.
fn tcp_transfer(from: &str, to: &str, to_addr: &str, total: usize) -> (usize, bool) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let to_ns = PathBuf::from(format!("/run/netns/{to}"));
    let listen = to_addr.to_owned();
    let server = std::thread::spawn(move || {
        tandem::dataplane::sys::enter_netns(&to_ns).unwrap();
        let l = std::net::TcpListener::bind(&listen).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = 0usize;
        let mut ok = true;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    ok &= buf[..n]
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == ((got + i) % 251) as u8);
                    got += n;
                }
            }
        }
        (got, ok)
    });
    ready_rx.recv().unwrap();
    let from_ns = PathBuf::from(format!("/run/netns/{from}"));
    let dst = to_addr.to_owned();
    std::thread::spawn(move || {
        tandem::dataplane::sys::enter_netns(&from_ns).unwrap();
        let mut s = std::net::TcpStream::connect(&dst).unwrap();
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        s.write_all(&data).unwrap();
    })
    .join()
    .unwrap();
    server.join().unwrap()
}

/// Send `n` UDP datagrams of `len` bytes (sequence number in the first 4 bytes, then a pattern)
/// from namespace `from` to `to_addr` in namespace `to`; returns how many arrived intact (each
/// exactly `len` bytes: coalesced runs must be split again before the socket).
fn udp_burst(from: &str, to: &str, to_addr: &str, n: u32, len: usize) -> (u32, u32) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let to_ns = PathBuf::from(format!("/run/netns/{to}"));
    let listen = to_addr.to_owned();
    let server = std::thread::spawn(move || {
        tandem::dataplane::sys::enter_netns(&to_ns).unwrap();
        let s = std::net::UdpSocket::bind(&listen).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let (mut intact, mut bad) = (0u32, 0u32);
        let mut buf = vec![0u8; 65536];
        while let Ok(got) = s.recv(&mut buf) {
            let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let ok = got == len
                && buf[4..got]
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == (seq as usize + i) as u8);
            if ok { intact += 1 } else { bad += 1 }
        }
        (intact, bad)
    });
    ready_rx.recv().unwrap();
    let from_ns = PathBuf::from(format!("/run/netns/{from}"));
    let dst = to_addr.to_owned();
    std::thread::spawn(move || {
        tandem::dataplane::sys::enter_netns(&from_ns).unwrap();
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut d = vec![0u8; len];
        for seq in 0..n {
            d[..4].copy_from_slice(&seq.to_be_bytes());
            for (i, b) in d[4..].iter_mut().enumerate() {
                *b = (seq as usize + i) as u8;
            }
            s.send_to(&d, &dst).unwrap();
            if seq % 32 == 31 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
    .join()
    .unwrap();
    server.join().unwrap()
}

/// The kernel's `Udp: InCsumErrors` counter in namespace `ns` (datagrams it dropped for a bad
/// checksum).
fn udp_csum_errors(ns: &str) -> u64 {
    let out = sh(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "InCsumErrors")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Send `n` UDP datagrams of one flow from `src` in namespace `from` to `to_addr` in namespace
/// `to`, back to back through a raw socket so that the checksums are ours, with datagram `bad`'s
/// payload corrupted after its checksum was written (as a bad link on the far LAN would). Returns
/// the sequence numbers that arrived intact, and how many arrived damaged.
fn udp_burst_with_one_corrupted(
    (from, src): (&str, [u8; 4]),
    (to, to_addr): (&str, std::net::SocketAddrV4),
    n: u32,
    bad: u32,
) -> (Vec<u32>, u32) {
    const LEN: usize = 1000;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let to_ns = PathBuf::from(format!("/run/netns/{to}"));
    let server = std::thread::spawn(move || {
        tandem::dataplane::sys::enter_netns(&to_ns).unwrap();
        let s = std::net::UdpSocket::bind(to_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let (mut intact, mut damaged) = (Vec::new(), 0u32);
        let mut buf = vec![0u8; 65536];
        while let Ok(got) = s.recv(&mut buf) {
            let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let ok = got == LEN && buf[4..got].iter().all(|&b| b == seq as u8);
            if ok { intact.push(seq) } else { damaged += 1 }
        }
        (intact, damaged)
    });
    ready_rx.recv().unwrap();
    let from_ns = PathBuf::from(format!("/run/netns/{from}"));
    std::thread::spawn(move || {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        use tandem_engine::checksum::{checksum, finish, pseudo_header, sum};
        tandem::dataplane::sys::enter_netns(&from_ns).unwrap();
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).unwrap();
        s.set_header_included_v4(true).unwrap();
        let dst = SockAddr::from(std::net::SocketAddrV4::new(*to_addr.ip(), 0));
        let total = 28 + LEN;
        let mut p = vec![0u8; total];
        for seq in 0..n {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
            p[6] = 0x40;
            p[8] = 64;
            p[9] = 17;
            p[10..12].fill(0);
            p[12..16].copy_from_slice(&src);
            p[16..20].copy_from_slice(&to_addr.ip().octets());
            let c = checksum(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p[20..22].copy_from_slice(&5300u16.to_be_bytes());
            p[22..24].copy_from_slice(&to_addr.port().to_be_bytes());
            p[24..26].copy_from_slice(&((total - 20) as u16).to_be_bytes());
            p[26..28].fill(0);
            p[28..32].copy_from_slice(&seq.to_be_bytes());
            p[32..].fill(seq as u8);
            let c = finish(sum(
                pseudo_header(&p[12..20], 17, (total - 20) as u32),
                &p[20..],
            ));
            p[26..28].copy_from_slice(&c.to_be_bytes());
            if seq == bad {
                p[500] ^= 0x10;
            }
            s.send_to(&p, &dst).unwrap();
        }
    })
    .join()
    .unwrap();
    server.join().unwrap()
}

fn scrape_metrics(ns: &str) -> String {
    let ns = PathBuf::from(format!("/run/netns/{ns}"));
    std::thread::spawn(move || {
        tandem::dataplane::sys::enter_netns(&ns).unwrap();
        let mut s = std::net::TcpStream::connect("127.0.0.1:9810").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    })
    .join()
    .unwrap()
}

#[test]
fn two_daemons_carry_pings_and_answer_status_failover_reload_and_metrics() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the smoke test needs root under CI"
        );
        eprintln!(
            "SKIPPING two_daemons_carry_pings_and_answer_status_failover_reload_and_metrics: needs root"
        );
        return;
    }
    let mut lab = new_lab();
    lab.keys();
    let a_ends = [
        ("172.30.1.1:4500", "172.30.1.2:4500"),
        ("[fd00:30:2::1]:4500", "[fd00:30:2::2]:4500"),
    ];
    let b_ends = [
        ("172.30.1.2:4500", "172.30.1.1:4500"),
        ("[fd00:30:2::2]:4500", "[fd00:30:2::1]:4500"),
    ];
    let a_cfg = lab.path("a.toml");
    std::fs::write(
        &a_cfg,
        config(&lab, "a", "b", "10.201.1.0/24", "10.201.2.0/24", a_ends, ""),
    )
    .unwrap();
    let b_cfg = lab.path("b.toml");
    std::fs::write(
        &b_cfg,
        config(&lab, "b", "a", "10.201.2.0/24", "10.201.1.0/24", b_ends, ""),
    )
    .unwrap();
    let check = lab.tandem(&["check", "-c", a_cfg.to_str().unwrap()], b"");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let (a, b) = (lab.ns("a"), lab.ns("b"));
    lab.start(&a, &a_cfg, "a.log");
    lab.start(&b, &b_cfg, "b.log");
    // Whichever tunnel came up first carried traffic; t1 (priority 1) is active once it has been
    // stable for `failback`.
    let settled = |s: Option<serde_json::Value>| {
        s.is_some_and(|s| s["connections"][0]["active_tunnel"] == "t1" && both_up(Some(s)))
    };
    lab.wait_for(
        "both tunnels up on both sides, t1 active",
        Duration::from_secs(20),
        || settled(lab.status("a")) && settled(lab.status("b")),
    );

    // Traffic crosses, on the preferred tunnel.
    assert!(ping(&a, "10.201.2.1"), "ping a -> b failed\n{}", lab.logs());
    assert!(ping(&b, "10.201.1.1"), "ping b -> a failed\n{}", lab.logs());
    // A bulk TCP stream both ways, checked byte for byte (TSO super-packets split before
    // sealing when the TUN has offloads).
    let (got, ok) = tcp_transfer(&a, &b, "10.201.2.1:5001", 8 << 20);
    assert!(
        got == 8 << 20 && ok,
        "a -> b TCP: {got} bytes, content ok: {ok}\n{}",
        lab.logs()
    );
    let (got, ok) = tcp_transfer(&b, &a, "10.201.1.1:5002", 8 << 20);
    assert!(
        got == 8 << 20 && ok,
        "b -> a TCP: {got} bytes, content ok: {ok}\n{}",
        lab.logs()
    );

    // A burst of UDP datagrams arrives as datagrams of the size sent, intact.
    let (intact, bad) = udp_burst(&a, &b, "10.201.2.1:5003", 500, 1000);
    assert_eq!(bad, 0, "{bad} damaged or resized datagrams");
    assert!(
        intact >= 450,
        "only {intact} of 500 UDP datagrams arrived\n{}",
        lab.logs()
    );

    // A datagram whose UDP checksum is wrong, in the middle of a burst of its flow, is not
    // made valid by the receiving side's TUN GRO: the kernel drops it and counts it, the rest
    // arrive intact.
    let errors0 = udp_csum_errors(&b);
    let to = "10.201.2.1:5004".parse().unwrap();
    let (intact, damaged) = udp_burst_with_one_corrupted((&a, [10, 201, 1, 1]), (&b, to), 64, 32);
    assert_eq!(
        damaged,
        0,
        "a corrupted datagram was delivered\n{}",
        lab.logs()
    );
    assert!(
        !intact.contains(&32),
        "the corrupted datagram was delivered"
    );
    assert!(
        intact.len() >= 60,
        "only {} of 63 good datagrams arrived\n{}",
        intact.len(),
        lab.logs()
    );
    assert_eq!(
        udp_csum_errors(&b) - errors0,
        1,
        "the receiving kernel saw the bad checksum"
    );

    let st = lab.status("a").unwrap();
    let c = &st["connections"][0];
    assert_eq!(c["name"], "conn");
    assert_eq!(c["mode"], "active-standby");
    assert_eq!(c["active_tunnel"], "t1");
    assert_eq!(c["pinned"], false);
    let t1 = tunnel(&st, "t1");
    for f in [
        "name",
        "state",
        "local",
        "remote",
        "spi_in",
        "spi_out",
        "last_handshake_unix",
        "rx_bytes",
        "tx_bytes",
        "rx_packets",
        "tx_packets",
        "rtt_ms",
        "failovers",
    ] {
        assert!(t1.get(f).is_some(), "status field {f} missing: {t1}");
    }
    assert!(t1["rx_packets"].as_u64().unwrap() >= 3, "{t1}");
    assert_eq!(t1["local"], "172.30.1.1:4500");
    assert_eq!(tunnel(&st, "t2")["local"], "[fd00:30:2::1]:4500");

    // The human table names both tunnels.
    let sock_a = lab.path("a.sock");
    let sock_a = sock_a.to_str().unwrap();
    let table = lab.tandem(&["status", "--socket", sock_a], b"");
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains("t1") && table.contains("t2") && table.contains("up"),
        "{table}"
    );

    // Planned failover to the IPv6 tunnel, pinned; traffic follows; then unpin.
    let out = lab.tandem(&["failover", "conn", "--to", "t2", "--socket", sock_a], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = lab.status("a").unwrap();
    assert_eq!(st["connections"][0]["active_tunnel"], "t2");
    assert_eq!(st["connections"][0]["pinned"], true);
    let before = tunnel(&st, "t2")["tx_packets"].as_u64().unwrap();
    assert!(
        ping(&a, "10.201.2.1"),
        "ping over t2 failed\n{}",
        lab.logs()
    );
    let after = tunnel(&lab.status("a").unwrap(), "t2")["tx_packets"]
        .as_u64()
        .unwrap();
    assert!(
        after >= before + 3,
        "pings did not use t2: {before} -> {after}"
    );
    let out = lab.tandem(&["failover", "conn", "--auto", "--socket", sock_a], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lab.status("a").unwrap()["connections"][0]["pinned"], false);

    // User errors exit 1; an absent daemon exits 2.
    let out = lab.tandem(&["failover", "nope", "--socket", sock_a], b"");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = lab.path("missing.sock");
    let out = lab.tandem(&["status", "--socket", missing.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));

    // An invalid new config is refused with its error; the old one keeps running.
    let good = std::fs::read_to_string(&a_cfg).unwrap();
    std::fs::write(
        &a_cfg,
        good.replace("dpd_timeout = \"300ms\"", "dpd_timeout = \"soon\""),
    )
    .unwrap();
    let out = lab.tandem(&["reload", "--socket", sock_a], b"");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("a.toml") && err.contains("dpd_timeout"),
        "{err}"
    );
    assert!(both_up(lab.status("a")));

    // A good reload adds a route on the TUN and lowers its MTU; tunnels stay up and traffic
    // still flows.
    std::fs::write(
        &a_cfg,
        config(
            &lab,
            "a",
            "b",
            "10.201.1.0/24",
            "10.201.2.0/24",
            a_ends,
            ", \"10.201.3.0/24\"",
        )
        .replace("mtu = 1400", "mtu = 1380"),
    )
    .unwrap();
    let out = lab.tandem(&["reload", "--socket", sock_a], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let routes = sh(&["ip", "-n", &a, "route", "show", "dev", "tdma"]);
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains("10.201.3.0/24"),
        "{}",
        String::from_utf8_lossy(&routes.stdout)
    );
    let link = sh(&["ip", "-n", &a, "link", "show", "tdma"]);
    let link = String::from_utf8_lossy(&link.stdout).to_string();
    assert!(link.contains("mtu 1380"), "{link}");
    lab.wait_for("tunnels up after reload", Duration::from_secs(10), || {
        both_up(lab.status("a"))
    });
    assert!(
        ping(&a, "10.201.2.1"),
        "ping after reload failed\n{}",
        lab.logs()
    );

    // SIGHUP reloads too.
    std::fs::write(
        &a_cfg,
        config(
            &lab,
            "a",
            "b",
            "10.201.1.0/24",
            "10.201.2.0/24",
            a_ends,
            ", \"10.201.3.0/24\", \"10.201.4.0/24\"",
        )
        .replace("mtu = 1400", "mtu = 1380"),
    )
    .unwrap();
    let pid = lab.children[0].id().to_string();
    sh(&["kill", "-HUP", &pid]);
    lab.wait_for("the SIGHUP reload's route", Duration::from_secs(10), || {
        let routes = sh(&["ip", "-n", &a, "route", "show", "dev", "tdma"]);
        String::from_utf8_lossy(&routes.stdout).contains("10.201.4.0/24")
    });
    assert!(both_up(lab.status("a")), "{}", lab.logs());

    // A drill: the active tunnel goes silent for 1 s; detection, gap, loss and failback come back,
    // and `--report` writes the page (its content is tested in tandem-admin and in a browser).
    let page = lab.path("drill.html");
    let out = lab.tandem(
        &[
            "drill",
            "conn",
            "--duration",
            "1s",
            "--socket",
            sock_a,
            "--report",
            page.to_str().unwrap(),
        ],
        b"",
    );
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figure = |label: &str| -> Option<f64> {
        let line = report.lines().find(|l| l.trim_start().starts_with(label))?;
        line[line.find(label)? + label.len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let detection =
        figure("detection time").unwrap_or_else(|| panic!("no detection time in\n{report}"));
    // A silent drill is a dead path (engine `Silence::Silent`): the tunnel is not told, it goes
    // Down through its own DPD timeout. The last thing heard (a drill echo, a keepalive every
    // dpd_interval 100 ms) is at most one interval before the silence, so detection takes at
    // least dpd_timeout 300 ms - 100 ms = 200 ms; an admin-down at once would show ~0 ms. Above:
    // dpd_timeout + one interval = 400 ms, with slack for a loaded CI machine.
    assert!((200.0..1000.0).contains(&detection), "{report}");
    assert!(report.contains("switched to t2"), "{report}");
    let lost = figure("probes lost").unwrap_or_else(|| panic!("no probes lost in\n{report}"));
    let gap = figure("traffic gap").unwrap_or_else(|| panic!("no traffic gap in\n{report}"));
    // The probes sent into the dead path until detection are lost: the gap is at least as long
    // as the detection's lower bound.
    assert!(lost > 0.0 && gap >= 200.0, "{report}");
    assert!(
        figure("failback time").is_some(),
        "failback never happened:\n{report}\n{}",
        lab.logs()
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("<svg id=\"timeline\"") && html.contains("id=\"gap\" data-gap-ms=\""),
        "{html}"
    );
    lab.wait_for(
        "both tunnels up after the drill",
        Duration::from_secs(10),
        || both_up(lab.status("a")),
    );
    assert_eq!(
        lab.status("a").unwrap()["connections"][0]["active_tunnel"],
        "t1"
    );

    // Prometheus text, inside a's namespace.
    let text = scrape_metrics(&a);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("tandem_tunnel_up{connection=\"conn\",tunnel=\"t1\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tandem_tunnel_active{connection=\"conn\",tunnel=\"t1\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tandem_dropped_packets_total{reason=\"replay\"}"),
        "{text}"
    );
    // A sample that is missing or does not parse fails here, never reads as 0.
    let sample = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
    };
    let rx = sample("tandem_tunnel_rx_packets_total{connection=\"conn\",tunnel=\"t1\"}");
    assert!(rx >= 3.0, "{text}");
    // The drill moved traffic away from t1 once.
    let failovers = sample("tandem_failovers_total{connection=\"conn\",tunnel=\"t1\"}");
    assert!(failovers >= 1.0, "{text}");

    // Which TUN mode ran (offloads when the kernel allows them), for the test log.
    for line in lab.logs().lines().filter(|l| l.contains("TUN offloads")) {
        eprintln!("{line}");
    }

    // SIGTERM: both stop cleanly and remove their sockets.
    let codes = lab.stop();
    assert_eq!(codes, vec![Some(0), Some(0)], "{}", lab.logs());
    assert!(!lab.path("a.sock").exists());
}
