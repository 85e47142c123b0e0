//! A hub on one port, with real daemons: one head-end `tandem run` whose every branch tunnel
//! (two per branch, responder-only) shares 100.64.0.1:4500, and 20 branch daemons, each in its
//! own namespace behind a router namespace (`wan`). Asserts: every tunnel Up on both ends, a
//! ping from every branch's LAN address to the hub's answered through its tunnel, and a branch
//! whose source port is rewritten mid-flight (a NAT rebinding, done statelessly in `wan`) keeps
//! its tunnel: the hub follows it to the new port from authenticated packets.
//!
//! Needs root (namespaces, TUN devices, nftables); skips loudly when not root and `CI` is unset.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tandem_netns_tests::netns::{Netns, unique_prefix, veth};
use tandem_netns_tests::process::Bg;
use tandem_netns_tests::tandem::{TempDir, tandem_bin, tandem_cmd, write_private};

const BRANCHES: u32 = 20;
const HUB: &str = "100.64.0.1:4500";

struct Gateway {
    ns: Netns,
    dir: PathBuf,
    daemon: Option<Bg>,
}

impl Gateway {
    fn socket(&self) -> String {
        self.dir.join("control.sock").display().to_string()
    }

    fn start(&mut self) {
        let mut cmd = self.ns.command(tandem_bin().unwrap());
        cmd.args(["run", "-c"])
            .arg(self.dir.join("gw.toml"))
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("TANDEM_KEYLOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("daemon.log")).unwrap());
        self.daemon = Some(Bg::spawn(cmd).unwrap());
    }

    fn status(&self) -> Option<serde_json::Value> {
        let out = tandem_cmd(&["status", "--json", "--socket", &self.socket()], None).ok()?;
        serde_json::from_str(&out).ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

/// (connection, tunnel, state, remote) of every tunnel in a status document.
fn tunnels(status: &serde_json::Value) -> Vec<(String, String, String, Option<String>)> {
    let mut out = Vec::new();
    for c in status["connections"].as_array().unwrap() {
        for t in c["tunnels"].as_array().unwrap() {
            out.push((
                c["name"].as_str().unwrap().to_owned(),
                t["name"].as_str().unwrap().to_owned(),
                t["state"].as_str().unwrap().to_owned(),
                t["remote"].as_str().map(str::to_owned),
            ));
        }
    }
    out
}

fn all_up(g: &Gateway) -> bool {
    g.status()
        .is_some_and(|s| tunnels(&s).iter().all(|t| t.2 == "up"))
}

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    t.elapsed()
}

fn branch_wan(b: u32) -> String {
    format!("198.18.{b}.2")
}

#[test]
fn twenty_branches_on_one_hub_port_all_up_each_pings_and_a_rebound_branch_keeps_its_tunnel() {
    if !tandem_netns_tests::can_run_as_root("hub on one port") {
        return;
    }
    let _serial = tandem_netns_tests::serial();
    let prefix = unique_prefix();
    let dir = TempDir::new("hub").unwrap();
    let wan = Netns::new(&prefix, "wan").unwrap();
    wan.enable_forwarding().unwrap();

    // The hub: 100.64.0.1 towards the wan, 10.0.0.1 on its LAN side (loopback).
    let hub_ns = Netns::new(&prefix, "hub").unwrap();
    veth(&wan, "hub0", &hub_ns, "wan0").unwrap();
    wan.ipw("addr add 100.64.0.254/24 dev hub0").unwrap();
    hub_ns.ipw("addr add 100.64.0.1/24 dev wan0").unwrap();
    hub_ns.ipw("route add default via 100.64.0.254").unwrap();
    hub_ns.ipw("addr add 10.0.0.1/32 dev lo").unwrap();

    let key = |name: &str| {
        let k = tandem_cmd(&["genkey"], None).unwrap();
        write_private(&dir.path().join(name), &k).unwrap();
        tandem_cmd(&["pubkey"], Some(&k)).unwrap().trim().to_owned()
    };
    let hub_pub = key("hub.key");
    let mut hub_conf = format!(
        "[gateway]\nprivate_key_file = \"{}/hub.key\"\ntun_name = \"hub0\"\n\n[control]\nsocket = \"{}/hub/control.sock\"\n\n",
        dir.path().display(),
        dir.path().display()
    );
    let mut branches = Vec::new();
    for b in 0..BRANCHES {
        let ns = Netns::new(&prefix, &format!("br{b}")).unwrap();
        veth(&wan, &format!("br{b}"), &ns, "wan0").unwrap();
        wan.ipw(&format!("addr add 198.18.{b}.1/24 dev br{b}"))
            .unwrap();
        ns.ipw(&format!("addr add {}/24 dev wan0", branch_wan(b)))
            .unwrap();
        ns.ipw(&format!("route add default via 198.18.{b}.1"))
            .unwrap();
        ns.ipw(&format!("addr add 10.100.{b}.1/32 dev lo")).unwrap();
        let bdir = dir.path().join(format!("br{b}"));
        std::fs::create_dir(&bdir).unwrap();
        let bpub = key(&format!("br{b}/gw.key"));
        for t in 1..=2 {
            let psk = tandem_cmd(&["genpsk"], None).unwrap();
            write_private(&bdir.join(format!("t{t}.psk")), &psk).unwrap();
        }
        let bd = bdir.display();
        write_private(
            &bdir.join("gw.toml"),
            &format!(
                "[gateway]\nprivate_key_file = \"{bd}/gw.key\"\ntun_name = \"br{b}\"\n\n\
                 [control]\nsocket = \"{bd}/control.sock\"\n\n\
                 [[connection]]\nname = \"hub\"\npeer_public_key = \"{hub_pub}\"\n\
                 local_subnets = [\"10.100.{b}.0/24\"]\nremote_subnets = [\"10.0.0.0/16\"]\n\
                 dpd_interval = \"100ms\"\ndpd_timeout = \"300ms\"\n\n\
                 [[connection.tunnel]]\nname = \"tunnel1\"\nlocal = \"{w}:4500\"\nremote = \"{HUB}\"\npsk_file = \"{bd}/t1.psk\"\n\n\
                 [[connection.tunnel]]\nname = \"tunnel2\"\nlocal = \"{w}:4501\"\nremote = \"{HUB}\"\npsk_file = \"{bd}/t2.psk\"\n",
                w = branch_wan(b)
            ),
        )
        .unwrap();
        hub_conf.push_str(&format!(
            "[[connection]]\nname = \"branch{b}\"\npeer_public_key = \"{bpub}\"\n\
             local_subnets = [\"10.0.0.0/16\"]\nremote_subnets = [\"10.100.{b}.0/24\"]\n\
             dpd_interval = \"100ms\"\ndpd_timeout = \"300ms\"\n\n\
             [[connection.tunnel]]\nname = \"tunnel1\"\nlocal = \"{HUB}\"\npsk_file = \"{bd}/t1.psk\"\n\n\
             [[connection.tunnel]]\nname = \"tunnel2\"\nlocal = \"{HUB}\"\npsk_file = \"{bd}/t2.psk\"\n\n"
        ));
        branches.push(Gateway {
            ns,
            dir: bdir,
            daemon: None,
        });
    }
    let hdir = dir.path().join("hub");
    std::fs::create_dir(&hdir).unwrap();
    write_private(&hdir.join("gw.toml"), &hub_conf).unwrap();
    let check = tandem_cmd(
        &["check", "-c", &hdir.join("gw.toml").display().to_string()],
        None,
    );
    assert!(
        check.is_ok(),
        "the one-port hub config is refused: {check:?}"
    );
    let mut hub = Gateway {
        ns: hub_ns,
        dir: hdir,
        daemon: None,
    };
    hub.start();
    for g in &mut branches {
        g.start();
    }

    let took = wait(
        "every tunnel Up on the hub",
        Duration::from_secs(30),
        || all_up(&hub) && branches.iter().all(all_up),
    );
    let st = hub.status().unwrap();
    assert_eq!(tunnels(&st).len(), 2 * BRANCHES as usize);
    eprintln!(
        "{} hub tunnels on one port, all Up on both ends after {took:?}",
        2 * BRANCHES
    );
    // The hub has one UDP socket on the port: every branch shares it.
    let sockets = hub.ns.run("ss", ["-Hunap", "sport", "= :4500"]).unwrap();
    assert_eq!(
        sockets.lines().count(),
        1,
        "one socket on the hub port:\n{sockets}"
    );

    for (b, g) in branches.iter().enumerate() {
        let out = g.ns.run(
            "ping",
            [
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "2",
                "-I",
                &format!("10.100.{b}.1"),
                "10.0.0.1",
            ],
        );
        assert!(
            out.is_ok(),
            "branch {b} cannot ping the hub: {out:?}\n{}",
            g.log()
        );
    }

    // Branch 3's tunnel 1 is rebound to source port 40000 by the wan, both ways, without state.
    wan.nft(
        "table ip rebind {\n\
           chain pre { type filter hook prerouting priority -300; \
             ip saddr 198.18.3.2 udp sport 4500 notrack udp sport set 40000; \
             ip daddr 198.18.3.2 udp dport 40000 notrack udp dport set 4500; }\n\
         }",
    )
    .unwrap();
    let moved: SocketAddr = "198.18.3.2:40000".parse().unwrap();
    let followed = wait("the hub follows branch 3", Duration::from_secs(5), || {
        hub.status().is_some_and(|s| {
            tunnels(&s).iter().any(|t| {
                t.0 == "branch3"
                    && t.1 == "tunnel1"
                    && t.3.as_deref() == Some(moved.to_string().as_str())
            })
        })
    });
    eprintln!("the hub followed branch 3 to {moved} after {followed:?}");
    std::thread::sleep(Duration::from_millis(1000));
    let st = hub.status().unwrap();
    let t1 = tunnels(&st)
        .into_iter()
        .find(|t| t.0 == "branch3" && t.1 == "tunnel1")
        .unwrap();
    assert_eq!(t1.2, "up", "branch 3's tunnel after the rebinding: {t1:?}");
    assert!(all_up(&hub), "a rebinding disturbed other tunnels");
    let out = branches[3].ns.run(
        "ping",
        [
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "2",
            "-I",
            "10.100.3.1",
            "10.0.0.1",
        ],
    );
    assert!(out.is_ok(), "branch 3 after the rebinding: {out:?}");
    drop(branches);
    drop(hub);
}
