//! End to end: a reload keeps each tunnel's socket by identity, not by position, and binds what
//! the new configuration needs before it commits anything.
//! - Removing a connection whose tunnel comes first leaves the next tunnel (fixed `local`) on the
//!   very same socket (same inode), where matching by index would have re-bound its address while
//!   the old socket still held it (EADDRINUSE after the engine had already switched).
//! - A reload whose new socket cannot be bound is refused, and the running configuration (status,
//!   sockets) is unchanged.
//!
//! The daemon runs in a network namespace of its own (`unshare --net`: it dies with the
//! process), responder-only tunnels on the namespace's loopback. Needs root (namespace, TUN);
//! skips loudly when not root and `CI` is unset.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod support;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const PEER_PUB: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

fn can_run() -> bool {
    support::can_run_as_root("reload socket tests (network namespace, TUN)")
}

/// A connection with one responder-only tunnel bound to `port` on loopback.
fn connection(dir: &Path, name: &str, subnet: u8, local: &str) -> String {
    format!(
        "[[connection]]\nname = \"{name}\"\npeer_public_key = \"{PEER_PUB}\"\n\
         local_subnets = [\"10.77.{subnet}.0/24\"]\nremote_subnets = [\"10.78.{subnet}.0/24\"]\n\n\
         [[connection.tunnel]]\nname = \"tunnel1\"\nlocal = \"{local}\"\n\
         psk_file = \"{}/t.psk\"\n\n",
        dir.display()
    )
}

struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the daemon with the connections `connections(dir)` builds for its directory.
    fn start(tun: &str, connections: impl Fn(&Path) -> String) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let secret = |name: &str, text: &str| support::write_secret(d, name, text);
        secret(
            "gw.key",
            &support::stdout_of(Command::new(TANDEM).arg("genkey")),
        );
        secret(
            "t.psk",
            &support::stdout_of(Command::new(TANDEM).arg("genpsk")),
        );
        write_config(d, tun, &connections(d));
        let daemon = Daemon {
            child: support::run_in_new_netns(TANDEM, &d.join("gw.toml"), Stdio::null()),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !daemon.status().status.success() {
            assert!(Instant::now() < deadline, "no status within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn tandem(&self, cmd: &str) -> Output {
        Command::new(TANDEM)
            .args([cmd, "--socket"])
            .arg(self.socket())
            .output()
            .unwrap()
    }

    fn status(&self) -> Output {
        Command::new(TANDEM)
            .args(["status", "--json", "--socket"])
            .arg(self.socket())
            .output()
            .unwrap()
    }

    /// `connection/tunnel` names in `tandem status --json`.
    fn tunnels(&self) -> Vec<String> {
        let out = self.status();
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut names = Vec::new();
        for c in v["connections"].as_array().unwrap() {
            for t in c["tunnels"].as_array().unwrap() {
                names.push(format!(
                    "{}/{}",
                    c["name"].as_str().unwrap(),
                    t["name"].as_str().unwrap()
                ));
            }
        }
        names
    }

    /// The UDP sockets of the daemon's namespace: local port -> socket inode.
    fn udp_sockets(&self) -> BTreeMap<u16, u64> {
        let table = std::fs::read_to_string(format!("/proc/{}/net/udp", self.child.id())).unwrap();
        table
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let port = u16::from_str_radix(f[1].rsplit(':').next().unwrap(), 16).unwrap();
                (port, f[9].parse().unwrap())
            })
            .collect()
    }
}

fn write_config(dir: &Path, tun: &str, connections: &str) {
    let d = dir.display();
    let text = format!(
        "[gateway]\nprivate_key_file = \"{d}/gw.key\"\ntun_name = \"{tun}\"\n\n\
         [control]\nsocket = \"{d}/control.sock\"\n\n{connections}"
    );
    std::fs::write(dir.join("gw.toml"), text).unwrap();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn removing_the_first_tunnel_keeps_the_next_one_on_its_own_socket() {
    if !can_run() {
        return;
    }
    let (first, second) = ("127.0.0.1:14801", "127.0.0.1:14802");
    let daemon = Daemon::start("tdm-rl0", |d| {
        connection(d, "first", 1, first) + &connection(d, "second", 2, second)
    });
    let before = daemon.udp_sockets();
    assert_eq!(daemon.tunnels(), ["first/tunnel1", "second/tunnel1"]);
    let inode = *before.get(&14802).expect("second's socket is bound");
    assert!(before.contains_key(&14801), "{before:?}");

    write_config(
        daemon.dir(),
        "tdm-rl0",
        &connection(daemon.dir(), "second", 2, second),
    );
    let reload = daemon.tandem("reload");
    assert!(
        reload.status.success(),
        "removing the first connection was refused: {reload:?}"
    );
    let after = daemon.udp_sockets();
    assert_eq!(daemon.tunnels(), ["second/tunnel1"]);
    assert_eq!(
        after.get(&14802),
        Some(&inode),
        "the kept tunnel moved to another socket: {before:?} -> {after:?}"
    );
    assert!(
        !after.contains_key(&14801),
        "the removed tunnel's socket is still open: {after:?}"
    );
}

#[test]
fn a_reload_whose_socket_cannot_be_bound_changes_nothing() {
    if !can_run() {
        return;
    }
    let daemon = Daemon::start("tdm-rl1", |d| connection(d, "first", 1, "127.0.0.1:14811"));
    let before = daemon.udp_sockets();
    assert!(before.contains_key(&14811), "{before:?}");
    // 192.0.2.77 is on no interface of the namespace: the bind fails (EADDRNOTAVAIL).
    let d = daemon.dir();
    let bad = connection(d, "first", 1, "127.0.0.1:14811")
        + &connection(d, "second", 2, "192.0.2.77:14812");
    write_config(d, "tdm-rl1", &bad);
    let reload = daemon.tandem("reload");
    assert!(
        !reload.status.success(),
        "an unbindable socket was accepted"
    );
    let err = String::from_utf8_lossy(&reload.stderr);
    assert!(
        err.contains("192.0.2.77:14812"),
        "the error names the address: {err}"
    );
    assert_eq!(
        daemon.tunnels(),
        ["first/tunnel1"],
        "the engine took the new configuration"
    );
    assert_eq!(daemon.udp_sockets(), before);
}
