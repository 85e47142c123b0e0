//! `tandem events` and `[hooks]` end to end (root): two daemons in two namespaces with two
//! tunnels. Side a has `on_up`/`on_down` hooks (a script that writes its environment to a file,
//! and hangs when the tunnel goes down) and three event listeners: two `tandem events --json`
//! and one raw connection that never reads. The tunnels coming Up, a drill and a flood of planned
//! switches must reach both reading listeners; the one that never reads must be disconnected
//! while the others keep receiving; the hooks must see the docs/configuration.md environment, and
//! the hanging one must be killed at its `timeout`; a listener beyond the cap is refused.
//!
//! Namespaces get unique names and are deleted in `Drop`, even when an assertion fails.
#![allow(clippy::unwrap_used, clippy::print_stderr, clippy::print_stdout)]

mod support;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::sh;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// Two namespaces joined by one veth, a scratch directory, and the processes; all removed on drop.
struct Lab {
    a: String,
    b: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Lab {
    fn new() -> Lab {
        let id = support::unique_id();
        let lab = Lab {
            a: format!("tdevt{id}a"),
            b: format!("tdevt{id}b"),
            dir: std::env::temp_dir().join(format!("tandem-events-{id}")),
            children: Vec::new(),
        };
        let _ = std::fs::remove_dir_all(&lab.dir);
        std::fs::create_dir_all(lab.dir.join("hooks")).unwrap();
        sh(&["ip", "netns", "add", &lab.a]);
        sh(&["ip", "netns", "add", &lab.b]);
        sh(&[
            "ip", "-n", &lab.a, "link", "add", "u1", "type", "veth", "peer", "name", "u1", "netns",
            &lab.b,
        ]);
        for (ns, v4) in [(&lab.a, "172.30.7.1/24"), (&lab.b, "172.30.7.2/24")] {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", ns, "addr", "add", v4, "dev", "u1"]);
            sh(&["ip", "-n", ns, "link", "set", "u1", "up"]);
        }
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn tandem(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(TANDEM)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    fn write_secret(&self, name: &str, content: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn keys(&self) {
        for side in ["a", "b"] {
            let key = self.tandem(&["genkey"], b"").stdout;
            self.write_secret(&format!("{side}.key"), &key);
            let public = self.tandem(&["pubkey"], &key).stdout;
            std::fs::write(self.path(&format!("{side}.pub")), public).unwrap();
        }
        for t in ["t1", "t2"] {
            let psk = self.tandem(&["genpsk"], b"").stdout;
            self.write_secret(&format!("{t}.psk"), &psk);
        }
    }

    fn config(&self, side: &str, peer: &str, hooks: &str) -> String {
        let (me, them, local, remote) = if side == "a" {
            ("172.30.7.1", "172.30.7.2", "10.207.1.0/24", "10.207.2.0/24")
        } else {
            ("172.30.7.2", "172.30.7.1", "10.207.2.0/24", "10.207.1.0/24")
        };
        format!(
            r#"[gateway]
private_key_file = "{dir}/{side}.key"
tun_name = "tdv{side}"

[control]
socket = "{dir}/{side}.sock"
{hooks}
[[connection]]
name = "conn"
peer_public_key_file = "{dir}/{peer}.pub"
local_subnets = ["{local}"]
remote_subnets = ["{remote}"]
failback = "1s"
dpd_interval = "100ms"
dpd_timeout = "300ms"

[[connection.tunnel]]
name = "t1"
local = "{me}:4500"
remote = "{them}:4500"
psk_file = "{dir}/t1.psk"
priority = 1

[[connection.tunnel]]
name = "t2"
local = "{me}:4501"
remote = "{them}:4501"
psk_file = "{dir}/t2.psk"
priority = 2
"#,
            dir = self.dir.display(),
        )
    }

    fn start(&mut self, ns: &str, config: &Path, log: &str) {
        let log = std::fs::File::create(self.path(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, TANDEM, "run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    /// `tandem events --json` on side a, its output in `file`.
    fn listen(&mut self, file: &str) {
        let out = std::fs::File::create(self.path(file)).unwrap();
        let child = Command::new(TANDEM)
            .args(["events", "--json", "--socket"])
            .arg(self.path("a.sock"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "--- a.log\n{}\n--- b.log\n{}",
            self.read("a.log"),
            self.read("b.log")
        )
    }

    /// One control request on side a, answered.
    fn request(&self, body: &str) -> serde_json::Value {
        let mut s = UnixStream::connect(self.path("a.sock")).unwrap();
        s.write_all(body.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The events of one listener's output, parsed.
fn events(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn has(evs: &[serde_json::Value], pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    evs.iter().any(pred)
}

fn env_of(file: &str) -> std::collections::BTreeMap<String, String> {
    file.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("TANDEM_"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn events_reach_every_reading_listener_a_stalled_one_is_dropped_and_hooks_run_with_their_environment()
 {
    if !support::can_run_as_root("the events and hooks test (namespaces, TUN)") {
        return;
    }
    let mut lab = Lab::new();
    lab.keys();
    // The hook writes its environment to hooks/<state>-<tunnel> (and its pid next to it); going
    // down it then hangs, to be killed at the 1 s timeout.
    let hook = lab.path("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nf={dir}/hooks/$TANDEM_STATE-$TANDEM_TUNNEL\nenv > $f.tmp && mv $f.tmp $f\necho $$ > $f.pid\n[ \"$TANDEM_STATE\" = up ] || exec sleep 60\n",
            dir = lab.dir.display()
        ),
    )
    .unwrap();
    sh(&["chmod", "0755", hook.to_str().unwrap()]);
    let hooks = format!(
        "\n[hooks]\non_up = \"{h}\"\non_down = \"{h}\"\ntimeout = \"1s\"\n",
        h = hook.display()
    );
    let a_cfg = lab.path("a.toml");
    std::fs::write(&a_cfg, lab.config("a", "b", &hooks)).unwrap();
    let b_cfg = lab.path("b.toml");
    std::fs::write(&b_cfg, lab.config("b", "a", "")).unwrap();
    let (a, b) = (lab.a.clone(), lab.b.clone());
    lab.start(&a, &a_cfg, "a.log");
    lab.wait_for("a's control socket", Duration::from_secs(10), || {
        UnixStream::connect(lab.path("a.sock")).is_ok()
    });
    lab.listen("l1.jsonl");
    lab.listen("l2.jsonl");
    let mut stalled = UnixStream::connect(lab.path("a.sock")).unwrap();
    stalled.write_all(b"{\"command\":\"events\"}\n").unwrap();
    std::thread::sleep(Duration::from_millis(300)); // the listeners subscribe
    lab.start(&b, &b_cfg, "b.log");

    // 1. Both tunnels come Up: every reading listener sees it, and on_up runs with its environment.
    let up = |evs: &[serde_json::Value], t: &str| {
        has(evs, |e| {
            e["event"] == "state"
                && e["tunnel"] == t
                && e["to"] == "up"
                && e["connection"] == "conn"
        })
    };
    for l in ["l1.jsonl", "l2.jsonl"] {
        lab.wait_for(
            &format!("{l}: t1 and t2 up"),
            Duration::from_secs(20),
            || {
                let evs = events(&lab.read(l));
                up(&evs, "t1") && up(&evs, "t2")
            },
        );
        let evs = events(&lab.read(l));
        assert!(
            has(&evs, |e| e["event"] == "switch" && e["to"] == "t1"),
            "{l}: no switch to t1: {evs:?}"
        );
        assert!(
            has(&evs, |e| e["event"] == "handshake" && e["tunnel"] == "t1"),
            "{l}: no handshake: {evs:?}"
        );
        assert!(evs.iter().all(|e| e["unix_ms"].as_u64().is_some()));
    }
    lab.wait_for("on_up for t1", Duration::from_secs(5), || {
        lab.path("hooks/up-t1").exists()
    });
    let env = env_of(&lab.read("hooks/up-t1"));
    assert_eq!(
        env.get("TANDEM_CONNECTION").map(String::as_str),
        Some("conn")
    );
    assert_eq!(env.get("TANDEM_TUNNEL").map(String::as_str), Some("t1"));
    assert_eq!(env.get("TANDEM_STATE").map(String::as_str), Some("up"));
    assert_eq!(
        env.get("TANDEM_CAUSE").map(String::as_str),
        Some("liveness")
    );
    assert_eq!(
        env.get("TANDEM_IFNAME"),
        None,
        "a static-routing tunnel has no ifname"
    );

    // 2. A drill: start and end reach the listeners; t1 leaving Up runs on_down, which hangs
    //    and is killed at the 1 s timeout.
    lab.wait_for("t1 active again", Duration::from_secs(10), || {
        lab.request(r#"{"command":"status"}"#)["data"]["connections"][0]["active_tunnel"] == "t1"
    });
    let drill = lab.tandem(
        &[
            "drill",
            "conn",
            "--duration",
            "1s",
            "--socket",
            lab.path("a.sock").to_str().unwrap(),
        ],
        b"",
    );
    assert!(
        drill.status.success(),
        "drill: {}\n{}",
        String::from_utf8_lossy(&drill.stderr),
        lab.logs()
    );
    for l in ["l1.jsonl", "l2.jsonl"] {
        lab.wait_for(
            &format!("{l}: drill start and end"),
            Duration::from_secs(5),
            || {
                let evs = events(&lab.read(l));
                has(&evs, |e| e["event"] == "drill-start" && e["tunnel"] == "t1")
                    && has(&evs, |e| {
                        e["event"] == "drill-end" && e["report"]["failover_to"] == "t2"
                    })
            },
        );
    }
    let down = std::fs::read_dir(lab.dir.join("hooks"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with("-t1") && !n.starts_with("up-"))
        .unwrap_or_else(|| panic!("on_down did not run for t1\n{}", lab.logs()));
    let env = env_of(&lab.read(&format!("hooks/{down}")));
    assert_eq!(env.get("TANDEM_TUNNEL").map(String::as_str), Some("t1"));
    assert_ne!(env.get("TANDEM_STATE").map(String::as_str), Some("up"));
    assert!(env.contains_key("TANDEM_CAUSE"), "{env:?}");
    let pid = lab.read(&format!("hooks/{down}.pid")).trim().to_owned();
    lab.wait_for("the hanging hook killed", Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(
        lab.read("a.log").contains("hook timed out; killed"),
        "{}",
        lab.logs()
    );

    // 3. A flood of planned switches: the listener that never reads fills its socket and is
    //    dropped; the reading ones get every switch.
    lab.wait_for("t1 active again", Duration::from_secs(10), || {
        lab.request(r#"{"command":"status"}"#)["data"]["connections"][0]["active_tunnel"] == "t1"
    });
    let before = events(&lab.read("l1.jsonl")).len();
    let mut switches = 0;
    let start = Instant::now();
    while !lab.read("a.log").contains("dropping a listener") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the stalled listener was never dropped after {switches} switches\n{}",
            lab.logs()
        );
        for to in ["t2", "t1"] {
            let r = lab.request(&format!(
                r#"{{"command":"failover","connection":"conn","to":"{to}"}}"#
            ));
            assert_eq!(r["ok"], true, "{r}");
            switches += 1;
        }
    }
    // The stalled connection was closed: reading it now ends (after what the socket held).
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let eof = stalled.read_to_end(&mut rest);
    assert!(
        eof.is_ok(),
        "the stalled listener is still connected: {eof:?}"
    );
    for l in ["l1.jsonl", "l2.jsonl"] {
        lab.wait_for(
            &format!("{l}: all {switches} switches"),
            Duration::from_secs(10),
            || {
                events(&lab.read(l))
                    .iter()
                    .filter(|e| e["event"] == "switch" && e["reason"] == "planned")
                    .count()
                    >= switches
            },
        );
    }
    assert!(events(&lab.read("l1.jsonl")).len() >= before + switches);
    eprintln!("stalled listener dropped after {switches} switches");

    // 4. At most 16 listeners (half the control socket's slots): with l1, l2 and 14 more, a 17th
    //    is refused in one reply line, and the other commands still get in.
    let subscribe = || {
        let mut s = UnixStream::connect(lab.path("a.sock")).unwrap();
        s.write_all(b"{\"command\":\"events\"}\n").unwrap();
        s
    };
    let _more: Vec<UnixStream> = (0..14).map(|_| subscribe()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut over = subscribe();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut refusal = String::new();
    let _ = over.read_to_string(&mut refusal);
    assert!(
        refusal.contains("too many event listeners"),
        "a 17th listener was not refused: {refusal:?}"
    );
    assert_eq!(lab.request(r#"{"command":"status"}"#)["ok"], true);
}
